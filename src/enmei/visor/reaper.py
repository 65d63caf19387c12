"""enmei as a child subreaper: orphans of its units are reparented to it, and it reaps them.

Promises:

* ``become_subreaper`` sets ``PR_SET_CHILD_SUBREAPER`` on the calling process (``enmei up`` does, at its
  start): a process whose parent dies while it runs below enmei — a unit's double-forked daemon, the child
  of a unit killed with ``kill -9`` — is reparented to enmei instead of PID 1, which on a container may
  never reap it (a zombie for ever). Returns False, with a warning, where the kernel refuses.
* ``Orphans.reap`` waits for the zombies among enmei's children that are *orphans of units*: in a cgroup
  below the supervisor's own tree (also one already removed: a zombie keeps its path, "(deleted)"), not
  the main process of a unit enmei tracks, and a zombie at two calls in a row. The last rule leaves
  alone a child that enmei spawned itself into a unit's cgroup (an exec probe) and whose owner reaps it
  at once; enmei's other children (the policy sandbox, alert and helper commands, QEMU) are in enmei's
  own cgroup and never touched, so no owner's ``wait`` ever loses its exit status to this reaper.
* Without a cgroup tree (no writable cgroup v2) orphans cannot be told from enmei's own children once
  they are zombies (their environment is gone): they are reparented to enmei but not reaped by this
  module.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["Orphans", "become_subreaper", "is_subreaper"]

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


def _prctl(option: int, arg: int | ctypes.c_int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    arg2 = ctypes.byref(arg) if isinstance(arg, ctypes.c_int) else ctypes.c_ulong(arg)
    return int(libc.prctl(option, arg2, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)))


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants. False (and a warning) if refused."""
    try:
        ok = _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0
    except (OSError, AttributeError) as exc:  # no libc prctl: not Linux
        log.warning("cannot become a child subreaper (%s): orphans of units go to PID 1", exc)
        return False
    if not ok:
        log.warning("cannot become a child subreaper (%s): orphans of units go to PID 1",
                    os.strerror(ctypes.get_errno()))
    return ok


def is_subreaper() -> bool:
    """Whether this process is a child subreaper."""
    flag = ctypes.c_int(0)
    try:
        return _prctl(_PR_GET_CHILD_SUBREAPER, flag) == 0 and flag.value != 0
    except (OSError, AttributeError):
        return False


def _children() -> list[int]:
    """This process's children (of all its threads: a reparented orphan may belong to any of them)."""
    out: list[int] = []
    for f in Path("/proc/self/task").glob("*/children"):
        try:
            out.extend(int(p) for p in f.read_text().split())
        except (OSError, ValueError):
            continue
    return out


def _zombie_cgroup(pid: int) -> str | None:
    """The cgroup v2 path of ``pid`` if it is a zombie (without a " (deleted)" suffix), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2:].split(" ", 1)[0] != "Z":
            return None
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:].removesuffix(" (deleted)")
    except (OSError, ValueError):
        return None
    return None


class Orphans:
    """Reaps the orphans of the units below one cgroup tree (``root``: its path in the v2 hierarchy, as
    ``/proc/PID/cgroup`` shows it, e.g. ``/enmei-<instance>``)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self._seen: set[int] = set()  # zombies seen at the last call, not yet reaped
        self.reaped: list[tuple[int, int | None, int | None]] = []  # (pid, code, signal), newest last, bounded

    def reap(self, keep: Iterable[int]) -> list[tuple[int, int | None, int | None]]:
        """Reap the orphans (see the module); returns (pid, exit code, signal) of each one reaped now."""
        kept = set(keep)
        now: set[int] = set()
        done: list[tuple[int, int | None, int | None]] = []
        for pid in _children():
            if pid in kept:
                continue
            path = _zombie_cgroup(pid)
            # Only the units' cgroups: enmei's own leaf (``supervisor``) and the helper cage hold its own
            # children, whose owners reap them.
            if path is None or not path.startswith(self.root + "/unit-"):
                continue
            if pid not in self._seen:
                now.add(pid)  # the first sight: its owner, if enmei itself spawned it, reaps it by the next
                continue
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue  # reaped by its owner meanwhile
            if got == pid:
                code = os.waitstatus_to_exitcode(status)
                done.append((pid, code if code >= 0 else None, -code if code < 0 else None))
        self._seen = now
        self.reaped = (self.reaped + done)[-100:]
        return done
