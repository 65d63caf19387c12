"""Captured logs: a size-bounded file enmei writes itself (``RotatingFile``: a unit's stdout and stderr,
read from a pipe by ``enmei.visor.capture``), copy-then-truncate rotation of a file another process
appends to (QEMU's console, a unit adopted from before pipe capture), and the tail of a log for a person.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> log = d / "console.log"
>>> _ = log.write_bytes(b"x" * 100)
>>> rotate(log, 50, keep=2), log.stat().st_size, (d / "console.log.1").stat().st_size
(True, 0, 100)
>>> rotate(log, 50, keep=2)
False
>>> import shutil; shutil.rmtree(d)
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from enmei.errors import EnmeiError
from enmei.fsafe import open_append

__all__ = ["RotatingFile", "rotate", "tail_lines"]


class RotatingFile:
    """A log that enmei appends to and rotates by renaming, before a write would pass ``max_bytes``.

    Promises: ``path`` never holds more than ``max_bytes`` (a file that was already bigger when opened,
    left by an older enmei, is rotated before the first write); at most ``keep`` older files
    ``path.1`` (newest) .. ``path.<keep>`` exist, each also at most ``max_bytes``, so the whole log takes
    at most ``max_bytes * (keep + 1)``. A write is cut after its last newline that fits, so a line
    starts a file unless it is longer than a whole file. Rotation is a rename (no copy): its cost does
    not grow with the file. Files are opened without following a symlink (``enmei.fsafe``).

    A file that cannot be opened (a planted symlink: ``UnsafePathError``; a full disk...) is not an error
    of the constructor: ``error`` says why, and each ``write`` tries to open it again. ``write`` raises
    ``OSError`` or ``UnsafePathError`` after writing what it could; the caller counts the rest as
    dropped. Not thread-safe: one writer (the capture thread) owns it.

    >>> import tempfile, pathlib, shutil
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> f = RotatingFile(d / "u.stdout.log", max_bytes=10, keep=1)
    >>> for _ in range(5):
    ...     f.write(b"line one\\n")
    >>> f.close()
    >>> sorted(p.name for p in d.iterdir()), (d / "u.stdout.log").read_bytes()
    (['u.stdout.log', 'u.stdout.log.1'], b'line one\\n')
    >>> shutil.rmtree(d)
    """

    def __init__(self, path: Path, *, max_bytes: int, keep: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.rotations = 0
        self.closed = False
        self.size = 0
        self._fd = -1
        self.error: Exception | None = None  # why the file is not open now (None: it is)
        try:
            self._open()
        except (OSError, EnmeiError) as exc:
            self.error = exc  # the next write tries again (and raises)

    def write(self, data: bytes | memoryview) -> None:
        if self._fd < 0:
            if self.closed:
                raise OSError(errno.EBADF, f"{self.path}: written after close")
            self._open()  # not opened yet, or a rotation failed half-way: try again
        view = memoryview(data)
        while view:
            room = self.max_bytes - self.size
            if len(view) <= room:
                self._write_all(view)
                return
            cut = bytes(view[:max(room, 0)]).rfind(b"\n") + 1 if room > 0 else 0
            if cut == 0 and self.size == 0:
                cut = room  # one line longer than a whole file: split it
            if cut:
                self._write_all(view[:cut])
                view = view[cut:]
            self._rotate()

    def close(self) -> None:
        self.closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _write_all(self, view: memoryview) -> None:
        while view:
            n = os.write(self._fd, view)
            self.size += n
            view = view[n:]

    def _rotate(self) -> None:
        """``path`` -> ``path.1`` -> ... -> ``path.<keep>`` (the oldest falls off), then a new ``path``."""
        os.close(self._fd)
        self._fd = -1
        name = self.path.name
        if self.keep > 0:
            for i in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{name}.{i}")
                if os.path.lexists(older):
                    os.replace(older, self.path.with_name(f"{name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{name}.1"))
        else:
            os.unlink(self.path)
        self.rotations += 1
        self._open()

    def _open(self) -> None:
        self._fd = open_append(self.path, "a captured log")
        self.size = os.fstat(self._fd).st_size
        self.error = None


def rotate(path: Path, max_bytes: int, keep: int) -> bool:
    """If ``path`` is larger than ``max_bytes``: shift ``.1``..``.keep``, copy it to ``.1``, truncate it.

    The writer keeps its O_APPEND descriptor and goes on at the new end. Returns whether it rotated;
    a missing file is not rotated. ``OSError`` from the copy propagates (the file is then untouched).
    """
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if keep > 0:
        for i in range(keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


def tail_lines(path: Path, n: int, max_bytes: int = 4096) -> list[str]:
    """The last ``n`` lines of a file (reading at most ``max_bytes``); [] if it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    return [ln[:300] for ln in lines[-n:]]
