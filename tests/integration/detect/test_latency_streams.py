"""Three endpoints of a real service, one turning slower: per-probe latency streams end to end.

The reproduction of issue 13 ("three endpoints, one drifting to 3x slower"), made deterministic: the
root endpoint is slowed while the charts learn and then made fast again (a *speed-up*), ``/api/items``
is slowed and judged, and ``/api/search`` is slowed while ``/api/items``' hold-off still runs. The old
single, unit-wide, two-sided stream flagged the speed-up ("cusum_down"), named another endpoint as
suspect and then sat out its 300 s hold-off while ``/api/search`` was plainly out of control.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from enmei.box import verify
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.engine import Engine, journal_for
from enmei.model import UnitState
from enmei.monitor.http import http_get
from support.wait import auntil, scaled

PY = sys.executable

pytestmark = pytest.mark.integration

PROBES = {"root": "/", "items": "/api/items", "search": "/api/search"}
SLOW_MS = 60  # added to one endpoint: many times its loopback latency of a few ms (well beyond 3x)


def config(port: int) -> str:
    probes = "".join(f"""
[[units.web.probes]]
kind = "http"
name = "{name}"
url = "http://127.0.0.1:{port}{path}"
interval_s = 0.1
timeout_s = 2.0
fail_after = 5
""" for name, path in PROBES.items())
    return f"""
[units.web]
command = ["{PY}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
stop_timeout_s = 1.5
start_s = 0.3
{probes}
[[units.web.detectors]]
kind = "latency"
learning = 60
"""


async def test_one_endpoint_slower_is_named_and_a_faster_one_is_not_an_anomaly(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    loaded = load_text(config(port), tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    verdicts: list[dict[str, Any]] = []
    engine.subscribe(lambda _s, k, _u, b: verdicts.append(dict(b)) if k == "verdict" else None)
    task = asyncio.create_task(engine.run())

    async def fault(endpoint: str) -> None:
        status, _ = await http_get("127.0.0.1", port, f"/admin/fault?latency_ms={SLOW_MS}&endpoint={endpoint}",
                                   timeout_s=5)
        assert status == 200

    def anomalies(probe: str) -> list[dict[str, Any]]:
        return [v for v in verdicts if v["kind"] == "anomaly" and v["evidence"]["probe"] == probe]

    def learned() -> bool:
        det = next(d for d in engine.judges["web"] if d.kind == "latency")
        return len(det.limits()) == len(PROBES)

    async def answers() -> bool:
        end = time.monotonic() + scaled(30)
        while time.monotonic() < end:
            try:
                status, _ = await http_get("127.0.0.1", port, "/health", timeout_s=2)
                if status == 200:
                    return True
            except OSError:
                pass
            await asyncio.sleep(0.1)
        return False

    try:
        assert await auntil(lambda: "web" in engine.units and engine.units["web"].state is UnitState.RUNNING,
                            scaled(30), fail=False), "no start"
        assert await answers(), "the service never answered"
        await fault("/")  # the root is slow while every chart learns its baseline...
        assert await auntil(learned, scaled(60), fail=False), "the charts never finished learning"
        await fault("/api/items")  # ...then fast again (a speed-up), and /api/items turns slow
        assert await auntil(lambda: anomalies("items"), scaled(30), fail=False), "no verdict on /api/items"
        t_items = time.monotonic()
        await fault("/api/search")  # well inside the 300 s hold-off of /api/items' stream
        assert await auntil(lambda: anomalies("search"), scaled(30), fail=False), \
            "no verdict on /api/search while /api/items was held off"
        assert time.monotonic() - t_items < 300  # (what the old unit-wide hold-off would have blocked)
        for probe in ("items", "search"):
            ev = anomalies(probe)[0]["evidence"]
            assert ev["suspect"] == probe == ev["component"]
            assert ev["side"] == "up" and ev["value"] > ev["centre"]
        assert anomalies("root") == []  # faster is not an anomaly
        assert not any(v["evidence"].get("rule") == "cusum_down" for v in verdicts if v["kind"] == "anomaly")
    finally:
        engine.stop()
        await asyncio.wait_for(task, scaled(60))
        journal.close()
    assert verify(loaded.journal_path).ok
