"""Start-up conditions: what tells enmei that a unit has finished starting (and liveness may judge it).

``LogLineWatch``: a line of the unit's captured output matching a regex, read from where the log was
when the instance started (bounded reads; a rotated or truncated log is read again from its start).

``NotifySocket``: the sd_notify protocol. enmei binds a datagram UNIX socket for the unit (in the state
dir, or in the abstract namespace when that path is too long for a socket address) and passes its
address as ``NOTIFY_SOCKET``; ``READY=1`` from a process of the unit ends the start-up. The sender is
known from its kernel-checked credentials (``SO_PASSCRED``) and must be the unit's main process, in its
session, or in its cgroup; a datagram from anyone else is refused and reported (once per instance).
Other assignments (``STATUS=``, ``MAINPID=``, ``WATCHDOG=1``) are read and ignored; at most 64 datagrams
are read per wake-up, each at most 4 KiB, so a flood cannot stall the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import struct
from collections.abc import Callable
from pathlib import Path

__all__ = ["LogLineWatch", "NotifySocket", "belongs_to"]

_MAX_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


class LogLineWatch:
    """Finds the first line matching ``pattern`` written to ``path`` after ``offset``."""

    def __init__(self, path: Path, pattern: str, offset: int, *, max_read: int = 1 << 20,
                 max_line: int = 4096) -> None:
        self.path = path
        self.pattern = re.compile(pattern.encode())
        self.offset = offset
        self.max_read = max_read
        self.max_line = max_line
        self._partial = b""

    @staticmethod
    def size(path: Path | None) -> int:
        try:
            return os.stat(path).st_size if path is not None else 0
        except OSError:
            return 0

    def check(self) -> str | None:
        """The first matching line written since the last check (decoded), or None. Never raises."""
        size = self.size(self.path)
        if size < self.offset:  # rotated or truncated since: what is there now is new
            self.offset, self._partial = 0, b""
        if size == self.offset:
            return None
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(min(size - self.offset, self.max_read))
        except OSError:
            return None
        self.offset += len(data)
        *lines, rest = (self._partial + data).split(b"\n")
        self._partial = rest[-self.max_line:]
        for line in [*lines, rest]:  # a last line still being written may already say "ready"
            if self.pattern.search(line[:self.max_line]):
                return line[:self.max_line].decode("utf-8", "replace")
        return None


def belongs_to(pid: int, main_pid: int, cgroup: str | None) -> bool:
    """Whether ``pid`` is one of the unit's processes: its main process, in the session the main process
    leads, or (with a cgroup) in the unit's cgroup."""
    if pid == main_pid:
        return True
    with contextlib.suppress(OSError):
        if os.getsid(pid) == main_pid:
            return True
    if cgroup:
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return False
        tail = "/" + Path(cgroup).name
        parent = "/" + Path(cgroup).parent.name + tail
        return any(line.startswith("0::") and line.rstrip().endswith(parent) for line in text.splitlines())
    return False


class NotifySocket:
    """The unit's notify socket. ``on_ready(pid)`` is called for a ``READY=1`` from a process that
    ``accept(pid)`` says belongs to the unit; ``on_refused(pid)`` for one that does not."""

    def __init__(self, directory: Path, unit: str, *, accept: Callable[[int], bool | None],
                 on_ready: Callable[[int], None], on_refused: Callable[[int], None]) -> None:
        self.accept = accept
        self.on_ready = on_ready
        self.on_refused = on_refused
        self._pending: list[int] = []  # READY=1 senders seen before the unit's identity was known
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.path: Path | None = directory / f"{unit}.sock"
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            if len(os.fsencode(self.path)) <= _MAX_PATH:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # a socket left by an earlier instance or supervisor
                self.sock.bind(os.fsencode(self.path))
                os.chmod(self.path, 0o600)  # only this user (the units run as it) may send
                self.address = str(self.path)
            else:
                digest = hashlib.sha256(str(directory.resolve() / unit).encode()).hexdigest()[:24]
                self.path = None
                self.sock.bind(b"\0enmei-notify-" + digest.encode())
                self.address = "@enmei-notify-" + digest
        except BaseException:
            self.sock.close()
            raise

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def recheck(self) -> None:
        """Judge the senders that arrived before the unit's identity was known."""
        pending, self._pending = self._pending, []
        for pid in pending:
            self._judge(pid)

    def _readable(self) -> None:
        for _ in range(64):
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pid = 0
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= 12:
                    pid = struct.unpack("iII", payload[:12])[0]
            if b"READY=1" in data.split(b"\n"):
                self._judge(pid)

    def _judge(self, pid: int) -> None:
        verdict = self.accept(pid)
        if verdict is None:
            if len(self._pending) < 8:
                self._pending.append(pid)
        elif verdict:
            self.on_ready(pid)
        else:
            self.on_refused(pid)

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
