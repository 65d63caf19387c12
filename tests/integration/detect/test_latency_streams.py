"""Three endpoints of a real service, one turning slower: per-probe latency streams end to end.

The reproduction of issue 13 ("three endpoints, one drifting to 3x slower"), made deterministic: the
root endpoint is slowed while the streams learn and then made fast again (a *speed-up*), ``/api/items``
is made 3x slower and judged, and ``/api/search`` 3x slower while ``/api/items``' hold-off still runs.
Since round 6 the default ``latency`` detector is the benchmarked scorer, one-sided (the streams
below); only verdicts that came after a fault was set count for that fault.
Latency verdicts are only recorded (a test policy on top of the shipped library answers them with
``none``): on a loaded machine a real load spike gives a real second warning, and the shipped policy's
restart would reset the faults mid-test (a connection reset at the next fault request). The old
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
from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.engine import Engine, journal_for
from enmei.model import UnitState
from enmei.monitor.http import http_get
from enmei.policy.manager import open_policy
from support.wait import answers, auntil, scaled

PY = sys.executable

pytestmark = pytest.mark.integration

PROBES = {"root": "/", "items": "/api/items", "search": "/api/search"}
ROOT_SLOW_MS = 10.0  # the root while the charts learn (then it gets faster)


WATCH_ONLY = """
load("@enmei", "none")
load("@enmei/default", "on_exit", "on_outcome", "on_tick", default_on_verdict = "on_verdict")

def on_verdict(v, ctx):
    if v.kind == "anomaly":
        return [none(v.unit, "test: latency verdicts are only recorded")]
    return default_on_verdict(v, ctx)
"""


def config(port: int) -> str:
    probes = "".join(f"""
[[units.web.probes]]
kind = "http"
name = "{name}"
url = "http://127.0.0.1:{port}{path}"
interval_s = 0.1
timeout_s = 5.0
fail_after = 30
""" for name, path in PROBES.items())
    return f"""
[supervisor]
policy = "watch.star"

[units.web]
command = ["{PY}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
stop_timeout_s = 1.5
start_s = 0.3
{probes}"""  # no [[units.web.detectors]]: the unit's default latency detector (learning 60 samples)


async def test_one_endpoint_slower_is_named_and_a_faster_one_is_not_an_anomaly(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    (tmp_path / "watch.star").write_text(WATCH_ONLY)
    loaded = load_text(config(port), tmp_path / "enmei.toml")
    assert loaded.policy_path is not None
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal, policy=open_policy(loaded.policy_path))
    verdicts: list[dict[str, Any]] = []
    engine.subscribe(lambda _s, k, _u, b: verdicts.append(dict(b)) if k == "verdict" else None)
    decisions: list[dict[str, Any]] = []
    engine.subscribe(lambda _s, k, _u, b: decisions.append(dict(b)) if k == "decision" else None)
    task = asyncio.create_task(engine.run())

    async def fault(endpoint: str, ms: float) -> None:
        status, _ = await http_get("127.0.0.1", port, f"/admin/fault?latency_ms={ms:.2f}&endpoint={endpoint}",
                                   timeout_s=5)
        assert status == 200

    def slow_ms(probe: str) -> float:
        # Three times the endpoint's learned median (at least +5 ms): a warning, well below the 10x of a
        # critical verdict (on which the shipped policy restarts at once, resetting the faults).
        det = next(d for d in engine.judges["web"] if d.kind == "latency")
        centre_ms = det.limits()[f"{probe}.latency_s"].centre * 1000
        return max(2 * centre_ms, 5.0)

    def anomalies(probe: str, since: int = 0) -> list[dict[str, Any]]:
        return [v for v in verdicts[since:] if v["kind"] == "anomaly" and v["evidence"]["probe"] == probe]

    def learned() -> bool:
        det = next(d for d in engine.judges["web"] if d.kind == "latency")
        return len(det.limits()) == len(PROBES)

    try:
        assert await auntil(lambda: "web" in engine.units and engine.units["web"].state is UnitState.RUNNING,
                            scaled(30), fail=False), "no start"
        assert await answers(port), "the service never answered"
        await fault("/", ROOT_SLOW_MS)  # the root is slow while every chart learns its baseline...
        assert await auntil(learned, scaled(60), fail=False), "the streams never finished learning"
        n_items = len(verdicts)
        await fault("/api/items", slow_ms("items"))  # ...then fast again (a speed-up), /api/items 3x slower
        assert await auntil(lambda: anomalies("items", n_items), scaled(30), fail=False), "no verdict on /api/items"
        t_items = time.monotonic()
        n_search = len(verdicts)
        await fault("/api/search", slow_ms("search"))  # well inside the 300 s hold-off of /api/items' stream
        assert await auntil(lambda: anomalies("search", n_search), scaled(30), fail=False), \
            "no verdict on /api/search while /api/items was held off"
        assert time.monotonic() - t_items < 300  # (what the old unit-wide hold-off would have blocked)
        for probe, since in (("items", n_items), ("search", n_search)):
            ev = anomalies(probe, since)[0]["evidence"]
            assert ev["suspect"] == probe == ev["component"]
            assert ev["side"] == "up" and ev["value"] > ev["centre"]
        # Faster is not an anomaly: the root's speed-up gave no verdict (one from a load spike that made it
        # *slower* would be right, and is allowed), and no verdict anywhere was about a speed-up.
        assert all(v["evidence"]["value"] > v["evidence"]["centre"] for v in anomalies("root"))
        assert not any(v["evidence"].get("rule") == "cusum_down" or v["evidence"]["value"] < v["evidence"]["centre"]
                       for v in verdicts if v["kind"] == "anomaly")
        # the test policy answered them (not the fallback: a policy error would show here)
        assert any(d["action"] == "none" and "only recorded" in d["reason"] for d in decisions), decisions
    finally:
        engine.stop()
        await wait_for(task, scaled(60))
        journal.close()
    assert verify(loaded.journal_path).ok
