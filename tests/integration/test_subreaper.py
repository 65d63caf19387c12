"""Issue 12 item 3 (the subreaper): ``enmei up`` is a child subreaper, so the orphans of its units are
reparented to it (not PID 1) and reaped; an adopted unit that is enmei's child keeps its exit code."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from enmei.clock import SystemClock
from enmei.config.load import load_text
from enmei.model import UnitEvent, UnitEventKind
from enmei.visor.process import ProcessBackend

from .conftest import PY, Procs, wait_until

pytestmark = pytest.mark.integration

# A unit whose grandchild is orphaned at once (its parent exits): the orphan writes its pid to argv[1],
# waits for argv[2] to exist, then exits with code 4; the main process stays.
ORPHANING = r'''
import os, sys, time
if os.fork() == 0:
    if os.fork() == 0:
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(sys.argv[1] + ".tmp", sys.argv[1])
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.05)
        os._exit(4)
    os._exit(0)
time.sleep(600)
'''


def _parent_and_state(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2:].split()
    return int(rest[1]), rest[0]


def test_enmei_up_is_the_subreaper_of_its_units_orphans_and_reaps_them(tmp_path: Path, procs: Procs) -> None:
    orphan_file, release = tmp_path / "orphan.pid", tmp_path / "release"
    cfg = tmp_path / "enmei.toml"
    cfg.write_text(f'[units.o]\ncommand = ["{PY}", "-c", {json.dumps(ORPHANING)}, "{orphan_file}", "{release}"]\n'
                   "stop_timeout_s = 2\n")
    with open(tmp_path / "up.log", "ab") as out:
        up = procs.popen([PY, "-m", "enmei", "up", "--plain", str(cfg)], stdout=out, stderr=out)
    assert wait_until(orphan_file.exists, 30), (tmp_path / "up.log").read_text()
    orphan = int(orphan_file.read_text())
    seen = _parent_and_state(orphan)
    assert seen is not None and seen[0] == up.pid, f"the orphan's parent is {seen}, not enmei ({up.pid})"
    release.touch()
    # It exits; enmei, its parent now, reaps it: no zombie is left.
    assert wait_until(lambda: _parent_and_state(orphan) is None, 30), \
        f"orphan {orphan} is still there: {_parent_and_state(orphan)}"
    assert up.poll() is None  # and enmei goes on
    up.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        up.wait(60)
    assert up.returncode == 0, (tmp_path / "up.log").read_text()


async def test_an_adopted_unit_that_is_enmeis_child_keeps_its_exit_code(tmp_path: Path) -> None:
    """Before, every adopted unit's exit code was None, even where the kernel gives it to enmei."""
    release = tmp_path / "release"
    script = f"import os, sys, time\nwhile not os.path.exists({str(release)!r}): time.sleep(0.05)\nsys.exit(5)\n"
    spec = load_text(f'[units.a]\ncommand = ["{PY}", "-c", {json.dumps(script)}]\n',
                     tmp_path / "enmei.toml").config.units["a"]
    first = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=lambda e: None)
    ident = await first.start("a", spec)
    # The first backend's Popen of it: kept so that it is not collected as "still running" (a warning);
    # this process stays the unit's parent, which is the point.
    held = first._units["a"].popen
    await first.close()  # the unit keeps running, as after a supervisor restart
    events: list[UnitEvent] = []
    second = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append)
    try:
        assert await second.adopt("a", spec, ident)
        release.touch()
        for _ in range(600):
            if any(e.kind is UnitEventKind.EXITED for e in events):
                break
            await asyncio.sleep(0.1)
        exited = [e for e in events if e.kind is UnitEventKind.EXITED]
        assert exited and exited[0].detail["code"] == 5 and exited[0].detail["signal"] is None
        assert held is not None and held.poll() == 0  # the adopter reaped it: the old handle finds no child
    finally:
        with contextlib.suppress(Exception):
            await second.stop("a", timeout_s=1)
        await second.close()
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(ident.pid, signal.SIGKILL)
            os.waitpid(ident.pid, 0)
