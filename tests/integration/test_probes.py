"""Exec and protocol probes on real units under a real supervisor (issue 12 item 5)."""

from __future__ import annotations

import asyncio
import os
import signal
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

PING_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    with c:
        if c.recv(64).startswith(b"PING"):
            c.sendall(b"+PONG\\r\\n")
"""


class Run:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.records: list[tuple[float, str, str, dict[str, Any]]] = []
        engine.subscribe(lambda s, k, u, b: self.records.append((time.monotonic(), k, u, dict(b))))

    def pid(self, name: str) -> int:
        ident = self.engine.units[name].backend.identity(name)
        assert ident is not None
        return int(ident.pid)

    def first(self, record: str, after: float = 0.0, **match: Any) -> dict[str, Any] | None:
        for t, k, _, b in self.records:
            if k == record and t >= after and all(b.get(key) == v for key, v in match.items()):
                return b
        return None

    async def until(self, pred: Any, timeout: float = 30.0) -> bool:
        end = time.monotonic() + scaled(timeout)
        while time.monotonic() < end:
            if pred():
                return True
            await asyncio.sleep(0.02)
        return bool(pred())


async def _engine(tmp_path: Path, config: str) -> AsyncIterator[Run]:
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


@pytest.fixture
async def redisish(tmp_path: Path) -> AsyncIterator[Run]:
    (port,) = free_ports(1)
    (tmp_path / "ping_server.py").write_text(PING_SERVER)
    config = f"""
[units.kv]
command = ["{PY}", "ping_server.py", "{port}"]
listen = ["127.0.0.1:{port}"]
start_s = 0.3
stop_timeout_s = 1.0

[[units.kv.probes]]
kind = "tcp"
name = "ping"
port = {port}
send = "PING\\r\\n"
expect = "+PONG"
interval_s = 0.3
timeout_s = 1.0
fail_after = 3

[[units.kv.probes]]
kind = "exec"
name = "where"
command = ["/bin/cat", "/proc/self/cgroup"]
interval_s = 0.3
timeout_s = 5
"""
    async for run in _engine(tmp_path, config):
        yield run


async def test_a_hung_tcp_service_is_seen_by_its_protocol_check_and_restarted(redisish: Run) -> None:
    run = redisish
    assert await run.until(lambda: run.engine.units["kv"].state is UnitState.RUNNING
                           and run.first("unit.health", to="ok") is not None), "kv never became healthy"
    old = run.pid("kv")
    t0 = time.monotonic()
    # SIGSTOP: the kernel still completes TCP handshakes into the backlog; only the exchange sees the hang.
    os.kill(old, signal.SIGSTOP)
    try:
        assert await run.until(lambda: run.first("verdict", t0, kind="probe_failed") is not None)
        verdict = run.first("verdict", t0, kind="probe_failed")
        assert verdict is not None and verdict["evidence"]["probe"] == "ping"
        assert "+PONG" in verdict["evidence"]["last_error"]
        assert await run.until(lambda: run.engine.units["kv"].state is UnitState.RUNNING and run.pid("kv") != old)
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.kill(old, signal.SIGCONT)


async def test_an_exec_probe_runs_in_the_units_cgroup(redisish: Run) -> None:
    run = redisish
    reader_lines: list[str] = []
    engine = run.engine
    orig = engine._on_observation

    def spy(obs: Any) -> None:
        if obs.probe == "where" and obs.ok:
            reader_lines.extend(obs.lines)
        orig(obs)

    engine._on_observation = spy  # type: ignore[method-assign]
    assert await run.until(lambda: bool(reader_lines)), "the exec probe never passed"
    ident = engine.units["kv"].backend.identity("kv")
    assert ident is not None
    cgroup = ident.extra.get("cgroup")
    if cgroup is None:
        # No writable cgroup v2 on this host: the probe runs as a plain child, and says where it is.
        assert any(line.startswith("0::") for line in reader_lines), reader_lines
    else:
        # /proc/self/cgroup names the v2 path relative to the mount: the unit's cgroup ends it.
        rel = "/" + Path(cgroup).name
        assert any(line.startswith("0::") and line.rstrip().endswith(rel) for line in reader_lines), \
            (reader_lines, cgroup)
