"""The watcher of ``enmei watch``: an enmei's liveness checked from outside, a dead or hung one restarted.

Run as ``python -m enmei.watch`` (``enmei watch`` execs it): standard library and ``enmei.ctl.client``
only, so it stays small (16 MB resident measured, against 75 MB for the enmei it watched) and shares
nothing that could take enmei down with it.

For each target (a config file, or a state dir), every ``check_s`` — and at once when the watched
process ends, through a pidfd — the watcher looks at:

* **the lock**: who holds ``<state_dir>/enmei.lock`` (``/proc/locks``, no lock taken; after an upgrade,
  which passes the locked file on, the successor whose pid is written in it). Its holder is
  the enmei being watched, identified by pid *and* start time; its command line and cwd are learned
  then (a restart repeats them: ``--listen`` and all);
* **the heartbeat** (``enmei.watch.beat``): stale when its count has not moved for ``hang_after_s``;
* **the ctl socket**: asked for ``status`` (at most ``ctl_timeout_s``) when the heartbeat is stale, and
  every ``ctl_every_s`` otherwise (an unanswered API with a live heartbeat is reported, never killed:
  a hostile client holding the API's connections must not get enmei killed).

Verdicts:

* **dead** — nobody holds the lock for ``grace_s`` (``first_grace_s`` when the watcher has just
  started). An upgrade (``enmei ctl upgrade``) passes the locked file to its successor, so the lock is
  never free: the successor is followed, not restarted. A heartbeat whose last state is
  ``stopping``/``stopped`` is an enmei stopped on request: not restarted, and a new one is followed
  when it comes;
* **hung** — the heartbeat stale beyond ``hang_after_s`` *and* the ctl socket unanswered (not while its
  heartbeat says ``stopped`` and it still holds the lock — an upgrade's handover —, for up to
  ``start_timeout_s``): the process,
  re-identified (still holding the lock, same start time, an ``enmei`` command line), gets SIGKILL
  through its pidfd (crash-only: the next one adopts its units), then it is dead.

A restart takes ``<state_dir>/watch/restart.lock`` first and checks the lock again under it, so of two
watchers that see one death exactly one restarts. It leaves a report in ``watch/reports/`` (the new
enmei journals it as a record naming this watcher and what it saw, and alerts), runs the learned command
line (or ``python -m enmei up --plain CONFIG``) in a session of its own — its stdout (the plain log,
whose records are in the journal anyway) to /dev/null, its stderr (errors, tracebacks) appended to
``watch/enmei.log``, kept at most 2 × 8 MiB — and waits until the new process holds the lock. A start
that fails (a config broken on disk: exit code 3) is reported — the first lines of its errors, in the
watcher's log, the pending report and the config's ``alert_command`` — and retried after a backoff
doubling from ``backoff_first_s`` to ``backoff_max_s``, or as soon as the config file changes: never a
restart loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.watch.files import (
    REPORTS,
    lock_holder,
    proc_cmdline,
    proc_start,
    read_beat,
    read_json,
    watch_dir,
    write_json,
)

__all__ = ["Options", "Target", "TargetError", "Watcher"]

LOCK_NAME = "enmei.lock"
_MARKS = ("ENMEI_UNIT", "ENMEI_SUPERVISOR", "ENMEI_MAIN_PID", "ENMEI_SLOT", "NOTIFY_SOCKET", "WATCHDOG_USEC",
          "WATCHDOG_PID")


class TargetError(Exception):
    """A target that cannot be watched (not a config nor a state dir, a config that names no state dir,
    another watcher of that name); ``str`` is for a person."""


@dataclass(frozen=True)
class Options:
    name: str = "watch"
    mutual: bool = False  # the watched enmei restarts this watcher if it dies
    check_s: float = 0.25
    grace_s: float = 0.5  # a free lock this long is a death (an upgrade's successor takes it sooner)
    # At the watcher's start, an enmei started at the same moment gets this long to take its lock (its
    # Python start-up took 5 s at load 9) before the watcher starts one: no "another enmei" error for it.
    first_grace_s: float = 10.0
    hang_after_s: float = 5.0
    ctl_timeout_s: float = 3.0
    ctl_every_s: float = 5.0
    start_timeout_s: float = 60.0
    backoff_first_s: float = 2.0
    backoff_max_s: float = 300.0
    start: bool = True  # start an enmei if none runs when the watcher starts


def _say(name: str, message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    print(f"{stamp} enmei watch[{name}]: {message}", file=sys.stderr, flush=True)


def resolve(arg: Path) -> tuple[Path, Path | None]:
    """(state dir, config) of a target: a directory is a state dir; a file is a config, whose
    ``[supervisor] state_dir`` (default ``.enmei``, relative to the file) is read from its raw TOML —
    a config broken in other ways still names its state dir. ``TargetError`` otherwise."""
    import tomllib

    path = Path(arg).absolute()
    if path.is_dir():
        return path, None
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TargetError(f"{arg}: no such config file or state dir") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TargetError(f"{arg}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"{arg}: not TOML ({exc}); give its state dir to watch it") from None
    sup = raw.get("supervisor", {})
    named = sup.get("state_dir", ".enmei") if isinstance(sup, dict) else None
    if not isinstance(named, str):
        raise TargetError(f"{arg}: [supervisor] state_dir is not a string; give the state dir to watch it")
    return (path.parent / named).resolve(), path


def _alert_command(config: Path | None) -> list[str] | None:
    import tomllib

    if config is None:
        return None
    try:
        sup = tomllib.loads(config.read_text(encoding="utf-8")).get("supervisor", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    cmd = sup.get("alert_command") if isinstance(sup, dict) else None
    return cmd if isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd) else None


def _file_sig(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@dataclass
class Target:
    """One watched enmei (its state dir) and what the watcher knows of it."""

    state_dir: Path
    config: Path | None
    opts: Options
    pid: int | None = None
    start: int | None = None
    pidfd: int | None = None
    argv: list[str] | None = None
    cwd: str | None = None
    beat: int | None = None
    beat_mono: float = 0.0
    gone_since: float | None = None
    first: bool = True
    stopped_seen: bool = False
    api_ok: bool | None = None
    api_checked: float = 0.0
    failures: int = 0
    next_try: float = 0.0
    failed_sig: tuple[int, int] | None = None
    episode: str | None = None
    restarts: int = 0
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    own_lock: int | None = None
    unknown_holder: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)  # what happened, newest last (tests, bench)

    @property
    def dir(self) -> Path:
        return watch_dir(self.state_dir)

    @property
    def lock(self) -> Path:
        return self.state_dir / LOCK_NAME

    # -- registration ----------------------------------------------------------------------------

    def register(self, argv: list[str], cwd: str) -> None:
        """Take ``watch/<name>.lock`` and write ``watch/<name>.json``. ``TargetError`` if another watcher
        of that name runs on this state dir."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        (self.dir / REPORTS).mkdir(mode=0o700, exist_ok=True)
        path = self.dir / f"{self.opts.name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TargetError(f"another watcher named {self.opts.name!r} (pid {lock_holder(path)}) watches "
                              f"{self.state_dir}; give this one another --name") from None
        self.own_lock = fd
        old = read_json(self.dir / f"{self.opts.name}.json") or {}
        if isinstance(old.get("enmei_argv"), list):  # a restarted watcher remembers what it had learned
            self.argv = [str(a) for a in old["enmei_argv"]]
            self.cwd = str(old.get("enmei_cwd") or "/")
        self._registration = {"name": self.opts.name, "argv": argv, "cwd": cwd, "mutual": self.opts.mutual}
        self.save("running")

    def save(self, state: str) -> None:
        reg = {**self._registration, "pid": os.getpid(), "start": proc_start(os.getpid()), "state": state,
               "enmei_argv": self.argv, "enmei_cwd": self.cwd, "enmei_pid": self.pid, "restarts": self.restarts,
               "failures": self.failures}
        try:
            write_json(self.dir / f"{self.opts.name}.json", reg)
        except OSError as exc:
            _say(self.opts.name, f"cannot write my registration in {self.dir}: {exc}")

    def close(self) -> None:
        self.save("stopped")
        self._forget()
        if self.own_lock is not None:
            os.close(self.own_lock)
            self.own_lock = None

    # -- the checks ------------------------------------------------------------------------------

    def check(self, now: float) -> None:
        """One look at the enmei; restarts it when it is dead or hung (see the module docstring)."""
        self.children = [c for c in self.children if c.poll() is None]
        holder = lock_holder(self.lock)
        if holder is not None and proc_start(holder) is None:
            # The lock is held, but under the pid of a process that is gone: the kernel names the process
            # that took an flock, and an upgrade passed it on (its successor dying leaves it held for an
            # instant). Nothing to follow or kill; a death is judged once the lock is free.
            if not self.unknown_holder:
                self.unknown_holder = True
                self._event("unknown", f"the state dir's lock is held under pid {holder}, which is gone")
            return
        self.unknown_holder = False
        if holder is not None:
            self.gone_since = None
            self.first = False
            if holder != self.pid or proc_start(holder) != self.start:
                self._follow(holder, now)
            self._alive(now)
            return
        beat = read_beat(self.state_dir)
        if beat is not None and beat.get("state") in ("stopping", "stopped") and (
                self.pid is None or beat.get("pid") == self.pid) and not self.first:
            if not self.stopped_seen:
                self.stopped_seen = True
                self._event("stopped", f"enmei (pid {beat.get('pid')}) stopped on request: not restarted; "
                                       "waiting for one to be started")
            self._forget()
            return
        if self.gone_since is None:
            self.gone_since = now
            if self.pid is not None:
                self._event("gone", f"enmei pid {self.pid} no longer holds {self.lock}")
        grace = self.opts.first_grace_s if self.first else self.opts.grace_s
        if now - self.gone_since < grace:
            return
        if self.first and not self.opts.start:
            return
        why = "no enmei was running when the watcher started" if self.first else \
            f"enmei pid {self.pid} is gone: nobody holds the state dir's lock for {now - self.gone_since:.2f}s"
        self.restart(now, {"verdict": "dead", "old_pid": self.pid, "why": why,
                           "gone_for_s": round(now - self.gone_since, 3)})

    def _follow(self, holder: int, now: float) -> None:
        self._forget()
        self.pid, self.start = holder, proc_start(holder)
        with contextlib.suppress(OSError):
            self.pidfd = os.pidfd_open(holder)
        argv = proc_cmdline(holder)
        if "up" in argv:
            self.argv = argv
            with contextlib.suppress(OSError):
                self.cwd = os.readlink(f"/proc/{holder}/cwd")
        self.beat, self.beat_mono = None, now
        self.stopped_seen, self.api_ok, self.api_checked = False, None, now
        self.failures, self.failed_sig, self.episode = 0, None, None
        self.save("running")
        self._event("following", f"watching enmei pid {holder} on {self.state_dir}")

    def _forget(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def _alive(self, now: float) -> None:
        beat = read_beat(self.state_dir)
        if beat is not None and beat.get("pid") == self.pid and beat.get("beat") != self.beat:
            self.beat, self.beat_mono = beat.get("beat"), now
        stale = now - self.beat_mono
        if (beat is not None and beat.get("pid") == self.pid and beat.get("state") == "stopped"
                and stale < self.opts.start_timeout_s):
            # Its supervision ended but it still holds the lock: the last instants of a stop, or an upgrade
            # handing over (the successor's heartbeat starts once it supervises; the ctl socket is closed
            # meanwhile). Not a hang, for up to start_timeout_s.
            return
        if stale <= self.opts.hang_after_s and now - self.api_checked < self.opts.ctl_every_s:
            return
        ok = self._api()
        self.api_checked = now
        if ok != self.api_ok and not (ok and self.api_ok is None):
            self._event("api", f"enmei pid {self.pid}: ctl socket {'answers again' if ok else 'does not answer'}")
        self.api_ok = ok
        if stale <= self.opts.hang_after_s:
            return
        if ok:
            self.beat_mono = now - self.opts.hang_after_s / 2  # alive by its API: look again soon, not at once
            self._event("stale", f"enmei pid {self.pid}: heartbeat stale for {stale:.1f}s but its API answers")
            return
        saw = {"verdict": "hung", "old_pid": self.pid, "heartbeat_stale_s": round(stale, 2),
               "heartbeat": self.beat, "api": f"no answer to status within {self.opts.ctl_timeout_s:g}s",
               "why": f"enmei pid {self.pid}: heartbeat stale for {stale:.1f}s and its ctl socket does not answer"}
        if not self._kill():
            return
        self.restart(time.monotonic(), saw)

    def _api(self) -> bool:
        from enmei.ctl.client import request
        from enmei.ctl.protocol import CtlError

        try:
            return bool(request(self.state_dir, {"op": "status"}, timeout_s=self.opts.ctl_timeout_s).get("ok"))
        except (CtlError, OSError):
            return False

    def _kill(self) -> bool:
        """SIGKILL the hung enmei if it is still the one: holding the lock, same start time, an enmei
        command line. True once it is gone."""
        pid = self.pid
        if pid is None or self.pidfd is None or lock_holder(self.lock) != pid or proc_start(pid) != self.start:
            return False
        if not any("enmei" in a for a in proc_cmdline(pid)):
            self._event("refused", f"pid {pid} holds the lock but is not an enmei: not killed")
            return False
        self._event("kill", f"enmei pid {pid} is hung: SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        select.select([self.pidfd], [], [], 30.0)
        end = time.monotonic() + 30.0
        while lock_holder(self.lock) == pid and time.monotonic() < end:
            time.sleep(0.02)
        return True

    # -- the restart -----------------------------------------------------------------------------

    def restart(self, now: float, saw: dict[str, Any]) -> None:
        sig = _file_sig(self.config)
        if self.failures and now < self.next_try and sig == self.failed_sig:
            return  # backing off, and the config did not change since the last failure
        argv = self.argv or ([sys.executable, "-m", "enmei", "up", "--plain", str(self.config)]
                             if self.config is not None else None)
        if argv is None:
            if self.failures == 0:
                self._fail(now, sig, saw, "cannot restart it: its command line is unknown (the watcher never saw "
                                          "it run) and no config was given; watch the config file instead")
            return
        fd = os.open(self.dir / "restart.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            end = time.monotonic() + self.opts.start_timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if lock_holder(self.lock) is not None or time.monotonic() > end:
                        return  # another watcher restarted it (the next check follows the new one)
                    time.sleep(0.02)
            if lock_holder(self.lock) is not None:
                return  # restarted by another watcher while we waited for the restart lock
            self._spawn(argv, now, sig, saw)
        finally:
            os.close(fd)  # (releases the flock)

    def _spawn(self, argv: list[str], now: float, sig: tuple[int, int] | None, saw: dict[str, Any]) -> None:
        detected = time.time()
        log = self.dir / "enmei.log"
        _rotate(log)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        offset = os.lseek(out, 0, os.SEEK_END)
        env = {k: v for k, v in os.environ.items() if k not in _MARKS}
        self._event("restart", f"{saw['why']}; starting {' '.join(argv)}", saw=saw)
        report = self._report_path(detected)
        base = {"watcher": self.opts.name, "watcher_pid": os.getpid(), "saw": saw, "old_pid": saw.get("old_pid"),
                "detected_wall": round(detected, 3), "argv": argv}
        if self.failures == 0:  # (during an outage the report keeps its failures until one attempt works)
            self._write_report(report, {**base, "action": "restarting", "message":
                                        f"watcher {self.opts.name} was restarting enmei: {saw['why']}"})
        try:
            proc = subprocess.Popen(argv, cwd=self.cwd or (str(self.config.parent) if self.config else "/"),
                                    env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            os.close(out)
            self._fail(now, sig, saw, f"cannot run {argv[0]}: {exc}", report=report, base=base)
            return
        os.close(out)
        self.children.append(proc)
        end = time.monotonic() + self.opts.start_timeout_s
        while time.monotonic() < end:
            holder = lock_holder(self.lock)
            if holder == proc.pid:
                self.restarts += 1
                attempts = self.failures + 1
                self.failures, self.failed_sig, self.episode, self.first = 0, None, None, False
                self.gone_since = None
                self._write_report(report, {**base, "action": "restarted", "new_pid": proc.pid,
                                            "attempts": attempts, "restored_wall": round(time.time(), 3),
                                            "message": f"watcher {self.opts.name} restarted enmei "
                                                       f"(pid {saw.get('old_pid')} -> {proc.pid}): {saw['why']}"})
                self._event("restarted", f"enmei is back as pid {proc.pid}", pid=proc.pid)
                self._follow(proc.pid, time.monotonic())
                return
            if holder is not None or proc.poll() is not None:
                break
            time.sleep(0.02)
        code = proc.poll()
        if code is None and lock_holder(self.lock) is None:  # never took the lock in time: not ours to wait for
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = proc.returncode
        holder = lock_holder(self.lock)
        if holder is not None and holder != proc.pid:  # someone else's enmei came up (an operator, an upgrade)
            with contextlib.suppress(OSError):
                report.unlink()
            self._event("preempted", f"another enmei (pid {holder}) took the state dir first")
            return
        problem = f"enmei up exited with code {code}" + (" (the config is invalid)" if code == 3 else "")
        lines = _tail(log, offset)
        self._fail(now, sig, saw, problem + (": " + " | ".join(lines) if lines else ""), report=report, base=base,
                   code=code)

    def _fail(self, now: float, sig: tuple[int, int] | None, saw: dict[str, Any], problem: str, *,
              report: Path | None = None, base: dict[str, Any] | None = None, code: int | None = None) -> None:
        self.failures += 1
        delay = min(self.opts.backoff_first_s * 2 ** (self.failures - 1), self.opts.backoff_max_s)
        self.next_try, self.failed_sig = now + delay, sig
        message = (f"watcher {self.opts.name}: enmei on {self.state_dir} is down and does not start: {problem}; "
                   f"attempt {self.failures}, next in {delay:g}s or when {self.config or 'the config'} changes")
        self._event("failed", message, problem=problem, attempts=self.failures, next_in_s=delay, code=code)
        self.save("running")
        body = {**(base or {"watcher": self.opts.name, "watcher_pid": os.getpid(), "saw": saw}),
                "action": "restart failed", "problem": problem, "attempts": self.failures, "exit_code": code,
                "next_in_s": delay, "message": message}
        if report is not None:
            self._write_report(report, body)
        if self.failures == 1 or self.failures & (self.failures - 1) == 0:  # 1st, 2nd, 4th, 8th... failure
            self._alert(body)

    def _report_path(self, wall: float) -> Path:
        # One file per outage (episode): its failed attempts rewrite it, so the next enmei journals one
        # record per outage, however long the backoff went on.
        if self.episode is None:
            self.episode = f"{int(wall * 1000):015d}-{self.opts.name}-{os.getpid()}"
        return self.dir / REPORTS / f"{self.episode}.json"

    def _write_report(self, path: Path, body: dict[str, Any]) -> None:
        try:
            write_json(path, body)
        except OSError as exc:
            _say(self.opts.name, f"cannot write report {path}: {exc}")

    def _alert(self, body: dict[str, Any]) -> None:
        cmd = _alert_command(self.config)
        if cmd is None:
            return
        payload = {"severity": "critical", "source": "enmei watch", "unit": None, "state_dir": str(self.state_dir),
                   **body}
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.write(json.dumps(payload, default=str).encode() + b"\n")
            with contextlib.suppress(OSError):
                proc.stdin.close()
            self.children.append(proc)
        except OSError as exc:
            _say(self.opts.name, f"alert command {cmd[0]} failed: {exc}")

    def _event(self, kind: str, message: str, **data: Any) -> None:
        _say(self.opts.name, message)
        self.events.append({"kind": kind, "message": message, "wall": time.time(), **data})
        del self.events[:-100]


def _rotate(log: Path, max_bytes: int = 8 * 2**20) -> None:
    """Keep one older ``log.1`` once ``log`` passed ``max_bytes``: at most twice that on disk."""
    with contextlib.suppress(OSError):
        if os.stat(log).st_size > max_bytes:
            os.replace(log, log.with_name(log.name + ".1"))


def _tail(log: Path, offset: int, lines: int = 6) -> list[str]:
    """The error lines the failed start wrote to ``log`` after ``offset`` (at most ``lines``)."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read(64 * 1024).decode(errors="replace")
    except OSError:
        return []
    rows = [r.strip() for r in text.splitlines() if r.strip()]
    errors = [r for r in rows if "error" in r.lower() or "problem" in r.lower()] or rows
    return errors[:lines]


class Watcher:
    """Watch ``targets`` until SIGTERM/SIGINT (see the module docstring)."""

    def __init__(self, targets: list[Path], opts: Options, *, argv: list[str] | None = None) -> None:
        self.opts = opts
        self.targets = [Target(*resolve(t), opts=opts) for t in targets]
        if len({t.state_dir for t in self.targets}) != len(self.targets):
            raise TargetError("the same state dir given twice")
        self.argv = argv or [sys.executable, "-m", "enmei.watch", *sys.argv[1:]]
        self._stop = False

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stopping)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        done: list[Target] = []
        try:
            for t in self.targets:
                t.register(self.argv, os.getcwd())
                done.append(t)
                _say(self.opts.name, f"watching {t.state_dir}" + (f" (config {t.config})" if t.config else ""))
            while not self._stop:
                now = time.monotonic()
                for t in self.targets:
                    t.check(now)
                fds = [t.pidfd for t in self.targets if t.pidfd is not None]
                with contextlib.suppress(InterruptedError, OSError):
                    select.select(fds, [], [], self.opts.check_s)  # wakes at once when a watched enmei ends
        finally:
            for t in done:
                t.close()
        return 0

    def _stopping(self, signum: int, frame: object) -> None:
        self._stop = True
