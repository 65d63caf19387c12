"""The guest's processes seen from outside (its memory) and from inside (its console), and their difference.

Outside, two views that do not depend on each other's data structure:

* ``list`` — the kernel's task list (``init_task.tasks``, what ``ps`` ultimately reads and what a
  rootkit unlinks a task from), walked from ``init_task``;
* ``pids`` — the PID namespace's ID radix tree (``init_pid_ns.idr``, an xarray), each ``struct pid``
  to its task (``pid.tasks[PIDTYPE_PID]`` -> ``task_struct.pid_links``): the process stays there to
  keep its PID, unlinked from the list or not.

Each ``Task`` has pid, comm, parent's pid, uid and start time (boot time, ns). Offsets come from the
image kernel's BTF (``enmei.visor.qemu.kernelinfo``), memory access from ``enmei.visor.qemu.guestmem``.
Both walks are bounded (``max_tasks`` entries, a visited set against loops); a wild pointer, a loop,
or a list that changes under the walk (``prev`` of a node not the node before it, three times in a
row) make the view ``inconclusive`` with that reason, never a partial list passed off as whole.

Inside: the guest prints what its own ``/proc`` says (``guest/specimens/psview.sh`` in the test image):
``enmei-ps: begin SEQ UPTIME``, one ``enmei-ps: PID COMM`` per process whose
``/proc/PID/stat`` it could read (as ``ps`` does), one ``enmei-ps: mod NAME`` per line of its
``/proc/modules`` (what ``lsmod`` reads) and ``enmei-ps: mods COUNT``, with ``enmei.fileview`` one
``enmei-ps: file PATH`` per entry of its ``ls -a`` of each watched directory and ``enmei-ps: files
COUNT`` (compared in ``crossview_files``), ``enmei-ps: end SEQ UPTIME``.
``InsideReader`` keeps the newest complete listing (modules compared in ``crossview_modules``).

``compare(inside, views)``: which processes are *hidden*: seen outside (in the list or the pid tree)
after the inside listing ended, started (guest boot time) before it began — so they lived all through
it — and missing from it. A process that started or exited around the listing is never counted (the
race of short-lived processes). Kernel threads are skipped (they do not hide).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from enmei.visor.qemu.guestmem import GuestMemory, MemoryReadError
from enmei.visor.qemu.kernelinfo import KernelInfo

__all__ = ["Difference", "InsideListing", "InsideReader", "OutsideView", "Task", "compare", "read_outside",
           "walk_list", "walk_pids"]

PF_KTHREAD = 0x00200000
_MAX_TASKS = 32768
_RETRIES = 3
_XA_CHUNK = 64


@dataclass(frozen=True, slots=True)
class Task:
    """One process as read from guest memory (``start_ns`` since boot, ``boottime``)."""

    pid: int
    tgid: int
    comm: str
    ppid: int
    uid: int
    start_ns: int
    kthread: bool
    address: int
    exit_state: int = 0

    @property
    def key(self) -> tuple[int, int]:
        """What identifies the process across views and re-checks: a pid is reused, (pid, start) is not."""
        return (self.pid, self.start_ns)

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "comm": self.comm, "ppid": self.ppid, "uid": self.uid,
                "start_s": round(self.start_ns / 1e9, 3), "kthread": self.kthread}


@dataclass(frozen=True)
class OutsideView:
    """A view of the guest's processes from its memory; ``reason`` says why it is inconclusive (else "")."""

    source: str  # "list" or "pids"
    tasks: Mapping[int, Task]
    reason: str = ""
    read_ms: float = 0.0
    uptime_s: float | None = None

    @property
    def conclusive(self) -> bool:
        return not self.reason


class _Walk:
    """Field readers over one guest's memory with one kernel's offsets."""

    def __init__(self, mem: GuestMemory, k: KernelInfo) -> None:
        self.mem = mem
        self.k = k
        assert mem.info is not None
        self.init_task = k.init_task + mem.info.kernel_offset
        self.o_tasks = k.off("task_struct.tasks")

    def task(self, addr: int) -> Task:
        k, m = self.k, self.mem
        raw = m.read(addr, k.sizes["task_struct"])

        def u(key: str, fmt: str = "<Q") -> int:
            value: int = struct.unpack_from(fmt, raw, k.off(key))[0]
            return value

        parent = u("task_struct.real_parent")
        ppid = m.u32(parent + k.off("task_struct.tgid")) if parent else 0
        cred = u("task_struct.real_cred")
        uid = m.u32(cred + k.off("cred.uid")) if cred else -1
        comm_at = k.off("task_struct.comm")
        comm = raw[comm_at:comm_at + k.comm_len].split(b"\0", 1)[0].decode("latin-1")
        return Task(pid=u("task_struct.pid", "<i"), tgid=u("task_struct.tgid", "<i"), comm=comm, ppid=ppid,
                    uid=uid, start_ns=u("task_struct.start_boottime"),
                    kthread=bool(u("task_struct.flags", "<I") & PF_KTHREAD), address=addr,
                    exit_state=u("task_struct.exit_state", "<i"))


def walk_list(mem: GuestMemory, k: KernelInfo, *, max_tasks: int = _MAX_TASKS) -> dict[int, Task]:
    """The processes on the task list, by pid. ``MemoryReadError`` for a wild pointer, a loop, a list
    that changed while read (``prev`` mismatch), or more than ``max_tasks`` entries."""
    w = _Walk(mem, k)
    head = w.init_task + w.o_tasks
    out: dict[int, Task] = {}
    seen: set[int] = {head}
    prev, node = head, mem.u64(head)
    while node != head:
        if node in seen:
            raise MemoryReadError(f"the task list loops at {node:#x} (not back to init_task)")
        if len(seen) > max_tasks:
            raise MemoryReadError(f"the task list has more than {max_tasks} entries")
        seen.add(node)
        if mem.u64(node + 8) != prev:
            raise MemoryReadError(f"the task list changed while read (prev of {node:#x} is not {prev:#x})")
        t = w.task(node - w.o_tasks)
        if not 0 < t.pid < 1 << 22:
            raise MemoryReadError(f"a task at {node - w.o_tasks:#x} has pid {t.pid}: not a task")
        out[t.pid] = t
        prev, node = node, mem.u64(node)
    return out


def walk_pids(mem: GuestMemory, k: KernelInfo, *, max_tasks: int = _MAX_TASKS) -> dict[int, Task]:
    """The processes (thread-group leaders) that hold a pid in the initial PID namespace, by pid, read from
    its ID radix tree (an xarray). ``MemoryReadError`` as ``walk_list``."""
    w = _Walk(mem, k)
    pid0 = mem.u64(w.init_task + k.off("task_struct.thread_pid"))  # init_struct_pid
    ns = mem.u64(pid0 + k.off("pid.numbers") + k.off("upid.ns"))  # &init_pid_ns
    root = ns + k.off("pid_namespace.idr") + k.off("idr.idr_rt") + k.off("xarray.xa_head")
    slots = int(k.extra.get("slots_per_node", 64))
    entries: list[int] = []
    nodes = 0

    def visit(entry: int, depth: int) -> None:
        nonlocal nodes
        if not entry:
            return
        if entry & 3 == 2:  # internal: a node above 4096, else a sibling / retry / zero entry
            if entry <= 4096 * 4 + 2:
                return
            nodes += 1
            if depth > 12 or nodes > max_tasks:
                raise MemoryReadError("the pid tree is deeper or larger than any real one")
            node = entry - 2
            raw = mem.read(node + k.off("xa_node.slots"), 8 * slots)
            for child in struct.unpack(f"<{slots}Q", raw):
                visit(child, depth + 1)
            return
        if entry & 3 == 0:
            entries.append(entry)
            if len(entries) > max_tasks:
                raise MemoryReadError(f"the pid tree has more than {max_tasks} entries")

    visit(mem.u64(root), 0)
    out: dict[int, Task] = {}
    for pid in entries:
        first = mem.u64(pid + k.off("pid.tasks"))  # tasks[PIDTYPE_PID].first
        if not first:
            continue  # a pid being freed: no task
        t = w.task(first - k.off("task_struct.pid_links"))
        if t.pid == t.tgid:
            out[t.pid] = t
    return out


def read_outside(mem: GuestMemory, k: KernelInfo, source: str = "list") -> OutsideView:
    """One outside view (``list`` or ``pids``), retried while the guest changes it under the walk; any
    failure gives an inconclusive view with the reason, never an exception."""
    walk = {"list": walk_list, "pids": walk_pids}[source]
    t0 = time.perf_counter()
    reason = ""
    for _ in range(_RETRIES):
        try:
            tasks = walk(mem, k)
        except MemoryReadError as exc:
            reason = str(exc)
            continue
        return OutsideView(source, tasks, read_ms=(time.perf_counter() - t0) * 1e3)
    return OutsideView(source, {}, reason=f"{source}: {reason}", read_ms=(time.perf_counter() - t0) * 1e3)


# -- inside ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InsideListing:
    """One complete listing the guest printed: ``begin_s``/``end_s`` its uptime around it."""

    seq: int
    begin_s: float
    end_s: float
    pids: Mapping[int, str]  # pid -> comm
    modules: frozenset[str] | None = None  # what its /proc/modules said; None: the listing had no modules part
    files: frozenset[str] | None = None  # what its ls said of the watched directories; None: no file part


@dataclass
class InsideReader:
    """Builds ``InsideListing`` s from console lines (``enmei-ps: ...``); a torn listing is dropped."""

    newest: InsideListing | None = None
    _seq: int | None = None
    _begin: float = 0.0
    _pids: dict[int, str] = field(default_factory=dict)
    _mods: list[str] = field(default_factory=list)
    _mods_done: bool = False
    _files: list[str] = field(default_factory=list)
    _files_done: bool = False

    def feed(self, lines: Iterable[str]) -> list[InsideListing]:
        """Take console lines; returns the listings they completed (in order)."""
        done: list[InsideListing] = []
        for line in lines:
            at = line.find("enmei-ps: ")
            if at < 0:
                continue
            parts = line[at + 10:].split()
            try:
                if parts[0] == "begin":
                    self._seq, self._begin, self._pids = int(parts[1]), float(parts[2]), {}
                    self._mods, self._mods_done = [], False
                    self._files, self._files_done = [], False
                elif parts[0] == "end":
                    if self._seq == int(parts[1]):
                        listing = InsideListing(self._seq, self._begin, float(parts[2]), dict(self._pids),
                                                frozenset(self._mods) if self._mods_done else None,
                                                frozenset(self._files) if self._files_done else None)
                        self.newest = listing
                        done.append(listing)
                    self._seq = None
                elif parts[0] == "mod" and self._seq is not None and len(self._mods) < _MAX_TASKS:
                    self._mods.append(parts[1])
                elif parts[0] == "file" and self._seq is not None and len(self._files) < _MAX_TASKS:
                    self._files.append(line[at + 10:].split(" ", 1)[1])
                elif parts[0] == "files" and self._seq is not None:
                    if int(parts[1]) != len(self._files):
                        raise ValueError("file count")
                    self._files_done = True
                elif parts[0] == "mods" and self._seq is not None:
                    if int(parts[1]) != len(self._mods):  # a module line lost: the listing is torn
                        raise ValueError("module count")
                    self._mods_done = True
                elif self._seq is not None and len(self._pids) < _MAX_TASKS:
                    self._pids[int(parts[0])] = " ".join(parts[1:]) or "?"
            except (IndexError, ValueError):
                self._seq = None  # a garbled line: this listing cannot be trusted whole
        return done


@dataclass(frozen=True)
class Difference:
    """What one comparison found: processes missing from the inside listing that lived all through it,
    and which outside view saw each (``hidden_from_list``: in the pid tree, not on the task list)."""

    hidden: tuple[Task, ...]
    hidden_from_list: tuple[Task, ...]
    reason: str = ""  # why no comparison could be made ("" when it was)

    @property
    def conclusive(self) -> bool:
        return not self.reason


def compare(inside: InsideListing, views: Iterable[OutsideView]) -> Difference:
    """The processes hidden from ``inside``, from outside ``views`` (``list`` and ``pids``) read *after*
    the listing ended: a process that started (guest boot time) before the listing began and is still
    there after it ended lived all through it, so a listing that does not show it was lied to. One
    that started or exited around the listing is never counted (the race of short-lived processes);
    kernel threads and exiting tasks neither. ``hidden_from_list``: in the pid tree but on no task list
    read (a kernel-level unlink; ``/proc`` still shows such a process, its readdir walks the pid tree).
    An inconclusive view makes the difference inconclusive."""
    vs = list(views)
    bad = [v.reason for v in vs if not v.conclusive]
    if bad or not vs:
        return Difference((), (), reason="; ".join(bad) or "no outside view after the listing")
    begin_ns = inside.begin_s * 1e9
    alive = {t.key: t for v in vs for t in v.tasks.values()
             if not t.kthread and not t.exit_state and t.start_ns < begin_ns}
    hidden = tuple(sorted((t for t in alive.values() if t.pid not in inside.pids), key=lambda t: t.pid))
    lists = [v for v in vs if v.source == "list"]
    on_list = {t.key for v in lists for t in v.tasks.values()}
    from_list = tuple(sorted((t for v in vs if v.source == "pids" for t in v.tasks.values()
                              if lists and not t.kthread and not t.exit_state and t.key not in on_list),
                             key=lambda t: t.pid))
    return Difference(hidden, from_list)
