"""The state dir a supervisor owns: checked before anything in it is trusted, locked while it runs.

Everything enmei acts on lives there (unit identities it signals at stop, logs it rotates, the journal
and often its key), so ``StateDir.open``:

* makes it (mode 0700) if missing, and refuses it (``UnsafePathError``) if it is a symlink, owned by
  another user, writable by group or others, or inside a directory others may write (not sticky);
  the same for its ``logs`` and ``qemu`` folders and its files (``units.json``, ``web.token``, the
  journal's files), and for the anchor key and its folder wherever they are;
* takes an exclusive lock on ``<state_dir>/enmei.lock`` (``BoxError`` if another enmei holds it, with
  that enmei's pid): two supervisors on one state dir would both adopt and restart the same units,
  whatever journal file each config names.

The lock is released by ``close`` or by the process ending (a ``kill -9`` too: it is an ``flock``).
Once it is held, the temp files a killed enmei left behind in the state dir are removed.

``lock_fd``: the lock is *inherited* instead (``enmei ctl upgrade``: the successor gets the old enmei's
open lock file, so the lock is never free while supervision changes hands; an ``flock`` belongs to the
open file, which both processes share until the old one exits). It is refused (``BoxError``) unless it
is the state dir's lock file and holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from enmei.errors import BoxError
from enmei.fsafe import check_dir, check_file, ensure_dir, open_nofollow

__all__ = ["LOCK_NAME", "StateDir"]

LOCK_NAME = "enmei.lock"
_FILES = {"units.json": False, "web.token": True}  # name -> private (no access for others at all)


class StateDir:
    def __init__(self, path: Path, *, journal: Path | None = None, key: Path | None = None,
                 lock_fd: int | None = None) -> None:
        self.path = Path(path)
        self.journal = journal
        self.key = key
        self.lock_fd = lock_fd
        self._fd: int | None = None

    @property
    def fd(self) -> int | None:
        """The open lock file while the lock is held (to hand on to a successor), else None."""
        return self._fd

    def open(self) -> StateDir:
        """Check and lock; raises ``UnsafePathError`` or ``BoxError`` (nothing is held then)."""
        ensure_dir(self.path, "state dir")
        for sub in ("logs", "qemu"):
            if (self.path / sub).exists() or (self.path / sub).is_symlink():
                check_dir(self.path / sub, f"state dir's {sub} folder")
        for name, private in _FILES.items():
            check_file(self.path / name, f"state dir's {name}", private=private)
        if self.journal is not None:
            if self.journal.parent.exists():
                check_dir(self.journal.parent, "journal's folder", allow_sticky=True)
            for suffix in ("", "-wal", "-shm", ".head", ".lock"):
                check_file(Path(f"{self.journal}{suffix}"), "journal")
        if self.key is not None:
            if self.key.parent.exists():
                check_dir(self.key.parent, "anchor key's folder", allow_sticky=True)
            check_file(self.key, "anchor key", private=True)
        if self.lock_fd is not None:
            fd = _inherited(self.path / LOCK_NAME, self.lock_fd)
        else:
            fd = open_nofollow(self.path / LOCK_NAME, "state dir lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (on an inherited fd: it holds the lock already)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BoxError(f"{self.path}: another enmei (pid {holder}) supervises from this state dir; "
                           "two would adopt and restart the same units") from None
        self._fd = fd
        if self.lock_fd is not None:
            # The old enmei supervises on until it hands over: its pid stays in the file (``claim`` at the
            # takeover) and its temp files are its own.
            return self
        self.claim()
        # Temp files of atomic replaces (``.NAME.PID.tmp``) that a killed enmei left: with the lock held,
        # no writer of ours is alive to own them.
        for leftover in self.path.glob(".*.*.tmp"):
            if leftover.name.split(".")[-2].isdigit():
                with contextlib.suppress(OSError):
                    leftover.unlink()
        return self

    def claim(self) -> None:
        """Write this process's pid into the lock file (who supervises, for messages and ``enmei ctl``)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StateDir:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _inherited(path: Path, fd: int) -> int:
    """``fd`` if it is the open lock file at ``path`` (same file), made close-on-exec; ``BoxError`` else."""
    try:
        st, here = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError as exc:
        raise BoxError(f"{path}: the inherited state dir lock (fd {fd}) is unusable: {exc.strerror or exc}") from exc
    if (st.st_dev, st.st_ino) != (here.st_dev, here.st_ino):
        raise BoxError(f"{path}: the inherited fd {fd} is not this state dir's lock file")
    os.set_inheritable(fd, False)
    return fd
