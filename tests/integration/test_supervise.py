"""Real units under a real supervisor: crashes, hangs, stops, adoption, ports, logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from enmei.box import Reader, verify
from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.engine import Engine, journal_for
from enmei.model import Health, UnitState
from enmei.monitor.http import http_get
from support.wait import auntil, scaled

from .conftest import PY, Procs, enmei, wait_until

pytestmark = pytest.mark.integration


def web_config(port: int, extra: str = "") -> str:
    return f"""
[units.web]
command = ["{PY}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
stop_timeout_s = 1.5
start_s = 0.3
{extra}
[[units.web.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval_s = 0.2
timeout_s = 1.0   # generous: a loaded machine must not fail a healthy service
fail_after = 3

[[units.web.probes]]
kind = "process"
interval_s = 0.5
"""


class Running:
    def __init__(self, engine: Engine, task: asyncio.Task[None]) -> None:
        self.engine = engine
        self.task = task
        self.records: list[tuple[float, int, str, str, dict[str, Any]]] = []
        engine.subscribe(lambda s, k, u, b: self.records.append((time.monotonic(), s, k, u, dict(b))))

    def unit(self, name: str = "web") -> Any:
        return self.engine.units[name]

    def pid(self, name: str = "web") -> int:
        ident = self.unit(name).backend.identity(name)
        assert ident is not None
        return int(ident.pid)

    async def until(self, pred: Any, timeout: float = 10.0) -> bool:
        """Wait for ``pred`` (``support.wait.auntil``); event-driven, so the bound is generous (>= 30 s,
        scaled to the machine)."""
        return bool(await auntil(pred, max(timeout, 30.0), fail=False))

    def first(self, record_kind: str, after: float = 0.0, **match: Any) -> tuple[float, dict[str, Any]] | None:
        for t, _, k, _, b in self.records:
            if k == record_kind and t >= after and all(b.get(key) == v for key, v in match.items()):
                return t, b
        return None


@pytest.fixture
async def running(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    (port,) = free_ports(1)
    extra = getattr(request, "param", "")
    loaded = load_text(web_config(port, extra), tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    r = Running(engine, asyncio.create_task(engine.run()))
    r.port = port  # type: ignore[attr-defined]
    try:
        assert await r.until(lambda: "web" in engine.units and r.unit().state is UnitState.RUNNING), "no start"
        yield r
    finally:
        engine.stop()
        await wait_for(r.task, scaled(60))
        journal.close()
    assert verify(loaded.journal_path).ok


@pytest.mark.parametrize("running", ["[units.web.restart]\nreset_after_s = 0.5\n"], indirect=True)
async def test_kill9_is_seen_and_restarted_within_one_second(running: Running) -> None:
    unit = running.unit()
    # A unit that ran reset_after_s proved itself: its crash is restarted at once (a younger one's is a
    # retry, after backoff_first_s).
    assert await running.until(lambda: unit.budget.healthy(unit.clock.monotonic() - unit.state_since), 5)
    old = running.pid()
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    assert await running.until(lambda: running.first("unit.event", t0, event="exited") is not None, 1.0)
    assert await running.until(lambda: running.first("unit.event", t0, event="started") is not None, 1.0)
    seen, exited = running.first("unit.event", t0, event="exited")  # type: ignore[misc]
    started, _ = running.first("unit.event", t0, event="started")  # type: ignore[misc]
    assert exited["signal"] == "SIGKILL" and exited["pid"] == old
    assert seen - t0 < scaled(1.0) and started - t0 < scaled(1.0)  # the promise: well within 1 s
    assert running.pid() != old
    assert await running.until(lambda: running.unit().state is UnitState.RUNNING, 3)
    decision = running.first("decision", t0)
    assert decision and decision[1]["action"] == "restart" and decision[1]["rule"] == "exit-restart"


async def test_a_hung_service_that_ignores_sigterm_is_probed_failing_and_killed(running: Running) -> None:
    port = running.port  # type: ignore[attr-defined]
    # RUNNING means it held for start_s (0.3 s); on a loaded machine the service may not listen yet.
    assert await running.until(lambda: running.unit().health is Health.OK, 10), "never answered its probe"
    old = running.pid()
    t0 = time.monotonic()
    await http_get("127.0.0.1", port, "/admin/hang?ignore_term=1", timeout_s=2)
    assert await running.until(lambda: running.first("verdict", t0, kind="probe_failed") is not None, 5)
    assert await running.until(lambda: running.first("unit.event", t0, event="stopped") is not None, 6)
    _, stopped = running.first("unit.event", t0, event="stopped")  # type: ignore[misc]
    assert stopped["signal"] == "SIGKILL" and stopped["pid"] == old
    assert await running.until(lambda: running.unit().state is UnitState.RUNNING and running.pid() != old, 5)
    status, _ = await http_get("127.0.0.1", port, "/health", timeout_s=2)
    assert status == 200


async def test_stats_and_samples_are_recorded(running: Running) -> None:
    reader = Reader(running.engine.journal.path)
    try:
        assert await running.until(lambda: bool(reader.samples("web", "proc.rss_bytes")
                                                and reader.samples("web", "http.latency_s")), 3)
        assert reader.samples("web", "proc.rss_bytes")[-1][1] > 1e6
    finally:
        reader.close()


@pytest.mark.parametrize("running", ["[units.web.log]\nmax_bytes = 1100\nkeep = 2\n"], indirect=True)
async def test_logs_are_captured_and_rotated(running: Running) -> None:
    path = running.unit().backend.log_path("web", "stderr")
    assert path is not None
    assert await running.until(lambda: path.with_name(path.name + ".1").exists(), 20)
    assert b"GET /health" in path.with_name(path.name + ".1").read_bytes()
    assert path.stat().st_size < 8192


async def test_port_in_use_is_a_clear_error_and_no_tight_loop(tmp_path: Path, procs: Procs) -> None:
    (port,) = free_ports(1)
    squatter = procs.popen([PY, "-m", "enmei.demo.service", "--port", str(port)])
    assert wait_until(lambda: any(c.laddr.port == port for c in psutil.Process(squatter.pid).net_connections()))
    loaded = load_text(web_config(port, "[units.web.restart]\nbudget = 2\nbackoff_first_s = 0.2\n"),
                       tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    r = Running(engine, asyncio.create_task(engine.run()))
    try:
        # Wait for the escalation itself (a loaded machine gets there later), then count what came before.
        assert await r.until(lambda: "web" in engine.units and r.unit().state is UnitState.ESCALATED)
        failed = [b for _, _, k, u, b in r.records if k == "unit.event" and b.get("event") == "start_failed"]
        assert failed
        assert f"port 127.0.0.1:{port} is already in use by pid {squatter.pid}" in failed[0]["cause"]
        assert len(failed) <= 4  # 1 start + 2 restarts, then escalation waits 60 s
        assert r.unit().state is UnitState.ESCALATED
        assert any(k == "alert" for _, _, k, _, _ in r.records)
    finally:
        engine.stop()
        await wait_for(r.task, scaled(60))
        journal.close()


def _up(procs: Procs, cfg: Path) -> Any:
    with open(cfg.parent / "up.log", "ab") as out, open(cfg.parent / "up.err", "ab") as err:
        return procs.popen([PY, "-m", "enmei", "up", "--plain", str(cfg)], stdout=out, stderr=err)


def _unit_pid(state: Path) -> int | None:
    try:
        return int(json.loads(state.read_text())["units"]["web"]["pid"])
    except (OSError, KeyError, ValueError):
        return None


def test_sigterm_to_enmei_stops_units_gracefully_and_kill9_leaves_them_for_adoption(
        tmp_path: Path, procs: Procs) -> None:
    (port,) = free_ports(1)
    cfg = tmp_path / "enmei.toml"
    cfg.write_text(web_config(port))
    state = tmp_path / ".enmei" / "units.json"

    up = _up(procs, cfg)
    assert wait_until(lambda: _unit_pid(state) is not None, 20), (tmp_path / "up.err").read_text()
    unit_pid = _unit_pid(state)
    assert unit_pid is not None
    procs.adopt_pid(unit_pid)
    # kill -9 the supervisor: the unit keeps running...
    os.kill(up.pid, signal.SIGKILL)
    up.wait()
    assert psutil.pid_exists(unit_pid)
    # ...and the next supervisor adopts it instead of starting a second one.
    up2 = _up(procs, cfg)
    assert wait_until(lambda: b"adopted pid" in (tmp_path / "up.log").read_bytes(), 20)
    assert _unit_pid(state) == unit_pid
    # SIGTERM: the unit is stopped gracefully, the journal closed consistent, exit code 0.
    up2.send_signal(signal.SIGTERM)
    assert up2.wait(timeout=scaled(60)) == 0
    assert wait_until(lambda: not psutil.pid_exists(unit_pid), 5)
    r = enmei("box", "verify", "-j", str(tmp_path / ".enmei" / "journal.sqlite"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"]
    with Reader(tmp_path / ".enmei" / "journal.sqlite") as reader:
        kinds = [(x.kind, x.data().get("event")) for x in reader.tail(5)]
    assert ("supervisor", "stopped") in kinds
    assert json.loads(state.read_text())["units"] == {}


async def test_instances_started_just_before_a_crash_are_recovered_not_duplicated(
        tmp_path: Path, procs: Procs) -> None:
    """enmei killed between starting a unit and saving its identity: the next one finds the unit by its
    environment marks, adopts the oldest instance and ends a duplicate."""
    from enmei.visor.process import ENV_SUPERVISOR, ENV_UNIT, ProcessBackend, launcher_argv

    (port,) = free_ports(1)
    loaded = load_text(web_config(port), tmp_path / "enmei.toml")
    instance = ProcessBackend(clock=None, state_dir=loaded.state_dir, emit=None).instance
    env = {**os.environ, ENV_UNIT: "web", ENV_SUPERVISOR: instance}
    first = procs.popen(launcher_argv([PY, "-m", "enmei.demo.service", "--port", str(port)]), env=env)
    await asyncio.sleep(0.3)
    second = procs.popen(launcher_argv([PY, "-c", "import time; time.sleep(60)"]), env=env)  # a duplicate start
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    r = Running(engine, asyncio.create_task(engine.run()))
    try:
        assert await r.until(lambda: "web" in engine.units and r.unit().state is UnitState.RUNNING)
        assert r.pid() == first.pid
        recovered = r.first("unit.event", event="recovered")
        assert recovered and recovered[1]["duplicates_ended"] == [second.pid]
        assert await r.until(lambda: second.poll() is not None, 5)
        assert not [b for _, _, k, _, b in r.records if k == "unit.event" and b.get("event") == "started"]
    finally:
        engine.stop()
        await wait_for(r.task, scaled(60))
        journal.close()
