"""Issue 12 item 2: how a unit is stopped — its ``stop_signal``, its ``kill_mode``, an optional
``stop_command`` — with real processes, and the escalation still bounded (graceful, deadline, forced)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from enmei.clock import SystemClock
from enmei.config.load import load_text
from enmei.errors import ConfigError
from enmei.model import UnitEvent, UnitEventKind
from enmei.visor.process import ProcessBackend

from .conftest import PY, wait_until

pytestmark = pytest.mark.integration

# A unit like PostgreSQL: SIGTERM is its "smart" shutdown (it waits for clients: here, for ever); SIGINT
# is the fast one (writes argv[1] and exits 0); SIGUSR1 is what its stop command sends.
DAEMON = r'''
import os, signal, sys, time
out = sys.argv[1]
def done(how):
    def handler(signum, frame):
        with open(out, "w") as f:
            f.write(how)
        os._exit(0)
    return handler
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, done("fast"))
signal.signal(signal.SIGUSR1, done("command"))
open(out + ".ready", "w").close()
while True:
    time.sleep(1)
'''

# A main process and a child in its process group. The child blocks SIGTERM, so a SIGTERM sent to it stays
# pending (ShdPnd), which the kernel marks before the kill returns: when the main process gets its own
# SIGTERM it writes argv[1].main, and argv[1].child if the child's SIGTERM is pending — no race with the
# kill of what is left once the main process exits.
FAMILY = r'''
import os, signal, sys, time
out = sys.argv[1]
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    os.write(w, b"x")
    while True:
        time.sleep(1)
os.read(r, 1)
def term(signum, frame):
    with open(f"/proc/{pid}/status") as f:
        pending = int(next(l for l in f if l.startswith("ShdPnd:")).split()[1], 16)
    if pending & (1 << (signal.SIGTERM - 1)):
        open(out + ".child", "w").close()
    open(out + ".main", "w").close()
    os._exit(0)
signal.signal(signal.SIGTERM, term)
open(out + ".ready", "w").close()
while True:
    time.sleep(1)
'''


def _unit(tmp_path: Path, script: str, extra: str) -> Any:
    out = tmp_path / "out"
    cfg = f'[units.db]\ncommand = ["{PY}", "-c", {json.dumps(script)}, "{out}"]\n{extra}'
    return load_text(cfg, tmp_path / "enmei.toml").config.units["db"]


async def _started(b: ProcessBackend, tmp_path: Path, spec: Any) -> None:
    await b.start("db", spec)
    ready = tmp_path / "out.ready"
    assert await asyncio.to_thread(wait_until, ready.exists, 20), "the unit never got ready"


async def _run(tmp_path: Path, spec: Any, stop_timeout_s: float) -> tuple[list[UnitEvent], float]:
    events: list[UnitEvent] = []
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append)
    try:
        await _started(b, tmp_path, spec)
        t0 = time.monotonic()
        await b.stop("db", timeout_s=stop_timeout_s)
        took = time.monotonic() - t0
    finally:
        with contextlib.suppress(Exception):
            await b.stop("db", timeout_s=0.5)
        await b.close()
    return events, took


async def test_a_unit_stopped_by_its_stop_signal_shuts_down_cleanly(tmp_path: Path) -> None:
    """Before stop_signal, the SIGTERM it ignores ran out the timeout and SIGKILL lost its clean shutdown."""
    spec = _unit(tmp_path, DAEMON, 'stop_signal = "SIGINT"\n')
    events, _ = await _run(tmp_path, spec, stop_timeout_s=60.0)
    assert (tmp_path / "out").read_text() == "fast"
    stopped = events[-1]
    assert stopped.kind is UnitEventKind.STOPPED
    assert stopped.detail["code"] == 0 and stopped.detail["signal"] is None


async def test_a_stop_command_stops_the_unit_before_any_signal(tmp_path: Path) -> None:
    spec = _unit(tmp_path, DAEMON, 'stop_command = ["/bin/sh", "-c", "kill -USR1 $MAINPID"]\n')
    events, _ = await _run(tmp_path, spec, stop_timeout_s=60.0)
    assert (tmp_path / "out").read_text() == "command"
    assert events[-1].kind is UnitEventKind.STOPPED and events[-1].detail["code"] == 0


async def test_a_hung_stop_command_is_killed_and_the_signal_path_follows_bounded(tmp_path: Path) -> None:
    """The command overruns its timeout; the unit ignores SIGTERM; SIGKILL ends it: every phase bounded."""
    hung = tmp_path / "hung.pid"
    spec = _unit(tmp_path, DAEMON, f'stop_command = ["/bin/sh", "-c", "echo $$ > {hung}; exec sleep 600"]\n'
                                   "stop_command_timeout_s = 0.5\n")
    events, took = await _run(tmp_path, spec, stop_timeout_s=0.5)
    assert not (tmp_path / "out").exists()  # neither the command nor SIGTERM stopped it
    assert events[-1].kind is UnitEventKind.STOPPED and events[-1].detail["signal"] == "SIGKILL"
    assert took < 30
    pid = int(hung.read_text())
    with pytest.raises(ProcessLookupError):  # the overrunning command was killed, not left behind
        os.kill(pid, 0)


@pytest.mark.parametrize(("mode", "child_term"), [("all", True), ("group", True), ("main-then-group", False)])
async def test_kill_mode_says_who_gets_the_stop_signal(tmp_path: Path, mode: str, child_term: bool) -> None:
    spec = _unit(tmp_path, FAMILY, f'kill_mode = "{mode}"\n')
    events, _ = await _run(tmp_path, spec, stop_timeout_s=60.0)
    assert (tmp_path / "out.main").exists()
    assert (tmp_path / "out.child").exists() is child_term
    assert events[-1].kind is UnitEventKind.STOPPED and events[-1].detail["code"] == 0


@pytest.mark.parametrize(("line", "key"), [('stop_signal = "SIGFOO"', "stop_signal"),
                                           ('stop_signal = "KILL"', "stop_signal"),
                                           ('kill_mode = "process"', "kill_mode"),
                                           ("stop_command = []", "stop_command")])
def test_a_bad_stop_key_is_a_config_error_with_its_line(tmp_path: Path, line: str, key: str) -> None:
    cfg = f'[units.db]\ncommand = ["{PY}", "-c", "pass"]\n{line}\n'
    with pytest.raises(ConfigError) as err:
        load_text(cfg, tmp_path / "enmei.toml")
    assert err.value.line == 3 and err.value.key == f"units.db.{key}"


# A main process like a postmaster: its stop signal (SIGINT) ends its child first (SIGTERM, waited for),
# then it exits 0. argv[1].ready holds its pid.
SHUTS_DOWN_CHILD = r'''
import os, signal, sys, time
out = sys.argv[1]
pid = os.fork()
if pid == 0:
    while True:
        time.sleep(1)
def fast(signum, frame):
    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)
    open(out + ".main", "w").close()
    os._exit(0)
signal.signal(signal.SIGINT, fast)
with open(out + ".ready.tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(out + ".ready.tmp", out + ".ready")
while True:
    time.sleep(1)
'''


@pytest.mark.parametrize("mode", ["all", "group", "main-then-group"])
async def test_a_hung_unit_is_continued_after_its_stop_signal(tmp_path: Path, mode: str) -> None:
    """A unit whose every process is SIGSTOPped (a hang) acts on its stop signal at once: SIGCONT follows
    the signal (as systemd sends it). Before, the signal stayed pending until stop_timeout_s ran out and
    SIGKILL ended the unit without its clean shutdown (a PostgreSQL hang took 10 s more to recover)."""
    spec = _unit(tmp_path, SHUTS_DOWN_CHILD, f'stop_signal = "SIGINT"\nkill_mode = "{mode}"\n')
    events: list[UnitEvent] = []
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append)
    try:
        await _started(b, tmp_path, spec)
        pid = int((tmp_path / "out.ready").read_text())
        os.killpg(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        await b.stop("db", timeout_s=30.0)
        took = time.monotonic() - t0
    finally:
        with contextlib.suppress(Exception):
            await b.stop("db", timeout_s=0.5)
        await b.close()
    assert (tmp_path / "out.main").exists(), "the main process never ran its shutdown"
    assert events[-1].kind is UnitEventKind.STOPPED and events[-1].detail["code"] == 0, events[-1].detail
    assert took < 30.0
