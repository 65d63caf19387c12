"""A writer for the ``newc`` cpio format, the one the Linux kernel unpacks as an initramfs.

Written in Python so that an image is reproducible byte for byte (every mtime is 0, every owner root,
entries in the order given) and so that device nodes (``/dev/console``) can be made without root.

>>> w = CpioWriter()
>>> w.directory("etc")
>>> w.file("etc/hostname", b"guest\\n")
>>> data = w.finish()
>>> data[:6], b"TRAILER!!!" in data
(b'070701', True)
"""

from __future__ import annotations

import stat

__all__ = ["CpioWriter"]


class CpioWriter:
    """Collects entries in memory; ``finish`` returns the archive (uncompressed)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 0
        self._names: set[str] = set()

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, b"", nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def __contains__(self, name: str) -> bool:
        return name.strip("/") in self._names

    def finish(self) -> bytes:
        """The archive with its trailer; the writer is spent afterwards."""
        self._entry("TRAILER!!!", 0, b"", nlink=1, trailer=True)
        return b"".join(self._parts)

    def _entry(self, name: str, mode: int, data: bytes, *, nlink: int = 1,
               rdev: tuple[int, int] = (0, 0), trailer: bool = False) -> None:
        name = name.strip("/")
        if not trailer:
            if not name or name in self._names:
                raise ValueError(f"cpio entry {name!r} is empty or already present")
            self._names.add(name)
            self._ino += 1
        raw = name.encode() + b"\0"
        fields = (0 if trailer else self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(raw), 0)
        header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self._parts.append(header + raw + _pad(len(header) + len(raw)))
        self._parts.append(data + _pad(len(data)))


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)
