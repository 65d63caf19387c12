"""The ctl client: one request to the supervisor of a state dir, its answer; or why nobody answers.

Blocking and small on purpose (the CLI's side). Whether an enmei is alive is read from the state dir's
lock (``enmei.lock``, an ``flock`` its supervisor holds while it runs), as ``/proc/locks`` lists it: the
check takes no lock itself, so it can never make a starting enmei think its state dir is taken.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Any

from enmei.ctl.protocol import MAX_REQUEST, SOCKET_NAME, CtlError, decode, encode

__all__ = ["flock_holder", "holds_open", "lock_holder", "request", "socket_path"]

_MAX_ANSWER = 64 * 2**20
_SUN_PATH_MAX = 107
LOCK_NAME = "enmei.lock"  # (engine.statedir.LOCK_NAME: not imported, to keep the CLI's import light)


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


def lock_holder(state_dir: Path) -> int | None:
    """The pid of the process holding ``state_dir``'s lock (a running enmei), or None."""
    return flock_holder(Path(state_dir) / LOCK_NAME)


def flock_holder(lock: Path) -> int | None:
    """The pid holding an ``flock`` on the file ``lock`` as ``/proc/locks`` lists it, or None. Takes no lock.

    After ``enmei ctl upgrade`` the kernel still names the enmei that took the lock, which has exited
    (the successor inherited its open lock file, and the lock with it): the pid the successor wrote into
    the lock file is the answer when that process has the lock file open."""
    pid = _flock_pid(lock)
    if pid is None:
        return None
    try:
        written = int(lock.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return pid
    return written if written != pid and holds_open(written, lock) else pid


def holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has the file at ``path`` open (one of its fds is that file)."""
    try:
        st = os.stat(path)
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            there = os.stat(f"/proc/{pid}/fd/{fd}")
            if (there.st_ino, there.st_dev) == (st.st_ino, st.st_dev):
                return True
    return False


def _flock_pid(lock: Path) -> int | None:
    try:
        st = os.stat(lock)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            rows = f.read().splitlines()
    except OSError:
        return None
    same_inode: int | None = None
    for row in rows:
        fields = row.split()
        if "FLOCK" not in fields or "->" in fields:
            continue  # (a "->" row is a waiter, not a holder)
        ids = [f for f in fields if f.count(":") == 2]
        if not ids:
            continue
        major, minor, inode = ids[0].split(":")
        try:
            if int(inode) != st.st_ino:
                continue
            pid = int(fields[fields.index(ids[0]) - 1])
            if (int(major, 16), int(minor, 16)) == (os.major(st.st_dev), os.minor(st.st_dev)):
                return pid
            same_inode = pid  # (an overlay or FUSE file system may show another device number)
        except ValueError:
            continue
    return same_inode


def _not_answering(state_dir: Path, path: Path, exc: OSError) -> CtlError:
    holder = lock_holder(state_dir)
    if holder is None:
        what = "no socket there" if isinstance(exc, FileNotFoundError) else "a stale socket of a dead enmei"
        return CtlError(f"no enmei is running with state dir {state_dir} (ctl socket {path}: {what})",
                        not_running=True)
    return CtlError(f"enmei (pid {holder}) holds state dir {state_dir} but does not answer on its ctl socket "
                    f"{path}: {exc.strerror or exc}", not_running=True)


def request(state_dir: Path, req: dict[str, Any], *, timeout_s: float = 70.0) -> dict[str, Any]:
    """Send ``req``, return the answer. ``CtlError`` when nobody answers (naming the socket and whether
    an enmei holds the state dir) or the answer is not one."""
    path = socket_path(state_dir)
    line = encode(req)
    if len(line) > MAX_REQUEST:
        raise CtlError(f"request longer than {MAX_REQUEST} bytes")
    dirfd: int | None = None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        address = str(path)
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            try:
                dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise _not_answering(state_dir, path, exc) from exc
            address = f"/proc/self/fd/{dirfd}/{path.name}"
        try:
            sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise _not_answering(state_dir, path, exc) from exc
        except PermissionError as exc:
            raise CtlError(f"{path}: {exc.strerror}: enmei ctl must run as the user enmei runs as") from exc
        try:
            sock.sendall(line)
            data = bytearray()
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > _MAX_ANSWER:
                    raise CtlError(f"{path}: answer longer than {_MAX_ANSWER} bytes")
        except TimeoutError:
            raise CtlError(f"{path}: no answer within {timeout_s:g}s") from None
        except OSError as exc:
            raise CtlError(f"{path}: {exc.strerror or exc}") from exc
        if not data:
            raise CtlError(f"{path}: the supervisor closed the connection without an answer")
        return decode(bytes(data))
    finally:
        sock.close()
        if dirfd is not None:
            with contextlib.suppress(OSError):
                os.close(dirfd)
