"""Copy-then-truncate rotation of a log file another process appends to (QEMU's console file).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> log = d / "console.log"
>>> _ = log.write_bytes(b"x" * 100)
>>> rotate(log, 50, keep=2), log.stat().st_size, (d / "console.log.1").stat().st_size
(True, 0, 100)
>>> rotate(log, 50, keep=2)
False
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["rotate"]


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
