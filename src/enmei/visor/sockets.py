"""Listening sockets enmei holds for a process unit (``[[units.NAME.sockets]]``), passed to every instance by
the systemd ``LISTEN_FDS`` protocol.

Promises:

* ``HeldSockets.ensure`` binds and listens on every declared address that is not held yet (before the
  unit's first start); a socket is held until the unit leaves the config or enmei closes the backend, so
  it survives the unit's restarts and crashes: while no instance accepts, the kernel queues connections in
  its backlog (``backlog`` entries) and none is refused.
* An instance gets the sockets at fds 3, 4, ... in the order of the entries, with ``LISTEN_FDS`` (their
  count), ``LISTEN_FDNAMES`` (colon-separated names) and ``LISTEN_PID`` (its own pid: set by the launcher
  after the fork, ``launcher_script``).
* Across a restart of enmei itself: the sockets die with the enmei that held them, but a running instance
  holds the same open sockets; ``HeldSockets.take_from`` copies them back out of the adopted instance
  (``pidfd_getfd``, found by the socket inodes saved in its identity, checked by address and listening
  state). When no instance survived the restart, the next start binds them afresh (connections that were
  queued in the old backlog only are lost with it).
* A failure to bind is a ``StartError`` naming the unit, the entry and the address (and the owner of the
  port, if it can be found).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from enmei.config.model import HeldSocket
from enmei.errors import StartError

__all__ = ["HeldSockets", "launcher_script", "listen_env", "pidfd_getfd", "port_owner", "split_address"]

log = logging.getLogger(__name__)

_SYS_PIDFD_GETFD = 438  # x86-64 and the generic table alike (Linux 5.6)
FIRST_FD = 3  # SD_LISTEN_FDS_START


def split_address(address: str) -> tuple[socket.AddressFamily, str, int]:
    """(family, host, port) of ``HOST:PORT`` / ``[V6]:PORT``.

    >>> split_address("[::1]:80")[1:]
    ('::1', 80)
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    return (socket.AF_INET6 if ":" in host else socket.AF_INET), host, int(port)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """A copy (close-on-exec) of descriptor ``target_fd`` of the process ``pidfd`` pins; ``OSError`` if it
    cannot be had (gone, not permitted, no such fd)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.syscall(_SYS_PIDFD_GETFD, ctypes.c_int(pidfd), ctypes.c_int(target_fd), ctypes.c_uint(0)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def listen_env(names: Sequence[str]) -> dict[str, str]:
    """The environment an instance gets beside its sockets (``LISTEN_PID`` comes from the launcher).

    >>> listen_env(["http", "admin"])
    {'LISTEN_FDS': '2', 'LISTEN_FDNAMES': 'http:admin'}
    """
    return {"LISTEN_FDS": str(len(names)), "LISTEN_FDNAMES": ":".join(names)}


def launcher_script(sources: Sequence[int]) -> str:
    """Shell (bash: dash takes one-digit fds only) that moves ``sources`` to fds 3, 4, ... and sets
    ``LISTEN_PID`` to the shell's own pid (which the command keeps by exec). Every source must be above
    the targets (``HeldSockets.inheritable`` makes sure of that), so no move overwrites another source.

    >>> launcher_script([10, 11])
    'exec 3<&10 4<&11 10<&- 11<&-; LISTEN_PID=$$; export LISTEN_PID; '
    """
    moves = " ".join(f"{FIRST_FD + i}<&{src}" for i, src in enumerate(sources))
    closes = " ".join(f"{src}<&-" for src in sources)
    return f"exec {moves} {closes}; LISTEN_PID=$$; export LISTEN_PID; "


def _inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def _matches(sock: socket.socket, spec: HeldSocket) -> bool:
    """Whether ``sock`` is a listening TCP socket bound to ``spec.address``."""
    family, host, port = split_address(spec.address)
    try:
        if sock.family != family or sock.type != socket.SOCK_STREAM:
            return False
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
        bound = sock.getsockname()
    except OSError:
        return False
    want = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0][4]
    return bool(bound[0] == want[0] and bound[1] == want[1])


@dataclass
class HeldSockets:
    """The sockets held for one unit, in the order of its ``sockets`` entries."""

    unit: str
    specs: tuple[HeldSocket, ...]
    names: tuple[str, ...]
    socks: list[socket.socket | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.socks:
            self.socks = [None] * len(self.specs)

    def held(self) -> bool:
        """Whether every declared socket is held now."""
        return all(s is not None for s in self.socks)

    def fits(self, specs: Sequence[HeldSocket]) -> bool:
        """Whether ``specs`` (a reloaded config's) are the sockets held (same addresses, same order)."""
        return [s.address for s in specs] == [s.address for s in self.specs]

    def ensure(self) -> None:
        """Bind and listen on every declared socket not held yet. ``StartError`` (nothing changed for the
        ones held already) if one cannot be bound."""
        for i, spec in enumerate(self.specs):
            if self.socks[i] is not None:
                continue
            family, host, port = split_address(spec.address)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                sock.listen(spec.backlog)
            except OSError as exc:
                sock.close()
                owner = port_owner(port) if exc.errno == errno.EADDRINUSE else None
                who = f" (in use by pid {owner[0]}, {owner[1]})" if owner else ""
                raise StartError(self.unit, "start", f"sockets[{i}]: cannot listen on {spec.address}: "
                                 f"{exc.strerror}{who}") from exc
            self.socks[i] = sock

    def inheritable(self) -> list[int]:
        """Copies of the held sockets' fds for one spawn, each numbered above fd ``2 + count`` (so the
        launcher can move them to 3, 4, ... without overwriting one another); the caller closes them.
        Requires ``held()``."""
        low = FIRST_FD + len(self.specs)
        out: list[int] = []
        try:
            for sock in self.socks:
                assert sock is not None
                out.append(fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, low))
        except BaseException:
            for fd in out:
                os.close(fd)
            raise
        return out

    def identity(self) -> list[list[Any]]:
        """What an instance's saved identity keeps of its sockets: [fd in the instance, inode] per entry."""
        return [[FIRST_FD + i, _inode(s.fileno())] for i, s in enumerate(self.socks) if s is not None]

    def take_from(self, pid: int, pidfd: int, saved: Any) -> int:
        """Hold again, from the adopted instance ``pid`` (pinned by ``pidfd``), the sockets it was given:
        looked up by the inodes ``saved`` (``identity()`` of its start) among its fds, else at fds 3, 4, ...,
        and kept only if listening on the declared address. Returns how many are held after."""
        inodes: list[int | None] = [None] * len(self.specs)
        if isinstance(saved, list):
            for i, item in enumerate(saved[: len(self.specs)]):
                with contextlib.suppress(TypeError, ValueError, IndexError):
                    inodes[i] = int(item[1])
        where: dict[int, int] = {}
        with contextlib.suppress(OSError):
            for name in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError, ValueError):
                    link = os.readlink(f"/proc/{pid}/fd/{name}")
                    if link.startswith("socket:["):
                        where[int(link[8:-1])] = int(name)
        for i, spec in enumerate(self.specs):
            if self.socks[i] is not None:
                continue
            ino = inodes[i]
            fd_there = where.get(ino) if ino is not None else FIRST_FD + i
            if fd_there is None:
                continue
            try:
                fd = pidfd_getfd(pidfd, fd_there)
            except OSError as exc:
                log.warning("unit %s: cannot take sockets[%d] back from pid %d: %s", self.unit, i, pid, exc)
                continue
            sock = socket.socket(fileno=fd)
            if _matches(sock, spec):
                self.socks[i] = sock
            else:
                sock.detach()
                os.close(fd)
        return sum(s is not None for s in self.socks)

    def close(self) -> None:
        """Stop holding them (a running instance keeps its own copies)."""
        for i, sock in enumerate(self.socks):
            if sock is not None:
                sock.close()
                self.socks[i] = None


def port_owner(port: int) -> tuple[int, str] | None:
    """(pid, name) of the process listening on ``port``, if it can be found."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                try:
                    return conn.pid, psutil.Process(conn.pid).name()
                except psutil.Error:
                    return conn.pid, "?"
    except (psutil.AccessDenied, OSError):
        return None
    return None
