"""The handover steps on the process backend itself, with real processes — here without cgroups (the
fallback where a unit's stragglers are found by their environment marks): the end of one instance must
not sweep away the other, which carries the same unit marks (``ENMEI_SLOT`` tells them apart)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from enmei.bench.deploy import request
from enmei.clock import SystemClock, wait_for
from enmei.config.load import load_text
from enmei.config.model import ProcessUnit
from enmei.demo.ports import free_ports
from enmei.model import UnitEvent, UnitEventKind
from enmei.visor.process import ProcessBackend

from .conftest import PY

pytestmark = pytest.mark.integration


def _spec(tmp: Path, port: int, version: str, *more: str) -> ProcessUnit:
    text = f"""
[units.web]
command = {json.dumps([PY, "-m", "enmei.demo.handover_service", "--version", version, *more])}
stop_timeout_s = 10
[[units.web.sockets]]
address = "127.0.0.1:{port}"
"""
    spec = load_text(text, tmp / "enmei.toml").config.units["web"]
    assert isinstance(spec, ProcessUnit)
    return spec


async def _answer(port: int) -> tuple[str | None, int | None]:
    for _ in range(20):  # each try waits in the socket's backlog up to 5 s: bounded, event-driven
        s = await asyncio.to_thread(request, port, 5.0)
        if s.ok:
            return s.version, s.pid
        await asyncio.sleep(0.1)
    return None, None


async def test_a_handover_without_cgroups_keeps_the_new_instance_when_the_old_ends(tmp_path: Path) -> None:
    events: list[UnitEvent] = []
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append, cgroups=False)
    (port,) = free_ports(1)
    pids: list[int] = []
    try:
        first = await b.start("web", _spec(tmp_path, port, "1"))
        pids.append(first.pid)
        assert await _answer(port) == ("1", first.pid)
        # A broken new version: its end (and the marks sweep that follows it) leaves the old one serving.
        broken = await b.handover_begin("web", _spec(tmp_path, port, "9", "--fail-start"))
        pids.append(broken.new.identity.pid)
        await wait_for(asyncio.shield(broken.new.done), 30)
        await b.handover_abandon(broken, 10.0)
        assert b.alive("web") and await _answer(port) == ("1", first.pid)
        # A good one: after the swap the old one drains and ends; its sweep spares the new one.
        good = await b.handover_begin("web", _spec(tmp_path, port, "2"))
        new_pid = good.new.identity.pid
        pids.append(new_pid)
        assert good.new.identity.extra["slot"] == "b"
        assert await asyncio.to_thread(lambda: _env(new_pid).get("ENMEI_SLOT")) == "b"
        b.handover_commit(good)
        ended = await b.handover_retire(good, 10.0)
        assert ended["code"] == 0  # the old one drained and exited by itself
        assert b.alive("web") and b.identity("web").pid == new_pid  # type: ignore[union-attr]
        assert await _answer(port) == ("2", new_pid)
        kinds = [(e.kind, e.detail.get("pid")) for e in events]
        assert (UnitEventKind.STARTED, new_pid) in kinds
        assert not any(k in (UnitEventKind.EXITED, UnitEventKind.STOPPED) for k, _ in kinds)  # none was the unit's end
        # The held socket outlives every instance: a plain stop and start serve on it again.
        await b.stop("web", timeout_s=10)
        again = await b.start("web", _spec(tmp_path, port, "3"))
        pids.append(again.pid)
        assert await _answer(port) == ("3", again.pid)
        await b.stop("web", timeout_s=10)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        await b.close()


def _env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)
