"""The Resource Cage: per-unit limits (``cpu_max``, ``memory_max``, ``pids_max``) and a cage for enmei's own
helper processes, in cgroups enmei creates beneath the cgroup it runs in — never in one it did not create.

Where a limit goes (decided once per supervisor, per resource):

* **cgroup v2 with the controller** (pure v2 under systemd with ``Delegate=``): enmei enables the controller
  in ``cgroup.subtree_control`` of its own subtree ``enmei-<instance>`` (never above it) and writes
  ``cpu.max`` / ``memory.max`` / ``pids.max`` into the unit's v2 cgroup (``enmei.visor.cgroup``). A
  controller reaches that subtree only if the cgroup enmei runs in passes it on; enmei never changes
  that cgroup itself.
* **cgroup v1** (the hybrid layout: v2 for tracking, controllers in v1): ``<mount><own cgroup>/enmei-<instance>/
  unit-<name>`` in the ``cpu`` (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), ``pids`` (``pids.max``)
  and ``memory`` (``memory.limit_in_bytes``) hierarchies — beneath the cgroup enmei is in there, which
  in the ``memory`` hierarchy may be one enmei did not create (it is only read, never written).
* **neither** (no controller, or not writable: not root, no delegation): a notice naming the key and why
  (``notices``), journaled with the unit's first start and shown by ``enmei check``; the unit runs
  without that limit.

A unit's processes join its v1 groups through the same launcher that joins its v2 cgroup, before the
command runs (``procs_files``); the groups are removed once the unit's processes are gone (``release``).
An out-of-memory kill is counted by the kernel (``oom_kill`` in v1 ``memory.oom_control`` / v2
``memory.events``): ``oom_kills`` lets the backend report an exit as ``reason = "oom"``.

The helper cage ``enmei-<instance>/cage`` holds enmei's heavy work in subprocesses — the policy sandbox
worker, exec probes, ``pre_start`` and ``stop_command`` commands — with a CPU weight twice a unit's
(v1 ``cpu.shares`` 2048 of 1024, v2 ``cpu.weight`` 200 of 100) as a floor, a CPU quota of half the
machine's CPUs (at least one) as a ceiling, and ``pids.max`` 512: busy units cannot push the helpers (an
exec probe) below their weight, and runaway helpers can neither take more than half the machine from the
units nor fork without bound. Only processes are caged: the
engine's event loop thread (where detectors score) stays in enmei's own cgroup, so the units' load can
never slow supervision through a cage quota.

Nothing here raises for a missing or unwritable controller: that is a notice. ``CgroupError`` is raised
only by ``release`` when processes are still left in a unit's group after its timeout.

>>> parse_v1_own("8:pids:/\\n4:memory:/process_api/x\\n1:cpu,cpuacct:/a\\n0::/\\n")
{'pids': '/', 'memory': '/process_api/x', 'cpu': '/a', 'cpuacct': '/a'}
>>> parse_v1_mounts("39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\\n")
{'pids': ('/sys/fs/cgroup/pids', '/')}
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from enmei.visor.cgroup import (
    SUPERVISOR_LEAF,
    Cgroup,
    CgroupError,
    CgroupTree,
    parse_cgroup2_mount,
    parse_own_cgroup,
)

__all__ = ["CPU_PERIOD_US", "HELPER_PIDS_MAX", "HelperCage", "Limits", "ResourceCage", "UnitCage", "balance_v1_cpu",
           "caged_argv", "current_cage", "current_cage_owner", "enter_cage", "host_support", "install_cage",
           "join_thread", "limit_notices", "parse_v1_mounts", "parse_v1_own", "standalone_cage",
           "unit_group"]

log = logging.getLogger(__name__)

CPU_PERIOD_US = 100_000  # the CFS period for a quota: 0.1 s, the kernel's default
HELPER_PIDS_MAX = 512  # processes and threads of all helpers together
# Twice a unit's weight (v1: 1024 per task of a unit without cpu_max, v2: 100 per unit cgroup): a floor the
# units' load cannot push the helpers below; the quota (half the CPUs) is the ceiling they never pass.
_HELPER_SHARES_V1 = 2048
_HELPER_WEIGHT_V2 = 200
_RESOURCES = {"cpu_max": ("cpu", "cpu"), "memory_max": ("memory", "memory"), "pids_max": ("pids", "pids")}
_RELEASE_WAIT_S = 3.0  # a group whose processes just died may refuse rmdir for a moment


_SLOTS = (None, "b")  # a unit's instance, and the handover's second one beside it (``enmei.visor.handover``)


def unit_group(unit: str, slot: str | None = None) -> str:
    """The name of ``unit``'s v1 limit group in each hierarchy: ``unit-NAME``, and ``unit-NAME@b`` for a
    handover's instance in slot ``b`` (``@`` is not allowed in unit names: no unit's group is another's)."""
    return f"unit-{unit}" if slot in (None, "a") else f"unit-{unit}@{slot}"


def balance_v1_cpu(base: Path) -> None:
    """Give ``enmei-<instance>`` in the v1 cpu hierarchy the sum of its children's ``cpu.shares``.

    A v1 group competes with its siblings — here the tasks of units without cpu_max, which stay in enmei's
    own cgroup at 1024 each — with its own weight, and its children only split that. Left at the default
    1024, the helper cage inside it weighed as much as one task of a unit, not two (CI measured 0.12 CPU in
    the cage beside 0.13 outside it, seven busy processes on one CPU). The sum keeps each child's weight as
    if it stood beside those tasks: the cage's 2048, each unit group's 1024. A failure leaves the old value
    (the helpers lose their floor, nothing else changes) and is logged."""
    total = 0
    with contextlib.suppress(OSError):
        for child in base.iterdir():
            if child.is_dir():
                with contextlib.suppress(OSError, ValueError):
                    total += int((child / "cpu.shares").read_text())
    try:
        _write(base / "cpu.shares", str(max(total, 2) if total else 1024))
    except CgroupError as exc:
        log.warning("resource cage: cannot weigh %s: %s", base, exc)


def parse_v1_own(text: str) -> dict[str, str]:
    """Controller -> cgroup path of a ``/proc/<pid>/cgroup`` text's v1 lines (named hierarchies left out)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3 or parts[0] == "0" or not parts[1]:
            continue
        for ctrl in parts[1].split(","):
            if ctrl and not ctrl.startswith("name="):
                out[ctrl] = parts[2].strip() or "/"
    return out


def parse_v1_mounts(text: str) -> dict[str, tuple[str, str]]:
    """Controller -> (mount point, mount root) of the cgroup v1 mounts in a ``/proc/self/mountinfo`` text."""
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        rfields = right.split()
        if not sep or len(rfields) < 3 or rfields[0] != "cgroup":
            continue
        fields = left.split()
        if len(fields) < 5:
            continue
        for opt in rfields[2].split(","):
            if opt in ("cpu", "cpuacct", "memory", "pids", "cpuset", "blkio", "freezer", "devices"):
                out.setdefault(opt, (fields[4].replace("\\040", " "), fields[3]))
    return out


def host_support(proc: Path = Path("/proc/self")) -> dict[str, str | None]:
    """Controller (cpu, memory, pids) -> None if a supervisor started like this process could limit it,
    else why not. Read-only (``enmei check``): it creates nothing and enables nothing."""
    try:
        cgroup_text = (proc / "cgroup").read_text()
        mountinfo = (proc / "mountinfo").read_text()
    except OSError as exc:
        return dict.fromkeys(("cpu", "memory", "pids"), f"cannot read this process's cgroups: {exc.strerror}")
    v2_mount, v2_own = parse_cgroup2_mount(mountinfo), parse_own_cgroup(cgroup_text)
    own, mounts = parse_v1_own(cgroup_text), parse_v1_mounts(mountinfo)
    out: dict[str, str | None] = {}
    for ctrl in ("cpu", "memory", "pids"):
        why = f"no {ctrl} controller (neither in cgroup v2 for enmei's cgroup nor mounted as cgroup v1)"
        if v2_mount is not None and v2_own is not None:
            base = Path(v2_mount) / v2_own.lstrip("/")
            # Passed on already, or delegated: enmei then moves into its tree's leaf and passes it on.
            usable = _words(base / "cgroup.subtree_control") | _words(base / "cgroup.controllers")
            if ctrl in usable and os.access(base, os.W_OK):
                out[ctrl] = None
                continue
            if ctrl in usable:
                why = f"cgroup v2 offers {ctrl} to {v2_own}, which is not writable (not delegated to this user)"
        if ctrl in mounts and ctrl in own:
            mount, root = mounts[ctrl]
            mine = own[ctrl][len(root):] if root != "/" and own[ctrl].startswith(root) else own[ctrl]
            where = Path(mount) / mine.lstrip("/")
            if where.is_dir() and os.access(where, os.W_OK):
                out[ctrl] = None
                continue
            why = f"the cgroup v1 {ctrl} group {where} is not writable (not root, or not delegated)"
        out[ctrl] = why
    return out


def limit_notices(units: Mapping[str, Any], proc: Path = Path("/proc/self")) -> list[tuple[str, str, str]]:
    """(unit, key, why) for each limit a unit asks for that this host cannot apply (``host_support``)."""
    support: dict[str, str | None] | None = None
    out = []
    for name, spec in units.items():
        for key in Limits.of(spec).asked():
            if support is None:
                support = host_support(proc)
            why = support[_RESOURCES[key][0]]
            if why is not None:
                out.append((name, key, f"{key} will not be applied: {why}; the unit runs without it"))
    return out


def _words(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        return set()


@dataclass(frozen=True)
class Limits:
    """A unit's limits: CPUs (0.5 = half of one), bytes, processes; None: not limited."""

    cpu_max: float | None = None
    memory_max: int | None = None
    pids_max: int | None = None

    @classmethod
    def of(cls, spec: Any) -> Limits:
        """The limits a unit's config asks for (a config without the keys asks for none)."""
        mem = getattr(spec, "memory_max", None)
        return cls(getattr(spec, "cpu_max", None), int(mem) if mem is not None else None,
                   getattr(spec, "pids_max", None))

    def asked(self) -> dict[str, float | int]:
        return {k: v for k, v in (("cpu_max", self.cpu_max), ("memory_max", self.memory_max),
                                  ("pids_max", self.pids_max)) if v is not None}


def _v1_values(key: str, value: float | int) -> list[tuple[str, str]]:
    if key == "cpu_max":
        return [("cpu.cfs_period_us", str(CPU_PERIOD_US)),
                ("cpu.cfs_quota_us", str(max(1000, round(float(value) * CPU_PERIOD_US))))]
    if key == "memory_max":
        # With swap too (memsw, where swap accounting is on): past memory_max the kernel OOM-kills, it does
        # not swap. memsw may never be below the limit: lifted first, set after.
        return [("memory.memsw.limit_in_bytes?", "-1"), ("memory.limit_in_bytes", str(int(value))),
                ("memory.memsw.limit_in_bytes?", str(int(value)))]
    return [("pids.max", str(int(value)))]


def _v2_values(key: str, value: float | int) -> list[tuple[str, str]]:
    if key == "cpu_max":
        return [("cpu.max", f"{max(1000, round(float(value) * CPU_PERIOD_US))} {CPU_PERIOD_US}")]
    if key == "memory_max":
        return [("memory.max", str(int(value))), ("memory.swap.max?", "0")]  # OOM at the limit, never swap
    return [("pids.max", str(int(value)))]


def _write_all(group: Path, values: list[tuple[str, str]]) -> None:
    """Write each (file, value); a file whose name ends in ``?`` is written only if the kernel has it."""
    for spelled, text in values:
        name = spelled.rstrip("?")
        if spelled.endswith("?") and not (group / name).exists():
            continue
        _write(group / name, text)


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise CgroupError(path.parent, f"write {path.name}", exc.strerror or str(exc)) from exc


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        raise CgroupError(path, "create", exc.strerror or str(exc)) from exc
    if not (path / "cgroup.procs").exists():
        raise CgroupError(path, "create", "not a cgroup directory (no cgroup.procs)")


def _rmdir(path: Path, wait_s: float) -> None:
    """rmdir a cgroup (v1 or v2); a group whose last tasks are still exiting is retried up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                why = "processes are left in it" if exc.errno == errno.EBUSY else (exc.strerror or str(exc))
                raise CgroupError(path, "remove", why) from exc
        time.sleep(0.05)


def _procs(path: Path) -> list[int]:
    try:
        return [int(x) for x in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


@dataclass
class UnitCage:
    """What was set up for one start of a unit: the v1 groups its processes join, what was applied, and
    the notices for what could not be (each ``"key: why"``)."""

    unit: str
    v1: dict[str, Path] = field(default_factory=dict)  # controller -> the unit's group
    v2: Path | None = None  # the unit's v2 cgroup, when a limit was written there
    applied: dict[str, float | int] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    oom_base: int = 0

    def procs_files(self) -> list[Path]:
        """The v1 ``cgroup.procs`` files the unit's launcher joins (before its command runs)."""
        return [p / "cgroup.procs" for p in self.v1.values()]

    def oom_kills(self) -> int:
        """How many processes of the unit the kernel OOM-killed in its memory group (0 if none is known)."""
        files = []
        if "memory" in self.v1:
            files.append((self.v1["memory"] / "memory.oom_control", "oom_kill"))
        if self.v2 is not None:
            files.append((self.v2 / "memory.events", "oom_kill"))
        total = 0
        for path, key in files:
            with contextlib.suppress(OSError, ValueError):
                for line in path.read_text().splitlines():
                    name, _, value = line.partition(" ")
                    if name == key:
                        total += int(value)
        return total

    def oomed(self) -> bool:
        """Whether the kernel OOM-killed a process of this unit since it started."""
        return self.oom_kills() > self.oom_base

    def join(self, pid: int) -> list[str]:
        """Move ``pid`` into every v1 group it is not in yet (the launcher normally did it); the groups it
        could not join."""
        failed = []
        for ctrl, path in self.v1.items():
            if pid in _procs(path):
                continue
            try:
                _write(path / "cgroup.procs", str(pid))
            except CgroupError:
                failed.append(ctrl)
        return failed


class ResourceCage:
    """One supervisor's cage: where each resource can be limited, the units' groups, the helper cage.

    ``tree`` is the supervisor's cgroup v2 tree (or None without one), or a callable giving it when it is
    first needed; ``proc`` the /proc entry to read its own cgroups from (a test may give another)."""

    def __init__(self, instance: str, tree: CgroupTree | Callable[[], CgroupTree | None] | None, *,
                 proc: Path = Path("/proc/self"), cpu_count: int | None = None) -> None:
        self.instance = instance
        self._tree_source = tree
        self.tree: CgroupTree | None = None
        self.proc = proc
        self.cpu_count = cpu_count or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._known = False
        self.v2: set[str] = set()  # controllers enabled in the v2 tree
        self.v1: dict[str, Path] = {}  # controller -> enmei-<instance> in its v1 hierarchy (made)
        self.missing: dict[str, str] = {}  # controller -> why it cannot be used
        self._helpers: HelperCage | None = None

    # -- what this host offers -----------------------------------------------------------------

    def discover(self) -> None:
        """Find, once, where cpu, memory and pids can be limited (enabling v2 controllers in enmei's own
        subtree, making ``enmei-<instance>`` in v1 hierarchies); never raises."""
        with self._lock:
            if self._known:
                return
            self._known = True
            source = self._tree_source
            self.tree = source() if callable(source) else source
            if self.tree is not None:
                self._enable_v2()
            try:
                own = parse_v1_own((self.proc / "cgroup").read_text())
                mounts = parse_v1_mounts((self.proc / "mountinfo").read_text())
            except OSError as exc:
                own, mounts = {}, {}
                log.debug("cannot read this process's cgroups: %s", exc)
            for ctrl in ("cpu", "memory", "pids"):
                if ctrl in self.v2:
                    continue
                where = self._v1_base(ctrl, own, mounts)
                if isinstance(where, Path):
                    self.v1[ctrl] = where
                else:
                    self.missing[ctrl] = where

    def _enable_v2(self) -> None:
        assert self.tree is not None
        root = self.tree.root
        offered = _words(root / "cgroup.controllers")
        delegated = _words(root.parent / "cgroup.controllers") & ({"cpu", "memory", "pids"} - offered)
        if delegated:
            # Delegated to the cgroup enmei runs in (systemd Delegate=) but not passed on: a cgroup with
            # processes cannot pass controllers on, so enmei moves into a leaf of its own tree first.
            why = self._leave_own_cgroup(root, delegated)
            if why is None:
                offered = _words(root / "cgroup.controllers")
            else:
                for ctrl in delegated:
                    self.missing[ctrl] = why
        for ctrl in ("cpu", "memory", "pids"):
            if ctrl not in offered:
                continue
            try:
                _write(root / "cgroup.subtree_control", f"+{ctrl}")
                self.v2.add(ctrl)
            except CgroupError as exc:
                self.missing[ctrl] = f"cgroup v2 offers {ctrl} but it cannot be enabled in {root}: {exc.cause}"

    def _leave_own_cgroup(self, root: Path, ctrls: set[str]) -> str | None:
        """Move this process (and its own children still there) from the cgroup it runs in into
        ``<tree>/supervisor``, then enable ``ctrls`` in that cgroup's ``subtree_control``: the systemd
        delegation model (the delegated cgroup is enmei's to organise). Refused — a reason returned, nothing
        moved — when a process enmei did not start is in that cgroup, or enmei already runs in such a leaf."""
        own = root.parent
        if own.name == SUPERVISOR_LEAF and own.parent.name.startswith("enmei-"):
            return (f"cgroup v2 offers {', '.join(sorted(ctrls))} to {own}, the leaf of another enmei tree, which "
                    "cannot pass it on")
        me = os.getpid()
        ours: list[int] = []
        others: list[int] = []
        for pid in _procs(own):
            if pid == me:
                continue
            try:
                mine = me in (p.pid for p in psutil.Process(pid).parents())
            except psutil.Error:
                continue  # gone meanwhile
            (ours if mine else others).append(pid)
        if others:
            return (f"cgroup v2 offers {', '.join(sorted(ctrls))} to {own}, but processes enmei did not start are "
                    f"in it too (pids {others[:5]}): run enmei alone in its cgroup (a systemd service with "
                    "Delegate=yes) so it can pass them on")
        leaf = root / SUPERVISOR_LEAF
        try:
            _mkdir(leaf)
            for pid in (me, *ours):
                with contextlib.suppress(CgroupError):  # a child that ended meanwhile
                    _write(leaf / "cgroup.procs", str(pid))
            if me not in _procs(leaf):
                return f"enmei could not move into {leaf}"
            for ctrl in sorted(ctrls):
                _write(own / "cgroup.subtree_control", f"+{ctrl}")
        except CgroupError as exc:
            return f"cgroup v2 offers {', '.join(sorted(ctrls))} to {own} but it cannot be passed on: {exc}"
        log.info("resource cage: enmei moved into %s and passes %s on from %s", leaf, ", ".join(sorted(ctrls)), own)
        return None

    def _v1_base(self, ctrl: str, own: dict[str, str], mounts: dict[str, tuple[str, str]]) -> Path | str:
        """Where enmei's ``enmei-<instance>`` group in ``ctrl``'s v1 hierarchy goes (made when a limit or the
        helper cage first needs it: a hierarchy nothing is limited in is never written), or why there is none."""
        if ctrl not in mounts:
            return self.missing.get(ctrl) or f"no {ctrl} controller (not in cgroup v2 for enmei's tree, no v1 mount)"
        mount, root = mounts[ctrl]
        mine = own.get(ctrl)
        if mine is None:
            return f"this process is in no {ctrl} cgroup"
        if root != "/" and mine.startswith(root):
            mine = mine[len(root):] or "/"
        if ".." in mine.split("/"):
            return f"unsafe {ctrl} cgroup path {mine!r}"
        base = Path(mount) / mine.lstrip("/") / f"enmei-{self.instance}"
        if not base.is_dir() and not (base.parent.is_dir() and os.access(base.parent, os.W_OK)):
            return f"cannot create {base}: {base.parent} is not writable"
        return base

    def notice_for(self, key: str) -> str | None:
        """Why ``key`` (cpu_max, memory_max, pids_max) cannot be applied on this host, or None if it can."""
        self.discover()
        ctrl = _RESOURCES[key][0]
        if ctrl in self.v2 or ctrl in self.v1:
            return None
        return f"{key} is not applied: {self.missing.get(ctrl, 'no ' + ctrl + ' controller')}"

    def support(self) -> dict[str, str]:
        """Resource -> where it is limited ("cgroup v2", "cgroup v1 PATH") or why not ("none: ...")."""
        self.discover()
        out: dict[str, str] = {}
        for key, (ctrl, _) in _RESOURCES.items():
            if ctrl in self.v2:
                out[key] = "cgroup v2"
            elif ctrl in self.v1:
                out[key] = f"cgroup v1 {self.v1[ctrl]}"
            else:
                out[key] = f"none: {self.missing.get(ctrl, '')}"
        return out

    # -- units ------------------------------------------------------------------------------------

    def for_unit(self, unit: str, limits: Limits, v2: Cgroup | None, *, slot: str | None = None) -> UnitCage:
        """Set ``limits`` up for one start of ``unit`` (its v2 cgroup ``v2`` if it has one); what cannot be
        applied is a notice, never an error. Call before the unit's command is started. ``slot``: the
        handover's other instance, limited like the first in groups of its own (``unit_group``), so the two
        side by side never share one instance's limits."""
        self.discover()
        cage = UnitCage(unit)
        for key, value in limits.asked().items():
            ctrl = _RESOURCES[key][0]
            try:
                if ctrl in self.v2 and v2 is not None:
                    _write_all(v2.path, _v2_values(key, value))
                    cage.v2 = v2.path
                elif ctrl in self.v1:
                    group = self.v1[ctrl] / unit_group(unit, slot)
                    _mkdir(self.v1[ctrl])
                    _mkdir(group)
                    _write_all(group, _v1_values(key, value))
                    cage.v1[ctrl] = group
                    if ctrl == "cpu":
                        balance_v1_cpu(self.v1[ctrl])
                else:
                    why = self.missing.get(ctrl, f"no {ctrl} controller")
                    if ctrl in self.v2:
                        why = "the unit has no cgroup v2 of its own"
                    cage.notices.append(f"{key} is not applied: {why}")
                    continue
                cage.applied[key] = value
            except CgroupError as exc:
                cage.notices.append(f"{key} is not applied: {exc}")
        cage.oom_base = cage.oom_kills()
        return cage

    def adopted(self, unit: str, pid: int) -> UnitCage:
        """The groups an adopted unit's main process ``pid`` is in (a previous enmei of this state dir
        made them), so its OOM kills are seen and the groups removed after it."""
        self.discover()
        cage = UnitCage(unit)
        for ctrl, base in self.v1.items():
            for slot in _SLOTS:
                group = base / unit_group(unit, slot)
                if pid in _procs(group):
                    cage.v1[ctrl] = group
        cage.oom_base = cage.oom_kills()
        return cage

    def release(self, cage: UnitCage, *, wait_s: float = _RELEASE_WAIT_S) -> None:
        """Remove the unit's v1 groups (its processes have ended); blocking, up to ``wait_s`` each.
        ``CgroupError`` if one still holds processes then (it is kept, the rest are removed)."""
        failed: CgroupError | None = None
        for path in cage.v1.values():
            try:
                _rmdir(path, wait_s)
            except CgroupError as exc:
                failed = exc
        if "cpu" in cage.v1:
            balance_v1_cpu(cage.v1["cpu"].parent)
        if failed is not None:
            raise failed

    def release_name(self, unit: str, *, wait_s: float = _RELEASE_WAIT_S) -> None:
        """Remove ``unit``'s v1 groups if they exist and are empty (a unit adopted, or left by a crash)."""
        self.discover()
        for ctrl, base in self.v1.items():
            for slot in _SLOTS:
                with contextlib.suppress(CgroupError):
                    _rmdir(base / unit_group(unit, slot), wait_s)
            if ctrl == "cpu" and base.is_dir():
                balance_v1_cpu(base)

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def helpers(self) -> HelperCage:
        """The helper cage (made on first use)."""
        self.discover()
        with self._lock:
            if self._helpers is None:
                self._helpers = HelperCage.make(self)
            return self._helpers

    def remove(self) -> None:
        """Remove the helper cage and every empty group and ``enmei-<instance>`` in the v1 hierarchies."""
        with self._lock:
            helpers, self._helpers = self._helpers, None
        if helpers is not None:
            helpers.remove()
        for base in self.v1.values():
            with contextlib.suppress(OSError):
                for child in base.iterdir():
                    if child.is_dir():
                        with contextlib.suppress(CgroupError):
                            _rmdir(child, 0.5)
            with contextlib.suppress(CgroupError):
                _rmdir(base, 0.5)


@dataclass
class HelperCage:
    """The cgroups enmei's helper processes join: ``enmei-<instance>/cage`` in each v1 hierarchy with cpu
    or pids, and in the v2 tree when v2 has those controllers. ``procs_files`` empty: no cage here."""

    groups: list[Path] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    has_v2: bool = False  # one of the groups is a v2 cgroup (a process is in one v2 cgroup only)
    cpu_v1: Path | None = None  # its v1 cpu group (threads may join it)

    @classmethod
    def make(cls, owner: ResourceCage) -> HelperCage:
        out = cls()
        quota = max(1.0, owner.cpu_count / 2)
        if owner.tree is not None and owner.v2 & {"cpu", "pids"}:
            path = owner.tree.root / "cage"
            try:
                _mkdir(path)
                if "cpu" in owner.v2:
                    _write(path / "cpu.weight", str(_HELPER_WEIGHT_V2))
                    _write(path / "cpu.max", f"{round(quota * CPU_PERIOD_US)} {CPU_PERIOD_US}")
                if "pids" in owner.v2:
                    _write(path / "pids.max", str(HELPER_PIDS_MAX))
                out.groups.append(path)
                out.has_v2 = True
            except CgroupError as exc:
                out.notices.append(f"no helper cage in cgroup v2: {exc}")
        for ctrl in ("cpu", "pids"):
            base = owner.v1.get(ctrl)
            if base is None:
                continue
            path = base / "cage"
            try:
                _mkdir(base)
                _mkdir(path)
                if ctrl == "cpu":
                    _write(path / "cpu.shares", str(_HELPER_SHARES_V1))
                    _write(path / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                    _write(path / "cpu.cfs_quota_us", str(round(quota * CPU_PERIOD_US)))
                    out.cpu_v1 = path
                    balance_v1_cpu(base)
                else:
                    _write(path / "pids.max", str(HELPER_PIDS_MAX))
                out.groups.append(path)
            except CgroupError as exc:
                out.notices.append(f"no helper cage in the v1 {ctrl} hierarchy: {exc}")
        for n in out.notices:
            log.warning("%s", n)
        return out

    def procs_files(self) -> list[Path]:
        return [g / "cgroup.procs" for g in self.groups]

    def argv(self, command: list[str], *, tracking: Path | None = None) -> list[str]:
        """``command`` started through ``/bin/sh`` that joins the cage (and ``tracking``, a unit's v2
        cgroup.procs, where the cage has no v2 group of its own) before it execs ``command``; ``command``
        unchanged where there is no cage and nothing to track."""
        files = self.procs_files()
        if tracking is not None and not self.has_v2:
            files = [tracking, *files]
        if not files:
            return list(command)
        return ["/bin/sh", "-c", JOIN_SCRIPT, "enmei-cage", "\n".join(map(str, files)), *command]

    def enter(self, pid: int) -> None:
        """Move ``pid`` into the cage where it is not yet (a helper started as another user, whose launcher
        could not write to the cage); a process already gone is fine."""
        for group in self.groups:
            if pid in _procs(group):
                continue
            with contextlib.suppress(CgroupError):
                _write(group / "cgroup.procs", str(pid))

    def remove(self) -> None:
        for group in self.groups:
            with contextlib.suppress(CgroupError):
                _rmdir(group, 1.0)


# $1: the cgroup.procs files to join, one a line ("-": none); a join that fails is repaired by the parent.
JOIN_SCRIPT = ('if [ "$1" != - ]; then set -f; _ifs=$IFS; IFS=\'\n\'; '
               'for _c in $1; do { echo 0 >"$_c"; } 2>/dev/null; done; IFS=$_ifs; set +f; fi; shift; exec "$@"')

_installed: list[ResourceCage] = []  # this process's supervisor's cage (at most one)


def install_cage(cage: ResourceCage | None) -> None:
    """Make ``cage`` the one this process's helpers (policy sandbox, exec probes) join; None: no cage."""
    _installed[:] = [cage] if cage is not None else []


def current_cage_owner() -> ResourceCage | None:
    return _installed[0] if _installed else None


def current_cage() -> HelperCage | None:
    """The helper cage of this process's supervisor, if one was installed and has groups."""
    cage = current_cage_owner()
    if cage is None:
        return None
    helpers = cage.helpers
    return helpers if helpers.groups else None


def caged_argv(command: list[str], *, tracking: Path | None = None) -> list[str]:
    """``command`` as it joins the helper cage before it runs (``HelperCage.argv``); unchanged without a
    cage (or, with ``tracking`` and no cage, joining only ``tracking``)."""
    helpers = current_cage()
    if helpers is None:
        return list(command) if tracking is None else HelperCage().argv(command, tracking=tracking)
    return helpers.argv(command, tracking=tracking)


def enter_cage(pid: int) -> bool:
    """Move helper process ``pid`` into the helper cage where its launcher could not, or that was made
    after it started; whether there was a cage to join."""
    if current_cage_owner() is None:
        return False
    helpers = current_cage()
    if helpers is not None:
        helpers.enter(pid)
    return True


def join_thread() -> bool:
    """Move the calling thread (only it) into the helper cage's v1 ``cpu`` group — v1 takes thread ids in
    ``tasks``; cgroup v2 would need a threaded subtree enmei's own cgroup cannot have, so there threads
    stay where they are. For a worker thread's initializer (the policy evaluation thread); never for the
    event loop's. Whether it moved."""
    helpers = current_cage()
    if helpers is None or helpers.cpu_v1 is None:
        return False
    try:
        _write(helpers.cpu_v1 / "tasks", str(threading.get_native_id()))
    except CgroupError as exc:
        log.debug("thread not caged: %s", exc)
        return False
    return True


@contextlib.contextmanager
def standalone_cage(instance: str) -> Iterator[ResourceCage]:
    """A helper cage for a command that runs without a supervisor (``enmei image build``): installed for
    the block, removed after it (with its cgroup v2 tree, if one was made)."""
    tree = CgroupTree.discover(instance)
    cage = ResourceCage(instance, tree)
    before = current_cage_owner()
    install_cage(cage)
    try:
        yield cage
    finally:
        install_cage(before)
        cage.remove()
        if tree is not None:
            tree.remove()
