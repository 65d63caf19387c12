"""Captured logs: copy-then-truncate rotation of a file another process appends to (a unit's stdout and
stderr, QEMU's console), and the tail of a log for a person.

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

import os
import shutil
from pathlib import Path

__all__ = ["rotate", "tail_lines"]


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
