"""``enmei ctl upgrade``: a new enmei process takes over from the running one — no unit stopped, no probe
interval missed by more than one period, the web listener never closed.

Who holds what, and when (A: the running enmei; B: its successor, a child of A):

1. **Requested.** A journals ``requested`` and starts B (``enmei up CONFIG --plain [--listen L]`` of this
   or another enmei executable) with three inherited fds named in ``ENMEI_UPGRADE``: a channel (one end of
   a UNIX socket pair), A's open state-dir lock file, and the web listener. An ``flock`` belongs to the open
   file, which A and B now share: from here on the state dir's lock is never free during the handover.
   The listener stays open in the kernel for as long as either holds it: connections wait in its backlog
   while nobody accepts, none is refused. ``successor_started``.
2. **Self-check**, while A supervises on: B loads the config, opens the policy, checks (read-only) that the
   journal is the one its key last signed and that the inherited lock and listener are what they claim,
   and reports on the channel; A journals ``self_check``. Failed, B exited first, or silent for
   ``check_timeout_s``: A kills B (its own child, by its ``Popen``), journals ``fell_back``; it never
   stopped supervising.
3. **A lets go.** A stops supervising without stopping a unit (``Engine.stop(leave_running=True)``: its
   probes, remedies and ctl socket end, its web server stops accepting and finishes its last requests
   meanwhile; the journal is flushed and closed, which frees the journal's writer lock), then sends
   ``handed`` with the instant it stopped and each probe's next due time.
4. **B takes over**: it opens the journal, adopts every unit (the crash-only adoption of a restart), starts
   each probe at the due time A sent, serves the web on the inherited listener, journals ``handed_over``
   with ``takeover_s`` (A's stop to B supervising) and sends ``supervising``. A exits 0.
5. **Fallback**: B dies, fails or is silent for ``takeover_timeout_s`` between 3 and 4: A kills it (its
   child, waited for), opens the journal again and supervises again by the same adoption, the probes at
   their due times (``fell_back``, stage ``takeover``).

Dying at any step leaves one supervisor, since the lock is held throughout: A killed before 3, B sees the
channel end with A gone and takes over as a restart would; A killed after 3, B goes on; B killed, A
falls back (2, 5); both killed, the lock is free and the next ``enmei up`` adopts the units.

The successor side (``Handoff``, the self-check) is ``enmei.engine.successor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enmei.errors import EnmeiError
from enmei.model import RecordKind

if TYPE_CHECKING:
    from enmei.engine.loop import Engine
    from enmei.engine.notify import ServiceNotifier
    from enmei.engine.statedir import StateDir

__all__ = ["ENV", "MAX_MESSAGE", "Successor", "UpgradeError", "Upgrader", "read_message", "write_message"]

log = logging.getLogger(__name__)

#: names the inherited fds: ``channel=N,lock=N[,web=N],from=PID``
ENV = "ENMEI_UPGRADE"
MAX_MESSAGE = 1 << 20  # one JSON line on the channel (the probes' due times of many units fit)


class UpgradeError(EnmeiError):
    """An upgrade that cannot be asked for now, or a successor that broke the handover protocol; ``str``
    is for a person."""


@dataclass(frozen=True)
class Successor:
    """How a successor is started: ``enmei up`` with the config and listen address this enmei runs with.

    >>> Successor(Path("/etc/enmei.toml"), "127.0.0.1:8470").argv(["/opt/new/bin/enmei"])
    ['/opt/new/bin/enmei', 'up', '/etc/enmei.toml', '--plain', '--listen', '127.0.0.1:8470']
    """

    config: Path
    listen: str | None = None
    verbose: int = 0

    def argv(self, enmei: Sequence[str]) -> list[str]:
        return [*enmei, *(["-" + "v" * self.verbose] if self.verbose else []), "up", str(self.config), "--plain",
                *(["--listen", self.listen] if self.listen is not None else [])]


def default_enmei() -> list[str]:
    """This enmei, in this Python (venv): ``python -m enmei``."""
    return [sys.executable, "-m", "enmei"]


def write_message(sock: socket.socket, message: Mapping[str, Any]) -> None:
    """One JSON line on a blocking channel socket (the successor's side, before its loop runs)."""
    sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")


async def read_message(reader: asyncio.StreamReader, timeout_s: float) -> dict[str, Any] | None:
    """The next JSON line, None at the channel's end; ``TimeoutError`` after ``timeout_s``, ``UpgradeError``
    for a line that is not a JSON object."""
    async with asyncio.timeout(timeout_s):
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError as exc:
            raise UpgradeError(f"a message on the upgrade channel is longer than {MAX_MESSAGE} bytes") from exc
    try:
        msg = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UpgradeError(f"not a JSON line on the upgrade channel: {exc}") from None
    if not isinstance(msg, dict):
        raise UpgradeError("a message on the upgrade channel is not a JSON object")
    return msg


@dataclass
class _Pending:
    """A successor that passed its self-check and waits for ``handed``."""

    proc: subprocess.Popen[bytes]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requested_at: float  # monotonic
    stopped_at: float = 0.0
    checks: dict[str, Any] = field(default_factory=dict)


class Upgrader:
    """The running enmei's side of ``enmei ctl upgrade`` (see the module docstring).

    ``supervise`` sets ``state_dir`` (the lock to share) and ``engine`` (the one supervising now), and asks
    ``take_pending``/``hand_over`` once an engine has stopped. ``web``: the listening socket, owned here
    for as long as this enmei runs; ``web_socket()`` gives each web server a duplicate of it, so that a
    server's end closes only its copy.
    """

    def __init__(self, successor: Successor, *, web: socket.socket | None = None,
                 check_timeout_s: float = 120.0, takeover_timeout_s: float = 60.0) -> None:
        self.successor = successor
        self.web = web
        self.check_timeout_s = check_timeout_s
        self.takeover_timeout_s = takeover_timeout_s
        self.state_dir: StateDir | None = None
        self.engine: Engine | None = None
        # Under systemd (Type=notify): the successor gets NOTIFY_SOCKET and the watchdog, and once it
        # supervises this enmei names it the service's main process (MAINPID=) before exiting, so that
        # systemd does not take our exit for the service's end (and kill what is left).
        self.notifier: ServiceNotifier | None = None
        self.handed_to: int | None = None  # the successor's pid once it supervises (this enmei then exits)
        self.last: dict[str, Any] | None = None  # the last upgrade's end, for ``enmei ctl status``
        self._pending: _Pending | None = None
        self._busy = False
        self._lingering: list[asyncio.Task[Any]] = []

    @property
    def handing_over(self) -> bool:
        """Whether the engine stops now for a successor that passed its self-check (not for good)."""
        return self._pending is not None

    def linger(self, task: asyncio.Task[Any]) -> None:
        """A task of the stopped engine (its web server finishing) that may end during the takeover."""
        self._lingering.append(task)

    async def settle(self) -> None:
        """Wait for what ``linger`` was given (each bounds its own end)."""
        tasks, self._lingering = self._lingering, []
        await asyncio.gather(*tasks, return_exceptions=True)

    def web_socket(self) -> socket.socket | None:
        """A duplicate of the listener for one web server (None without ``--listen``)."""
        return self.web.dup() if self.web is not None else None

    def close(self) -> None:
        if self.web is not None:
            self.web.close()
            self.web = None

    # -- 1, 2: requested, successor started, self-check ---------------------------------------------

    async def request(self, *, enmei: Sequence[str] | None = None, by: str = "operator",
                      check_timeout_s: float | None = None,
                      takeover_timeout_s: float | None = None) -> dict[str, Any]:
        """Start a successor and wait for its self-check. Returns ``{"state": "handing_over",
        "successor_pid", "checks"}`` — this engine is then stopping, leaving the units running, and the
        successor takes over (``hand_over``) — or ``{"state": "fell_back", "reason"}``: this enmei
        supervises on. ``UpgradeError`` (journaled as ``refused``) if an upgrade is under way, enmei is
        starting or stopping, or a unit has a running remedy (a repair half done is not handed on)."""
        engine = self.engine
        if engine is None or self.state_dir is None or self.state_dir.fd is None:
            raise UpgradeError("this enmei cannot be upgraded (it holds no state dir lock)")
        if self._busy:
            raise self._refuse(engine, by, "an upgrade is already under way")
        if not engine.started.is_set() or engine.stop_requested.is_set():
            raise self._refuse(engine, by, "enmei is starting or stopping")
        repairing = sorted(n for n, u in engine.units.items() if u.remedy is not None)
        if repairing:
            raise self._refuse(engine, by, f"a remedy is running on {', '.join(repairing)}: upgrade once it ended")
        if takeover_timeout_s is not None:
            self.takeover_timeout_s = takeover_timeout_s
        self._busy = True
        self.last = None
        try:
            return await self._request(engine, self.state_dir.fd, list(enmei or default_enmei()), by,
                                       check_timeout_s or self.check_timeout_s)
        finally:
            if self._pending is None:
                self._busy = False

    def _refuse(self, engine: Engine, by: str, reason: str) -> UpgradeError:
        engine.record(RecordKind.UPGRADE, None, {"event": "refused", "by": by, "reason": reason})
        return UpgradeError(f"upgrade refused: {reason}")

    async def _request(self, engine: Engine, lock_fd: int, enmei: list[str], by: str,
                       check_timeout_s: float) -> dict[str, Any]:
        requested_at = time.monotonic()
        argv = self.successor.argv(enmei)
        engine.record(RecordKind.UPGRADE, None, {"event": "requested", "by": by, "argv": argv, "pid": os.getpid()})
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [theirs.fileno(), lock_fd, *([self.web.fileno()] if self.web is not None else [])]
        env = dict(os.environ)
        if self.notifier is not None:
            env["NOTIFY_SOCKET"] = self.notifier.address
            if self.notifier.watchdog_s is not None:
                env["WATCHDOG_USEC"] = str(round(self.notifier.watchdog_s * 2e6))
        env[ENV] = (f"channel={theirs.fileno()},lock={lock_fd}"
                    f"{f',web={self.web.fileno()}' if self.web is not None else ''},from={os.getpid()}")
        try:
            # In this process group (a Ctrl-C or the group's SIGTERM reaches it as it reached us); its
            # output goes where ours goes.
            proc = await asyncio.to_thread(subprocess.Popen, argv, env=env, pass_fds=fds, stdin=subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            return self._fell_back(engine, "start", f"the successor did not start: {exc}", None)
        finally:
            theirs.close()
        engine.record(RecordKind.UPGRADE, None, {"event": "successor_started", "pid": proc.pid})
        reader, writer = await asyncio.open_unix_connection(sock=ours, limit=MAX_MESSAGE)
        try:
            msg = await read_message(reader, check_timeout_s)
        except TimeoutError:
            msg, why = None, f"no self-check result within {check_timeout_s:g}s (hung)"
        except UpgradeError as exc:
            msg, why = None, str(exc)
        else:
            why = "" if msg is not None else "the successor ended before its self-check result"
        if msg is None or msg.get("step") != "self_check" or not msg.get("ok"):
            code = await _end(proc)
            if msg is not None:
                why = (f"self-check failed: {msg.get('error') or 'no reason given'}" if msg.get("step") == "self_check"
                       else f"unexpected message {msg.get('step')!r} instead of the self-check")
            elif code is not None and code != -signal.SIGKILL:
                why += f" (exit code {code})"
            writer.close()
            engine.record(RecordKind.UPGRADE, None, {
                "event": "self_check", "ok": False, "pid": proc.pid, "error": why,
                "checks": msg.get("checks", {}) if msg else {}})
            return self._fell_back(engine, "self_check", why, proc.pid)
        checks = dict(msg.get("checks") or {})
        engine.record(RecordKind.UPGRADE, None, {"event": "self_check", "ok": True, "pid": proc.pid,
                                                 "version": msg.get("version"), "checks": checks})
        self._pending = _Pending(proc, reader, writer, requested_at, time.monotonic(), checks)
        engine.record(RecordKind.UPGRADE, None, {"event": "handing_over", "successor_pid": proc.pid})
        # The answer goes out first (the ctl server writes it before its task yields), then the stop.
        asyncio.get_running_loop().call_soon(lambda: engine.stop(leave_running=True))
        return {"state": "handing_over", "successor_pid": proc.pid, "checks": checks}

    def _fell_back(self, engine: Engine, stage: str, reason: str, pid: int | None) -> dict[str, Any]:
        body = {"event": "fell_back", "stage": stage, "reason": reason, "successor_pid": pid, "pid": os.getpid()}
        engine.record(RecordKind.UPGRADE, None, body)
        log.warning("upgrade fell back (%s): %s", stage, reason)
        self.last = {"state": "fell_back", **body}
        return {"state": "fell_back", "stage": stage, "reason": reason, "successor_pid": pid}

    # -- 3, 5: let go, then wait for the successor -------------------------------------------------

    def take_pending(self) -> _Pending | None:
        """The successor to hand over to, if the engine that just stopped stopped for one."""
        pending, self._pending = self._pending, None
        return pending

    async def hand_over(self, pending: _Pending, probe_due: Mapping[tuple[str, str], float]) -> str | None:
        """Tell the successor to take over (this enmei's engine has stopped and its journal is closed) and
        wait until it supervises: None then (``handed_to`` is its pid). Else the reason it did not — it is
        killed and reaped first, so the caller may supervise again at once."""
        proc = pending.proc
        try:
            message = {"step": "handed", "stopped_at": pending.stopped_at, "sent_at": time.monotonic(),
                       "pid": os.getpid(), "probe_due": [[u, p, t] for (u, p), t in probe_due.items()]}
            pending.writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            await pending.writer.drain()
            msg = await read_message(pending.reader, self.takeover_timeout_s)
        except TimeoutError:
            msg, why = None, f"the successor did not supervise within {self.takeover_timeout_s:g}s (hung)"
        except OSError as exc:  # (it died before it read ``handed``: the channel broke under our write)
            msg, why = None, f"the successor ended during the takeover ({exc or type(exc).__name__})"
        except UpgradeError as exc:
            msg, why = None, f"the handover channel failed: {exc}"
        else:
            why = "the successor ended during the takeover"
        if msg is not None and msg.get("step") == "supervising":
            self.handed_to = proc.pid
            if self.notifier is not None:  # lost, it would end the service: tried again while its queue is full
                for _ in range(50):
                    if self.notifier.send(f"MAINPID={proc.pid}", f"STATUS=handed over to enmei pid {proc.pid}"):
                        break
                    await asyncio.sleep(0.1)
            pending.writer.close()
            self._busy = False
            # It is our child: when we exit it is reparented; nothing to wait for.
            with contextlib.suppress(Exception):
                proc.returncode = 0  # (so that Popen's finaliser does not warn about a running child)
            return None
        if msg is not None:
            why = f"unexpected message {msg.get('step')!r} instead of supervising"
        code = await _end(proc)
        if code is not None and code != -signal.SIGKILL:
            why += f" (exit code {code})"
        pending.writer.close()
        self._busy = False
        return why

    def fell_back_record(self, reason: str, pending: _Pending) -> dict[str, Any]:
        """The ``fell_back`` record of a takeover that failed (written by the engine that supervises again)."""
        body = {"event": "fell_back", "stage": "takeover", "reason": reason, "successor_pid": pending.proc.pid,
                "pid": os.getpid(), "blind_s": round(time.monotonic() - pending.stopped_at, 3)}
        self.last = {"state": "fell_back", **body}
        return body

    def status(self) -> dict[str, Any] | None:
        """The last upgrade's end as ``enmei ctl status`` shows it (None: there was none)."""
        return self.last


async def _end(proc: subprocess.Popen[bytes]) -> int | None:
    """Kill the successor if it still runs (it is our child: its pid cannot have been recycled before we
    reap it) and reap it; its exit code (``-9`` when killed here)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return await asyncio.to_thread(proc.wait)

