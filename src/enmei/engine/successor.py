"""The successor's side of ``enmei ctl upgrade`` (the protocol is drawn in ``enmei.engine.upgrade``).

``Handoff.from_env`` reads ``ENMEI_UPGRADE`` (and removes it, so no unit inherits it): the channel to the
old enmei, its state-dir lock file and its web listener, all made close-on-exec at once. ``self_check``
checks what the takeover will rely on without changing anything: the journal is the one its key last
signed (read-only, while the old enmei still writes it), the listener listens, the lock file is the state
dir's. ``report`` sends the result; ``await_handed`` waits for the old enmei to let go; ``confirm`` says
this one supervises.

Failure: a malformed ``ENMEI_UPGRADE`` is an ``UpgradeError`` before anything is touched. The old enmei
ending the channel while it lives (it gave up) is an ``UpgradeError``: this one exits without
supervising. The old enmei *dying* (the channel ends, and it is gone) is not: this one holds the shared
lock, so it takes over the way any restart adopts the units.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from enmei import crashpoint
from enmei.engine.upgrade import ENV, MAX_MESSAGE, UpgradeError, read_message, write_message

__all__ = ["Handed", "Handoff", "check_journal", "check_listener"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Handed:
    """What the old enmei handed on: when it stopped (monotonic, shared by every process of the host),
    each probe's next due time, and whether it died instead of handing over."""

    stopped_at: float
    probe_due: dict[tuple[str, str], float] = field(default_factory=dict)
    old_died: bool = False
    sent_at: float | None = None  # when the old enmei had let go (its journal closed)
    received_at: float | None = None  # when this one read that


class Handoff:
    """The inherited end of an upgrade (see the module docstring)."""

    def __init__(self, channel: socket.socket, lock_fd: int, web_fd: int | None, from_pid: int) -> None:
        self.channel = channel
        self.lock_fd = lock_fd
        self.web_fd = web_fd
        self.from_pid = from_pid
        self.started_at = time.monotonic()
        self.reported = False
        self.handed: Handed | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._web: socket.socket | None = None
        self.nice_before: int | None = None  # set while this process defers to the old enmei (``_defer``)

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> Handoff | None:
        """The handoff named in ``ENMEI_UPGRADE`` (removed from the environment), or None without one."""
        env = os.environ if environ is None else environ
        value = env.pop(ENV, None)
        if value is None:
            return None
        try:
            fields = dict(part.split("=", 1) for part in value.split(","))
            channel, lock, pid = int(fields["channel"]), int(fields["lock"]), int(fields["from"])
            web = int(fields["web"]) if "web" in fields else None
        except (KeyError, ValueError) as exc:
            raise UpgradeError(f"{ENV}={value!r}: expected channel=FD,lock=FD[,web=FD],from=PID") from exc
        for fd in (channel, lock, *([web] if web is not None else [])):
            try:
                os.set_inheritable(fd, False)  # ours only: never a unit's, a probe's or the sandbox's
            except OSError as exc:
                raise UpgradeError(f"{ENV}: fd {fd} is not open: {exc.strerror}") from exc
        sock = socket.socket(fileno=channel)
        sock.setblocking(True)
        handoff = cls(sock, lock, web, pid)
        handoff.nice_before = _defer()
        return handoff

    def web_socket(self) -> socket.socket | None:
        """The inherited listener as a socket object (checked by ``check_listener``), always the same one."""
        if self.web_fd is None:
            return None
        if self._web is None:  # one socket object for the fd: two would close it twice
            self._web = socket.socket(fileno=self.web_fd)
            self._web.setblocking(False)
        return self._web

    # -- the self-check --------------------------------------------------------------------------

    def report(self, ok: bool, checks: dict[str, Any], error: str | None = None) -> None:
        """Send the self-check's result (blocking: a few bytes on a local socket); never raises — an old
        enmei that is gone is found by ``await_handed``."""
        from enmei import __version__

        self.reported = True
        with contextlib.suppress(OSError):
            write_message(self.channel, {"step": "self_check", "ok": ok, "checks": checks, "error": error,
                                         "version": __version__, "pid": os.getpid(),
                                         "check_s": round(time.monotonic() - self.started_at, 3)})

    def fail(self, error: str) -> None:
        """Report a failed self-check (once) and close the channel: the old enmei supervises on."""
        if not self.reported:
            self.report(False, {}, error)
        self.close()

    # -- the takeover ----------------------------------------------------------------------------

    async def await_handed(self) -> Handed:
        """Wait (without a bound of its own: the old enmei has one, and kills this process when it passes)
        for the old enmei to let go. ``UpgradeError`` if it ended the handover while it lives."""
        self.channel.setblocking(False)
        self._reader, self._writer = await asyncio.open_unix_connection(sock=self.channel, limit=MAX_MESSAGE)
        msg = await read_message(self._reader, 365 * 86400.0)
        if msg is None:
            if _alive(self.from_pid):
                raise UpgradeError(f"the old enmei (pid {self.from_pid}) ended the handover: not taking over")
            log.warning("the old enmei (pid %d) died during the handover: taking over as after a restart",
                        self.from_pid)
            self.handed = Handed(time.monotonic(), {}, old_died=True)
            return self.handed
        if msg.get("step") != "handed":
            raise UpgradeError(f"unexpected message {msg.get('step')!r} from the old enmei instead of handed")
        crashpoint.reached("upgrade.handed")  # (a test hook: a successor dying or hung mid-takeover)
        due: dict[tuple[str, str], float] = {}
        for row in msg.get("probe_due") or []:
            with contextlib.suppress(TypeError, ValueError):
                unit, probe, at = row
                due[(str(unit), str(probe))] = float(at)
        sent = msg.get("sent_at")
        self.handed = Handed(float(msg.get("stopped_at") or time.monotonic()), due,
                             sent_at=float(sent) if isinstance(sent, int | float) else None,
                             received_at=time.monotonic())
        return self.handed

    def resume_priority(self) -> None:
        """Back to the CPU priority this process started with (its threads and children too): it
        supervises now. Never raises."""
        if self.nice_before is not None:
            _renice(self.nice_before + DEFER_NICE, self.nice_before)
            self.nice_before = None

    async def confirm(self, body: dict[str, Any]) -> None:
        """Tell the old enmei that this one supervises (it then exits); never raises."""
        if self._writer is None:
            return
        with contextlib.suppress(OSError, ConnectionError):
            line = b'{"step":"supervising","pid":%d,"takeover_s":%s}\n' % (os.getpid(),
                                                                           str(body.get("takeover_s")).encode())
            self._writer.write(line)
            await self._writer.drain()
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        with contextlib.suppress(OSError):
            self.channel.close()


#: how much lower a successor's CPU priority is while it checks itself (its start-up — Python, imports,
#: the policy sandbox — competes with the enmei that supervises meanwhile: on a loaded 2-core machine the
#: old enmei's probes were late by up to 0.8 s while a successor started at the same priority)
DEFER_NICE = 10


def _defer() -> int | None:
    """Lower this process's CPU priority by ``DEFER_NICE`` if it can be raised back at the takeover (root,
    or an ``RLIMIT_NICE`` that allows it): the nice value to go back to, or None (left as it is)."""
    import resource

    try:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
        if os.geteuid() != 0 and soft != resource.RLIM_INFINITY and 20 - soft > before:
            return None  # (RLIMIT_NICE is 20 - the lowest nice allowed: it would not let us come back)
        os.setpriority(os.PRIO_PROCESS, 0, min(19, before + DEFER_NICE))
    except OSError:
        return None
    return before


def _renice(deferred: int, to: int) -> None:
    """Every thread of this process and of its descendants (the policy sandbox) that runs at ``deferred``
    back to ``to`` (Linux keeps a nice value per thread)."""
    import psutil

    pids = [os.getpid()]
    with contextlib.suppress(psutil.Error):
        pids += [c.pid for c in psutil.Process().children(recursive=True)]
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    if os.getpriority(os.PRIO_PROCESS, int(tid)) == min(19, deferred):
                        os.setpriority(os.PRIO_PROCESS, int(tid), to)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs and is not a zombie (our parent's death reparents us, so it cannot be
    recycled as someone else while we check: the old enmei is our parent or gone)."""
    if os.getppid() != pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def check_listener(sock: socket.socket | None) -> dict[str, Any]:
    """The inherited web listener, if any: a listening TCP socket on loopback. ``UpgradeError`` else."""
    if sock is None:
        return {"web": None}
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        host, port = sock.getsockname()[:2]
    except OSError as exc:
        raise UpgradeError(f"the inherited web listener is unusable: {exc.strerror or exc}") from exc
    if sock.type != socket.SOCK_STREAM or not listening:
        raise UpgradeError(f"the inherited web listener ({host}:{port}) is not a listening TCP socket")
    return {"web": f"{host}:{port}"}


def check_journal(loaded: Any, tries: int = 3) -> dict[str, Any]:
    """The journal the config names is the one its key last signed, its tail chaining on (read-only:
    ``box.continuity.check_start``; the old enmei keeps writing meanwhile, so a head rewritten between the
    two reads is tried again). Raises ``IntegrityError``/``BoxError``."""
    from enmei.box.continuity import check_start, journal_end
    from enmei.engine.loop import journal_for
    from enmei.errors import BoxError

    path = loaded.journal_path
    for attempt in range(tries):
        try:
            anchors = journal_for(loaded).anchors  # (the key exists: the old enmei writes with it)
            if anchors is not None:
                check_start(path, anchors)
            seq, _, _ = journal_end(path)
            return {"journal": str(path), "journal_seq": seq, "anchored": anchors is not None}
        except BoxError:
            if attempt == tries - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")
