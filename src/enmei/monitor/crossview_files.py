"""The guest's files seen from outside (its data disk, read as a file) against what its own ``ls`` says.

Outside: the entries of each watched directory of the data disk (``/data/...`` in the guest), read from
the disk image with ``debugfs -c -R "ls -p DIR"`` (e2fsprogs; read-only, never mounted, nothing of the
guest runs). The guest writes the disk as this runs: a read can be torn, so each comparison wants a
file present in two reads, and the detector a suspect that persists.

Inside: the test image's ``psview`` prints, with ``enmei.fileview=DIR[,DIR...]``, one ``enmei-ps: file
PATH`` per entry its ``ls -a DIR`` gives and ``enmei-ps: files COUNT`` (the guest's ``ls``: what a rootkit's
patched ``ls`` or an ``LD_PRELOAD`` wrapper lies to).

``compare_files(inside, before, after)``: files on the disk in the outside read before the listing and in
the one after it, missing from the listing — they existed all through it. A file created or removed
around the listing is never counted.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

__all__ = ["FileView", "compare_files", "data_dir", "read_files"]

_TIMEOUT_S = 20.0
_MAX_ENTRIES = 100_000


def data_dir(guest_dir: str) -> str:
    """The data disk's path of a guest directory under ``/data``; ``ValueError`` for one elsewhere.

    >>> data_dir("/data/bin"), data_dir("/data")
    ('/bin', '/')
    """
    parts = Path(guest_dir).parts
    if parts[:2] != ("/", "data") or ".." in parts:
        raise ValueError(f"{guest_dir!r} is not under /data (only the data disk is read from outside)")
    return "/" + "/".join(parts[2:])


class FileView:
    """Files of the watched guest directories, read from outside: ``files`` (guest paths) or ``reason``."""

    def __init__(self, files: frozenset[str], reason: str = "") -> None:
        self.files = files
        self.reason = reason

    @property
    def conclusive(self) -> bool:
        return not self.reason


def read_files(disk: Path, dirs: Iterable[str]) -> FileView:
    """The entries of ``dirs`` (guest paths under ``/data``) on the data disk image ``disk``. Never raises:
    a missing tool, an unreadable disk or a timeout give an inconclusive view; a directory that does not
    exist on the disk has no entries."""
    exe = shutil.which("debugfs") or ("/sbin/debugfs" if Path("/sbin/debugfs").exists() else None)
    if exe is None:
        return FileView(frozenset(), "debugfs is not installed (e2fsprogs)")
    out: set[str] = set()
    for d in dirs:
        try:
            rel = data_dir(d)
        except ValueError as exc:
            return FileView(frozenset(), str(exc))
        try:
            done = subprocess.run([exe, "-c", "-R", f"ls -p {rel}", str(disk)], capture_output=True,
                                  timeout=_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return FileView(frozenset(), f"debugfs took more than {_TIMEOUT_S:.0f} s on {disk}")
        err = done.stderr.decode(errors="replace")
        if done.returncode != 0 or "Bad magic number" in err or "No such file" in err:
            return FileView(frozenset(), f"the data disk {disk} cannot be read: {err.strip()[-200:]}")
        for line in done.stdout.decode(errors="replace").splitlines():
            fields = line.split("/")  # /INODE/MODE/UID/GID/NAME/SIZE/
            if len(fields) >= 7 and fields[5] not in ("", ".", ".."):
                out.add(f"{d.rstrip('/')}/{fields[5]}")
                if len(out) > _MAX_ENTRIES:
                    return FileView(frozenset(), f"more than {_MAX_ENTRIES} entries in {', '.join(dirs)}")
    return FileView(frozenset(out))


def compare_files(inside: Iterable[str] | None, before: FileView | None, after: FileView) -> tuple[list[str], str]:
    """(hidden files, reason): files in both outside views and not ``inside``; reason set (and no files) when
    either view is inconclusive or missing, or the listing had no file part."""
    if inside is None:
        return [], "the listing has no file part"
    if before is None:
        return [], "no outside file view before the listing yet"
    for v in (before, after):
        if not v.conclusive:
            return [], v.reason
    shown = set(inside)
    return sorted(f for f in before.files & after.files if f not in shown), ""
