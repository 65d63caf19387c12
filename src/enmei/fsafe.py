"""Files enmei trusts: owned by this user, not writable by others, never reached through a symlink.

enmei's state dir holds what it acts on (unit identities it will signal, logs it rotates, the journal's
key). Whoever can write there can make enmei kill a process of theirs choosing, copy a root-only file
through a planted symlink, or sign a forged journal with a planted key. So everything enmei reads as its
own, or writes, goes through this module:

* ``check_dir`` / ``ensure_dir``: a directory that no other user can write into, owned by this user (or
  root), not writable by group or others, in parents that no other user can write to (a sticky, shared
  parent like ``/tmp`` is allowed: others cannot rename what we own in it).
* ``check_file``: a regular file, not a symlink, owned by this user (or root), not writable by group or
  others; ``private=True`` also refuses any group or other permission (keys, tokens: mode 0600).
* ``open_nofollow``, ``open_append``, ``write_atomic``, ``read_private``: open with ``O_NOFOLLOW`` (a symlink
  in the last component is refused, not followed) and check what was opened with ``fstat``.

Every refusal is an ``UnsafePathError`` naming the path, what it is for and how to fix it.

>>> import tempfile, pathlib, shutil
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_atomic(d / "k", b"secret", mode=0o600)
>>> read_private(d / "k", "a key")
b'secret'
>>> (d / "link").symlink_to(d / "k")
>>> try:
...     open_append(d / "link", "a log")
... except UnsafePathError as exc:
...     print("refused:", "symlink" in str(exc))
refused: True
>>> shutil.rmtree(d)
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from enmei.errors import EnmeiError

__all__ = ["UnsafePathError", "check_dir", "check_file", "ensure_dir", "open_append", "open_nofollow",
           "read_private", "write_atomic"]

_TRUSTED_OWNERS_EXTRA = (0,)  # root may own what we use: an attacker who is root has won already


class UnsafePathError(EnmeiError):
    """A path enmei would trust is unsafe: owned by another user, writable by others, or a symlink."""

    def __init__(self, path: str | os.PathLike[str], what: str, why: str) -> None:
        self.path = str(path)
        self.what = what
        self.why = why
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.path} ({self.what}): {self.why}"


def _owners() -> tuple[int, ...]:
    return (os.geteuid(), *_TRUSTED_OWNERS_EXTRA)


def _check_stat(path: Path, what: str, st: os.stat_result, *, private: bool) -> None:
    if st.st_uid not in _owners():
        raise UnsafePathError(path, what, f"owned by uid {st.st_uid}, not by this user ({os.geteuid()}): "
                                          "enmei trusts only its own files")
    mode = stat.S_IMODE(st.st_mode)
    if private and mode & 0o077:
        raise UnsafePathError(path, what, f"mode {mode:04o} gives others access; it must be 0600 "
                                          f"(chmod 600 {path})")
    if mode & 0o022:
        raise UnsafePathError(path, what, f"mode {mode:04o} lets other users write it "
                                          f"(chmod go-w {path})")


def check_dir(path: Path, what: str = "state dir", *, allow_sticky: bool = False) -> None:
    """Raise ``UnsafePathError`` unless ``path`` is a real directory that only this user (or root) can
    change, and no parent up to ``/`` lets another user replace it. With ``allow_sticky``, a directory
    everyone may write but with the sticky bit (``/tmp``) passes too: fit for the folder of a single
    file that is itself checked, not for a directory whose every name enmei trusts. A missing ``path``
    raises ``FileNotFoundError``."""
    path = Path(os.path.abspath(path))
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(path, what, "is a symlink; give enmei the real directory")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(path, what, "is not a directory")
    if not (allow_sticky and st.st_mode & stat.S_ISVTX and st.st_uid in _owners()):
        _check_stat(path, what, st, private=False)
    for parent in path.parents:
        mode = stat.S_IMODE(os.stat(parent).st_mode)
        # A parent others may write lets them rename our directory away and put theirs in its place,
        # unless it is sticky (like /tmp): then only the owner of an entry can move it.
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise UnsafePathError(path, what, f"its parent {parent} (mode {mode:04o}) lets other users "
                                              "replace it")


def ensure_dir(path: Path, what: str = "state dir", mode: int = 0o700) -> Path:
    """``path`` made (with ``mode``, parents as needed) if missing, then checked as ``check_dir`` does."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except OSError as exc:
        raise UnsafePathError(path, what, f"cannot create it: {exc.strerror}") from exc
    check_dir(path, what)
    return path


def check_file(path: Path, what: str, *, private: bool = False) -> os.stat_result | None:
    """``lstat`` of ``path`` after checking it is a regular file (not a symlink) that only this user (or
    root) can write — with ``private``, that nobody else can read either. None if it does not exist."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(path, what, "is a symlink; enmei never follows one for its own files")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(path, what, "is not a regular file")
    _check_stat(Path(path), what, st, private=private)
    return st


def open_nofollow(path: Path, what: str, flags: int, mode: int = 0o600, *, private: bool = False) -> int:
    """``os.open`` with ``O_NOFOLLOW | O_CLOEXEC``; the opened file is checked as ``check_file`` does
    (closed again, and ``UnsafePathError`` raised, if it fails). Other ``OSError`` propagate."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(path, what, "is a symlink; enmei never follows one for its own files") from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(path, what, "is not a regular file")
        _check_stat(Path(path), what, st, private=private)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: Path, what: str, mode: int = 0o640) -> int:
    """A descriptor appending to ``path`` (made with ``mode`` if missing), never through a symlink."""
    return open_nofollow(path, what, os.O_WRONLY | os.O_CREAT | os.O_APPEND, mode)


def read_private(path: Path, what: str) -> bytes:
    """The bytes of ``path``, a file of this user's that nobody else may read or write (a key, a token).
    ``FileNotFoundError`` if it is missing; ``UnsafePathError`` if it is unsafe."""
    fd = open_nofollow(path, what, os.O_RDONLY, private=True)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, what: str = "file") -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, never half of one:
    a new temp file (``O_EXCL | O_NOFOLLOW``, so a planted name is refused, not followed), fsync,
    rename, fsync of the directory. ``OSError`` propagates; the temp file is removed then."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of ours from a crash (unlink never follows a symlink)
    fd = open_nofollow(tmp, what, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
