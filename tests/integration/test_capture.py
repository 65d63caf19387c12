"""Issue 11 D2: a unit flooding its stdout under a real supervisor — the disk stays bounded, the flood is
journaled once, another unit's kill -9 is still restarted at once; and capture survives a kill -9 of enmei."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.engine import Engine, journal_for
from enmei.model import UnitState

from .conftest import PY, Procs, wait_until
from .test_supervise import Running

pytestmark = pytest.mark.integration

FLOOD = ("import os, time\n"
         "chunk = (b'x' * 1023 + b'\\n') * 64\n"  # 64 KiB
         "end = time.monotonic() + 4\n"
         "while time.monotonic() < end:\n"
         "    os.write(1, chunk)\n"
         "print('flood over', flush=True)\n"
         "time.sleep(600)\n")
MAX_BYTES, KEEP = 1 << 20, 2


def _config() -> str:
    return f"""
[units.flood]
command = ["{PY}", "-c", {json.dumps(FLOOD)}]
stop_timeout_s = 1
[units.flood.log]
max_bytes = "1MiB"
keep = {KEEP}

[units.other]
command = ["{PY}", "-c", "import time; time.sleep(600)"]
stop_timeout_s = 1
[units.other.restart]
reset_after_s = 0.5  # killed after 1 s running: a unit that proved itself, restarted at once
"""


def _disk(logs: Path) -> int:
    total = 0
    for p in list(logs.iterdir()) if logs.exists() else []:
        try:
            total += p.stat().st_blocks * 512
        except FileNotFoundError:
            continue  # renamed away between listing and stat
    return total


async def test_a_stdout_flood_stays_within_the_log_bound_and_restarts_stay_fast(tmp_path: Path) -> None:
    loaded = load_text(_config(), tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    r = Running(engine, asyncio.create_task(engine.run()))
    logs = loaded.state_dir / "logs"
    try:
        assert await r.until(lambda: all(n in engine.units and r.unit(n).state is UnitState.RUNNING
                                         for n in ("flood", "other")), 20)
        peak = 0
        t_end = time.monotonic() + 3.5
        restarts: list[float] = []
        while time.monotonic() < t_end:
            peak = max(peak, _disk(logs))
            assert peak <= 3 * MAX_BYTES * (KEEP + 1), f"{peak} bytes of logs on disk"
            if not restarts and time.monotonic() > t_end - 2.5:
                old = r.pid("other")
                t0 = time.monotonic()
                os.kill(old, signal.SIGKILL)
                assert await r.until(lambda t0=t0: r.first("unit.event", t0, event="started") is not None
                                     and r.unit("other").state is UnitState.RUNNING, 10)
                restarts.append(r.first("unit.event", t0, event="started")[0] - t0)  # type: ignore[index]
            await asyncio.sleep(0.02)
        assert restarts and restarts[0] < 1.0, restarts
        begin = r.first("unit.event", 0, event="log_flood", phase="begin")
        assert begin and begin[1]["stream"] == "stdout"
        # the episode ends 5 s after the flood's last drop, with what was dropped
        assert await r.until(lambda: r.first("unit.event", 0, event="log_flood", phase="end") is not None, 20)
        _, end = r.first("unit.event", 0, event="log_flood", phase="end")  # type: ignore[misc]
        assert end["dropped_bytes"] > 10 * MAX_BYTES
        floods = [b for _, _, k, _, b in r.records if k == "unit.event" and b.get("event") == "log_flood"]
        assert len(floods) == 2  # one episode: its beginning and its end, not a record per chunk
        assert await r.until(lambda: b"flood over" in (logs / "flood.stdout.log").read_bytes(), 10)
        assert _disk(logs) <= MAX_BYTES * (KEEP + 1) + 2 * 65536
        print(f"peak log disk use {peak} bytes (bound {3 * MAX_BYTES * (KEEP + 1)}), "
              f"kill -9 restart of another unit {restarts[0]:.3f} s, dropped {end['dropped_bytes']} bytes")
    finally:
        engine.stop()
        await wait_for(r.task, 30)
        journal.close()


TALKER = ("import itertools, sys, time\n"
          "for i in itertools.count():\n"
          "    print('line', i, flush=True)\n"
          "    time.sleep(0.01)\n")


def test_capture_survives_a_kill9_of_enmei_and_resumes_after_adoption(tmp_path: Path, procs: Procs) -> None:
    """No SIGPIPE, no EPIPE: the unit holds a read end of its own pipe; the next enmei attaches again and
    nothing written while no enmei ran is lost (it stayed in the pipe)."""
    cfg = tmp_path / "enmei.toml"
    cfg.write_text(f'[units.talk]\ncommand = ["{PY}", "-c", {json.dumps(TALKER)}]\nstop_timeout_s = 1\n')
    state = tmp_path / ".enmei" / "units.json"
    log = tmp_path / ".enmei" / "logs" / "talk.stdout.log"

    def unit_pid() -> int | None:
        try:
            return int(json.loads(state.read_text())["units"]["talk"]["pid"])
        except (OSError, KeyError, ValueError):
            return None

    def up() -> subprocess.Popen[bytes]:
        with open(tmp_path / "up.log", "ab") as out:
            return procs.popen([PY, "-m", "enmei", "up", "--plain", str(cfg)], stdout=out, stderr=out)

    first = up()
    assert wait_until(lambda: unit_pid() is not None and log.exists() and b"line 20\n" in log.read_bytes(), 30)
    pid = unit_pid()
    assert pid is not None
    procs.adopt_pid(pid)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    time.sleep(1.0)  # the unit goes on writing into its pipe, with no reader but itself
    assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    seen = log.read_bytes().count(b"\n")
    second = up()
    assert wait_until(lambda: log.read_bytes().count(b"\n") > seen + 150, 30), (tmp_path / "up.log").read_text()
    assert unit_pid() == pid  # adopted, not restarted
    numbers = [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("line ")]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no line lost across the crash
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0


async def test_a_unit_adopted_from_an_enmei_without_pipes_keeps_copy_truncate_rotation(
        tmp_path: Path, procs: Procs) -> None:
    """An older enmei let the unit write the file itself: adoption finds no pipe, sees the log file at fd 1
    and 2, and ``maintain`` rotates it as before (copy, truncate), bounded by ``max_bytes``."""
    from enmei.clock import SystemClock
    from enmei.visor.base import Identity
    from enmei.visor.process import ProcessBackend

    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    out = os.open(state / "logs" / "old.stdout.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    err = os.open(state / "logs" / "old.stderr.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        writer = "import time\nwhile True:\n    print('x' * 99, flush=True)\n    time.sleep(0.002)"
        unit = procs.popen([PY, "-c", writer], stdout=out, stderr=err)
    finally:
        os.close(out)
        os.close(err)
    spec = load_text(f'[units.old]\ncommand = ["{PY}"]\n[units.old.log]\nmax_bytes = 20000\nkeep = 1\n',
                     tmp_path / "enmei.toml").config.units["old"]
    b = ProcessBackend(clock=SystemClock(), state_dir=state, emit=lambda ev: None)
    try:
        ident = Identity(unit="old", backend="process", pid=unit.pid,
                         create_time=psutil.Process(unit.pid).create_time(), started_wall=time.time(),
                         extra={"pgid": unit.pid})
        assert await b.adopt("old", spec, ident)
        assert b._units["old"].legacy_logs == ("stdout", "stderr")
        log = state / "logs" / "old.stdout.log"
        assert wait_until(lambda: log.stat().st_size > 20000, 30)
        b.maintain()
        assert log.with_name(log.name + ".1").stat().st_size > 20000 > log.stat().st_size
    finally:
        await b.close()


async def test_the_exit_event_carries_the_last_words_written_just_before_the_exit(tmp_path: Path) -> None:
    """The pipe is drained before the tail is read: what a unit wrote an instant before dying is in it."""
    from enmei.clock import SystemClock
    from enmei.model import UnitEvent, UnitEventKind
    from enmei.visor.process import ProcessBackend

    last = "import sys\nsys.stderr.write('x' * 5000 + '\\nfatal: the last words\\n')\nsys.exit(3)\n"
    spec = load_text(f'[units.die]\ncommand = ["{PY}", "-c", {json.dumps(last)}]\n',
                     tmp_path / "enmei.toml").config.units["die"]
    events: list[UnitEvent] = []
    b = ProcessBackend(clock=SystemClock(), state_dir=tmp_path / "state", emit=events.append)
    try:
        for _ in range(3):
            events.clear()
            await b.start("die", spec)
            end = time.monotonic() + 30
            while not any(e.kind is UnitEventKind.EXITED for e in events) and time.monotonic() < end:
                await asyncio.sleep(0.01)
            (exited,) = [e for e in events if e.kind is UnitEventKind.EXITED]
            assert exited.detail["code"] == 3
            assert exited.detail["stderr_tail"][-1] == "fatal: the last words"
    finally:
        await b.close()


async def test_a_planted_log_symlink_is_never_followed_and_the_unit_runs_unblocked(tmp_path: Path) -> None:
    from enmei.clock import SystemClock
    from enmei.visor.process import ProcessBackend

    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    secret = tmp_path / "root-only"
    secret.write_bytes(b"secret\n")
    (state / "logs" / "talker.stdout.log").symlink_to(secret)
    # 64 KiB lines, counted on stderr: it blocks at once if its stdout pipe is not read
    talker = ("import itertools, sys\nfor i in itertools.count():\n    sys.stdout.write('x' * 65535 + '\\n')\n"
              "    sys.stdout.flush()\n    if i % 64 == 0: print(i, file=sys.stderr, flush=True)\n")
    spec = load_text(f'[units.talker]\ncommand = ["{PY}", "-c", {json.dumps(talker)}]\n[units.talker.log]\n'
                     'max_bytes = "2KiB"\nkeep = 1\n', tmp_path / "enmei.toml").config.units["talker"]
    b = ProcessBackend(clock=SystemClock(), state_dir=state, emit=lambda ev: None)
    try:
        await b.start("talker", spec)
        err = state / "logs" / "talker.stderr.log"
        assert await _until(lambda: b"\n640\n" in err.read_bytes(), 30)  # 40 MiB went through the pipe
        assert b.alive("talker")
        assert secret.read_bytes() == b"secret\n"
        assert (state / "logs" / "talker.stdout.log").is_symlink()  # left as it is, never written through
        assert not (state / "logs" / "talker.stdout.log.1").exists()
        c = b.capture.counters()[("talker", "stdout")]
        assert c.written_bytes == 0 and c.dropped_bytes > 40 << 20 and c.write_errors > 0
        await b.stop("talker", timeout_s=1)
    finally:
        await b.close()


async def _until(pred: object, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return bool(pred())  # type: ignore[operator]
