"""The registry of the kit's daemons: each daemon's module registers its ``Daemon`` subclass by kind.

::

    register(Nginx)                        # in enmei/daemons/nginx.py
    d = prepare("nginx")                   # a temp dir, a free port, the conf written
    try: ... finally: d.cleanup()

``register`` refuses a kind that is already registered (``ValueError``): two modules never silently
replace each other's daemon.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import TypeVar

from enmei.daemons.base import Daemon, DaemonError, free_port, make_root

__all__ = ["kinds", "prepare", "register"]

D = TypeVar("D", bound=type[Daemon])
_KINDS: dict[str, type[Daemon]] = {}


def register(cls: D) -> D:
    """Make ``cls`` preparable as ``prepare(cls.kind)`` (usable as a class decorator)."""
    if cls.kind in _KINDS:
        raise ValueError(f"a daemon {cls.kind!r} is already registered")
    _KINDS[cls.kind] = cls
    return cls


def kinds() -> tuple[str, ...]:
    """The kinds registered, in the order their modules registered them."""
    return tuple(_KINDS)


def prepare(kind: str, parent: Path | None = None, *, port: int | None = None) -> Daemon:
    """A ``kind`` daemon prepared in a new directory beneath ``parent`` (default: the temp dir) for
    127.0.0.1:``port`` (default: a free one). Its binary is looked up first (``MissingDaemonError``
    naming the Debian package); on any failure the directory made is removed again. ``DaemonError`` for
    an unknown kind."""
    cls = _KINDS.get(kind)
    if cls is None:
        raise DaemonError(kind, f"no such daemon in the kit (known: {', '.join(_KINDS) or 'none'})")
    binaries = cls.binaries()  # before any directory is made: a missing package is said first
    root = make_root(kind, parent)
    try:
        return cls.create(root, port if port is not None else free_port(), binaries)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(root)
        raise
