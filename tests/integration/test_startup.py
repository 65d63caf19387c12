"""Start-up vs liveness vs readiness on real units (issue 12 item 1): a start-up probe, a log line and
sd_notify READY=1 gate liveness; a start-up that never completes is stopped and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from enmei.box import verify
from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.engine import Engine, journal_for
from enmei.model import UnitState
from support.wait import scaled

from .conftest import PY

pytestmark = pytest.mark.integration

# A PING server that takes DELAY seconds to start listening (crash recovery), then answers +PONG.
SLOW_SERVER = """
import socket, sys, time
print("recovering", flush=True)
time.sleep(float(sys.argv[2]))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
print("ready to accept connections", file=sys.stderr, flush=True)
while True:
    c, _ = s.accept()
    with c:
        if c.recv(64).startswith(b"PING"):
            c.sendall(b"+PONG\\r\\n")
"""

# Sends READY=1 to $NOTIFY_SOCKET after DELAY seconds (or never, with a negative delay), then idles.
NOTIFIER = """
import os, socket, sys, time
delay = float(sys.argv[1])
if delay < 0:
    time.sleep(3600)
time.sleep(delay)
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"STATUS=recovered\\nREADY=1", addr)
time.sleep(3600)
"""


class Run:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.records: list[tuple[float, str, str, dict[str, Any]]] = []
        engine.subscribe(lambda s, k, u, b: self.records.append((time.monotonic(), k, u, dict(b))))

    def unit(self, name: str = "db") -> Any:
        return self.engine.units[name]

    def state(self, name: str = "db") -> UnitState | None:
        unit = self.engine.units.get(name)
        return None if unit is None else unit.state

    def pid(self, name: str = "db") -> int | None:
        if name not in self.engine.units:
            return None
        ident = self.unit(name).backend.identity(name)
        return None if ident is None else int(ident.pid)

    def all(self, record: str, **match: Any) -> list[dict[str, Any]]:
        return [b for _, k, _, b in self.records if k == record and all(b.get(x) == v for x, v in match.items())]

    async def until(self, pred: Any, timeout: float = 30.0) -> bool:
        end = time.monotonic() + scaled(timeout)
        while time.monotonic() < end:
            if pred():
                return True
            await asyncio.sleep(0.02)
        return bool(pred())


@contextlib.asynccontextmanager
async def engine_for(tmp_path: Path, config: str) -> AsyncIterator[Run]:
    (tmp_path / "slow_server.py").write_text(SLOW_SERVER)
    (tmp_path / "notifier.py").write_text(NOTIFIER)
    loaded = load_text(config, tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    run = Run(engine)
    task = asyncio.create_task(engine.run())
    try:
        yield run
    finally:
        engine.stop()
        await wait_for(task, scaled(60))
        journal.close()
    assert verify(loaded.journal_path).ok


def slow_db(port: int, delay_s: float, startup: str) -> str:
    return f"""
[units.db]
command = ["{PY}", "slow_server.py", "{port}", "{delay_s}"]
start_s = 0.2
stop_timeout_s = 1.0
{startup}

[[units.db.probes]]
kind = "tcp"
name = "ping"
port = {port}
send = "PING\\r\\n"
expect = "+PONG"
interval_s = 0.2
timeout_s = 1.0
fail_after = 2
"""


@pytest.mark.parametrize("startup", ['startup_probe = "ping"\nstartup_timeout_s = 60',
                                     'startup_log = "ready to accept"\nstartup_timeout_s = 60'],
                         ids=["startup_probe", "startup_log"])
async def test_liveness_failures_during_a_slow_start_do_not_restart(tmp_path: Path, startup: str) -> None:
    # The PostgreSQL case: a liveness probe failing while the service recovers (3 s here, 15 probe
    # failures at 0.2 s, fail_after 2) must not restart it in the middle of its recovery.
    (port,) = free_ports(1)
    failing: list[float] = []
    async with engine_for(tmp_path, slow_db(port, 3.0, startup)) as run:
        orig = run.engine._on_observation

        def spy(obs: Any) -> None:
            if obs.probe == "ping" and not obs.ok and run.state() is UnitState.STARTING:
                failing.append(obs.mono)
            orig(obs)

        run.engine._on_observation = spy  # type: ignore[method-assign]
        assert await run.until(lambda: run.state() is UnitState.RUNNING, 60), "never completed its start-up"
        assert len(failing) >= 2, "the liveness probe never failed during the start-up: the test proves nothing"
        assert run.all("verdict", kind="probe_failed") == []
        assert [b for b in run.all("decision") if b["action"] != "start"] == []  # no restart of any kind
        assert len(run.all("unit.event", event="started")) == 1
        (ready,) = run.all("unit.event", event="ready")
        assert ready["after_s"] >= 2.5
        assert ("probe ping passed" if "probe" in startup else "ready to accept connections") in ready["by"]
        # Once started, liveness judges again: a hang now is a verdict (within the usual fail_after).
        assert await run.until(lambda: run.unit().health.value == "ok")


async def test_ready_1_on_notify_socket_completes_the_start_up_only_from_the_unit(tmp_path: Path) -> None:
    config = f"""
[units.db]
command = ["{PY}", "notifier.py", "1.5"]
start_s = 0.1
stop_timeout_s = 1.0
startup_notify = true
startup_timeout_s = 60
"""
    async with engine_for(tmp_path, config) as run:
        assert await run.until(lambda: run.pid() is not None and run.state() is UnitState.STARTING)
        addr = run.unit()._notify.address
        target = ("\0" + addr[1:]) if addr.startswith("@") else addr
        # The test process is not the unit: its READY=1 is refused, and the unit stays STARTING.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"READY=1", target)
        assert await run.until(lambda: bool(run.all("unit.event", event="notify_refused")))
        (refused,) = run.all("unit.event", event="notify_refused")
        assert refused["pid"] == os.getpid()
        assert run.unit().state is UnitState.STARTING
        assert await run.until(lambda: run.state() is UnitState.RUNNING)
        (ready,) = run.all("unit.event", event="ready")
        assert ready["by"] == f"READY=1 from pid {run.pid()}" and ready["after_s"] >= 1.0


async def test_a_start_up_that_never_completes_is_stopped_and_restarted_with_backoff(tmp_path: Path) -> None:
    config = f"""
[units.db]
command = ["{PY}", "notifier.py", "-1"]
start_s = 0.1
stop_timeout_s = 1.0
startup_notify = true
startup_timeout_s = 1.5
[units.db.restart]
backoff_first_s = 0.2
"""
    async with engine_for(tmp_path, config) as run:
        assert await run.until(lambda: len(run.all("unit.event", event="startup_timeout")) >= 2, 60)
        first = run.all("unit.event", event="startup_timeout")[0]
        assert "startup_timeout_s = 1.5s" in first["cause"] and "READY=1" in first["cause"]
        assert len(run.all("unit.event", event="started")) >= 2
        restarts = [b for b in run.all("decision") if b["action"] == "restart"]
        assert restarts and restarts[0]["rule"] == "retry-after-failure"
        assert run.all("unit.state", to="running") == []  # never counted as started
