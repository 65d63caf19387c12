"""Who a process unit runs as: its ``user``, ``group``, supplementary ``groups`` and ``umask``.

Promises:

* ``resolve`` turns the names (or numbers) of a unit's config into numbers once, or raises
  ``LookupError`` naming the key (``user``, ``group``, ``groups``) and what is missing: ``enmei check``
  reports it at the key's line, and a start fails with it instead of running as someone else.
* A ``user`` without ``group`` runs with that user's primary group; without ``groups`` with that user's
  supplementary groups from the group database (never enmei's own: a unit dropped to ``nobody`` must not
  keep root's groups). A numeric uid with no passwd entry needs ``group``.
* ``launcher_prefix`` is how the launcher drops to it *after* joining the unit's cgroup (which needs
  enmei's rights): ``setpriv`` (util-linux) with the exact uid, gid and groups, then the command — same pid.
  ``popen_kwargs`` gives the same identity to helper commands (``pre_start``, ``stop_command``), which
  join no cgroup.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from dataclasses import dataclass
from typing import Any

__all__ = ["RunAs", "launcher_prefix", "parse_umask", "popen_kwargs", "resolve"]


@dataclass(frozen=True)
class RunAs:
    """The identity a unit's processes get; ``None`` fields are inherited from enmei."""

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None  # None: unchanged (no user, group or groups given)
    umask: int | None = None

    @property
    def changes_ids(self) -> bool:
        return self.uid is not None or self.gid is not None or self.groups is not None


def parse_umask(v: Any) -> int:
    """A umask given as an octal string (``"027"``, ``"0o027"``) or a number (TOML ``0o027``); ``ValueError``
    otherwise or past 0o777."""
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a umask")
    if isinstance(v, int):
        mask = v
    elif isinstance(v, str):
        text = v.strip().lower().removeprefix("0o")
        try:
            mask = int(text, 8)
        except ValueError:
            raise ValueError(f"{v!r} is not an octal umask (e.g. \"027\")") from None
    else:
        raise ValueError(f"{v!r} is not a umask")
    if not 0 <= mask <= 0o777:
        raise ValueError(f"umask {v!r} is past 0o777")
    return mask


def _user(name: str) -> tuple[int, pwd.struct_passwd | None]:
    if name.isdigit():
        uid = int(name)
        try:
            return uid, pwd.getpwuid(uid)
        except KeyError:
            return uid, None
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise LookupError("user", f"no such user {name!r}") from None
    return entry.pw_uid, entry


def _group(key: str, name: str) -> int:
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise LookupError(key, f"no such group {name!r}") from None


def resolve(user: str | None, group: str | None, groups: list[str] | None, umask: int | None) -> RunAs:
    """The numbers for a unit's identity. ``LookupError(key, message)`` for a missing user or group."""
    uid: int | None = None
    gid: int | None = None
    extra: tuple[int, ...] | None = None
    entry: pwd.struct_passwd | None = None
    if user is not None:
        uid, entry = _user(user)
    if group is not None:
        gid = _group("group", group)
    elif entry is not None:
        gid = entry.pw_gid
    elif uid is not None:
        raise LookupError("user", f"uid {uid} has no passwd entry: give its `group` too")
    if groups is not None:
        extra = tuple(_group("groups", g) for g in groups)
    elif entry is not None and gid is not None:
        extra = tuple(os.getgrouplist(entry.pw_name, gid))
    elif uid is not None or gid is not None:
        extra = ()  # a bare uid or a group alone: no supplementary groups (not enmei's)
    return RunAs(uid, gid, extra, umask)


def launcher_prefix(run_as: RunAs) -> list[str]:
    """The argv that execs the rest of the command line as ``run_as`` (empty: nothing to change).
    ``FileNotFoundError`` if ``setpriv`` is missing."""
    if not run_as.changes_ids:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise FileNotFoundError("setpriv (util-linux) is needed to run a unit as another user or group")
    out = [setpriv]
    if run_as.gid is not None:
        out.append(f"--regid={run_as.gid}")
    if run_as.groups is not None:
        out.append(f"--groups={','.join(map(str, run_as.groups))}" if run_as.groups else "--clear-groups")
    if run_as.uid is not None:
        out.append(f"--reuid={run_as.uid}")
    return [*out, "--"]


def popen_kwargs(run_as: RunAs) -> dict[str, Any]:
    """``subprocess.Popen`` keyword arguments that give a helper command the same identity."""
    out: dict[str, Any] = {}
    if run_as.uid is not None:
        out["user"] = run_as.uid
    if run_as.gid is not None:
        out["group"] = run_as.gid
    if run_as.groups is not None:
        out["extra_groups"] = list(run_as.groups)
    if run_as.umask is not None:
        out["umask"] = run_as.umask
    return out
