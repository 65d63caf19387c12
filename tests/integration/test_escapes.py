"""Issue 11 D8: processes that escape a unit's process group (setsid, double fork) are tracked and stopped
with it — by its cgroup v2, or by its environment marks where there is none — and a restarted enmei
never adopts such an orphan as the unit."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from enmei.clock import SystemClock, wait_for
from enmei.config.load import load_text
from enmei.engine import Engine, journal_for
from enmei.model import UnitEvent, UnitEventKind, UnitState
from enmei.visor.process import ENV_SUPERVISOR, ENV_UNIT, ProcessBackend

from .conftest import PY, Procs, wait_until
from .test_supervise import Running

pytestmark = pytest.mark.integration

# A SIGTERM-deaf unit that starts a SIGTERM-deaf child in a new session and a double-forked daemon, and
# writes their pids to argv[1]; with argv[2] == "exit" its main process exits after that.
ESCAPER = r'''
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
    start_new_session=True)
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, str(os.getpid()).encode())
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)"])
    os._exit(0)
os.close(w)
daemon = int(os.read(r, 32))
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{child.pid} {daemon}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
if sys.argv[2] == "exit":
    sys.exit(3)
time.sleep(600)
'''


def _gone(pid: int, ctime: float) -> bool:
    try:
        p = psutil.Process(pid)
        return p.create_time() != ctime or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class Escapees:
    """The escaped pids a unit wrote, ended at teardown if still there (by pid and create time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pids: list[tuple[int, float]] = []

    def read(self) -> list[tuple[int, float]]:
        assert wait_until(self.path.exists, 20), "the unit never wrote its children's pids"
        for pid in map(int, self.path.read_text().split()):
            with contextlib.suppress(psutil.Error):
                self.pids.append((pid, psutil.Process(pid).create_time()))
        return self.pids

    def cleanup(self) -> None:
        for pid, ctime in self.pids:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == ctime:
                    p.kill()


@pytest.fixture
def escapees(tmp_path: Path) -> Iterator[Escapees]:
    e = Escapees(tmp_path / "escaped.pids")
    try:
        yield e
    finally:
        e.cleanup()


def _spec(tmp_path: Path, mode: str) -> object:
    cfg = f'[units.esc]\ncommand = ["{PY}", "-c", {json.dumps(ESCAPER)}, "{tmp_path / "escaped.pids"}", "{mode}"]\n' \
          'stop_timeout_s = 0.5\n'
    return load_text(cfg, tmp_path / "enmei.toml").config.units["esc"]


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "marks"])
async def test_a_sigterm_deaf_unit_with_escaped_children_is_stopped_with_none_left(
        tmp_path: Path, escapees: Escapees, cgroups: bool) -> None:
    events: list[UnitEvent] = []
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append, cgroups=cgroups)
    if cgroups:
        assert b.cgroups is not None, "this machine has a writable cgroup v2 (PLATFORM.md): it must be used"
    try:
        ident = await b.start("esc", _spec(tmp_path, "stay"))
        escaped = escapees.read()
        assert len(escaped) == 2
        assert all(os.getsid(pid) != ident.pid for pid, _ in escaped)  # both left the unit's session
        if cgroups:
            assert b.cgroups is not None
            procs = set((b.cgroups.path_for("esc") / "cgroup.procs").read_text().split())
            assert {str(ident.pid), *(str(p) for p, _ in escaped)} <= procs
        t0 = time.monotonic()
        await b.stop("esc", timeout_s=0.5)
        assert all(_gone(pid, ctime) for pid, ctime in escaped), "an escaped child outlived the stop"
        assert [e.kind for e in events] == [UnitEventKind.STARTED, UnitEventKind.STOPPED]
        assert events[-1].detail["signal"] == "SIGKILL"
        assert time.monotonic() - t0 < 10
        if cgroups:
            assert b.cgroups is not None and not b.cgroups.path_for("esc").exists()  # removed with the stop
    finally:
        with contextlib.suppress(Exception):
            await b.stop("esc", timeout_s=0.5)
        await b.close()
    if cgroups:
        assert b.cgroups is not None and not b.cgroups.root.exists()  # the whole subtree is gone


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "marks"])
async def test_a_double_forking_daemon_is_ended_when_its_main_process_exits(
        tmp_path: Path, escapees: Escapees, cgroups: bool) -> None:
    events: list[UnitEvent] = []
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append, cgroups=cgroups)
    try:
        await b.start("esc", _spec(tmp_path, "exit"))
        escaped = escapees.read()
        end = time.monotonic() + 20
        while not any(e.kind is UnitEventKind.EXITED for e in events) and time.monotonic() < end:
            await asyncio.sleep(0.02)
        exited = [e for e in events if e.kind is UnitEventKind.EXITED]
        assert exited and exited[0].detail["code"] == 3
        # the orphans are ended with the main process: wait for them (SIGKILL is delivered asynchronously)
        end = time.monotonic() + 10
        while not all(_gone(p, c) for p, c in escaped) and time.monotonic() < end:
            await asyncio.sleep(0.02)
        assert all(_gone(p, c) for p, c in escaped), "an orphan of the unit is still running"
    finally:
        await b.close()


async def test_recovery_never_adopts_an_orphan_that_carries_the_units_marks(tmp_path: Path, procs: Procs) -> None:
    """The reproduction of D8: an orphan of the unit (a session leader with its marks) is left; the next
    enmei must start the real command, not "recover" the orphan."""
    cfg = f'[units.web]\ncommand = ["{PY}", "-c", "import time; time.sleep(600)"]\nstop_timeout_s = 1\n'
    loaded = load_text(cfg, tmp_path / "enmei.toml")
    instance = ProcessBackend(clock=None, state_dir=loaded.state_dir, emit=None).instance
    # (the ENMEI_MAIN_PID it inherited names the main process it came from, not itself)
    orphan = procs.popen([PY, "-c", "import time; time.sleep(600)"],
                         env={**os.environ, ENV_UNIT: "web", ENV_SUPERVISOR: instance, "ENMEI_MAIN_PID": "1"})
    assert wait_until(lambda: psutil.Process(orphan.pid).environ().get(ENV_UNIT) == "web")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    r = Running(engine, asyncio.create_task(engine.run()))
    try:
        assert await r.until(lambda: "web" in engine.units and r.unit().state is UnitState.RUNNING, 20)
        assert r.pid() != orphan.pid
        assert r.first("unit.event", event="recovered") is None
        assert r.first("unit.event", event="started") is not None
        # the orphan carried this unit's marks: it was ended before the real start
        assert await r.until(lambda: orphan.poll() is not None, 10)
    finally:
        engine.stop()
        await wait_for(r.task, 30)
        journal.close()


def test_enmei_stops_escaped_children_and_the_next_up_starts_the_real_command(
        tmp_path: Path, procs: Procs, escapees: Escapees) -> None:
    cfg = tmp_path / "enmei.toml"
    cfg.write_text(f'[units.esc]\ncommand = ["{PY}", "-c", {json.dumps(ESCAPER)}, "{escapees.path}", "stay"]\n'
                   "stop_timeout_s = 0.5\n")
    state = tmp_path / ".enmei" / "units.json"

    def unit_pid() -> int | None:
        try:
            return int(json.loads(state.read_text())["units"]["esc"]["pid"])
        except (OSError, KeyError, ValueError):
            return None

    def up() -> subprocess.Popen[bytes]:
        with open(tmp_path / "up.log", "ab") as out:
            return procs.popen([PY, "-m", "enmei", "up", "--plain", str(cfg)], stdout=out, stderr=out)

    first = up()
    escaped = escapees.read()
    assert wait_until(lambda: unit_pid() is not None, 20)
    first_pid = unit_pid()
    assert first_pid is not None
    procs.adopt_pid(first_pid)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    assert all(_gone(p, c) for p, c in escaped), "escaped children outlived enmei's stop"
    escapees.path.unlink()
    second = up()
    assert wait_until(lambda: unit_pid() not in (None, first_pid), 20), (tmp_path / "up.log").read_text()
    pid = unit_pid()
    assert pid is not None
    procs.adopt_pid(pid)
    escapees.read()  # the real command ran again: it started its children anew
    assert b"recovered" not in (tmp_path / "up.log").read_bytes()
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    assert all(_gone(p, c) for p, c in escapees.pids)
    from enmei.visor.cgroup import CgroupTree

    tree = CgroupTree.discover(ProcessBackend(clock=None, state_dir=tmp_path / ".enmei", emit=None).instance)
    assert tree is not None and tree.remove()  # (discover made it again) nothing was left in it
