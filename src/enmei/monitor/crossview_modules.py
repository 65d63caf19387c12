"""The guest's kernel modules seen from outside (its memory) and the difference with its own ``/proc/modules``.

Outside, two views that do not depend on each other's data structure:

* ``list`` — the kernel's module list (``modules``, what ``/proc/modules`` and ``lsmod`` read, and what
  a rootkit unlinks itself from), walked from its head;
* ``scan`` — every ``struct module`` in the modules area (``MODULES_VADDR`` .. ``MODULES_END``, where
  the kernel allocates each module's core), found by what only a live one is: its
  ``mkobj.mod`` points back to itself, its ``state`` is a module state and its ``name`` a module name.
  A module that unlinked itself from the list stays there as long as it is loaded.

The list head (the kernel's ``modules``, a symbol Debian's stub ``System.map`` does not give) is found
from the scan: the one node of a listed module's ring that lies outside the modules area, in the kernel
image. Its address is kept for the boot (``ModuleReader``), so an empty list is still read from it.

Both reads are bounded (pages scanned, ring length); a wild pointer, a loop, a ring that does not
come back, or two different heads make the view inconclusive with that reason.

``compare_modules(inside, views)``: modules in memory (state ``LIVE`` or ``COMING``) that the guest's
listing lacks (``how = "proc"``), and ones the scan found that are on no list (``how = "list"``).
Modules being unloaded (``GOING``) or not yet formed (``UNFORMED``) are never counted: they leave or
join the list around such moments, legitimately. A module loaded during the listing shows up as a
suspect once; the detector wants a suspect to persist.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from enmei.visor.qemu.guestmem import START_KERNEL_MAP, GuestMemory, MemoryReadError
from enmei.visor.qemu.kernelinfo import KernelInfo

__all__ = ["MODULES_END", "MODULES_VADDR", "Module", "ModuleDifference", "ModuleReader", "ModuleView",
           "compare_modules"]

#: x86-64 with CONFIG_RANDOMIZE_BASE (Debian's kernels): the kernel image has 1 GiB, modules follow it.
MODULES_VADDR = START_KERNEL_MAP + (1 << 30)
MODULES_END = 0xFFFFFFFFFF000000
LIVE, COMING, GOING, UNFORMED = range(4)
_STATES = {LIVE: "live", COMING: "coming", GOING: "going", UNFORMED: "unformed"}
_NAME = re.compile(rb"[A-Za-z0-9_-]{1,55}")
_MAX_MODULES = 4096
_MAX_PAGES = 65536  # 256 MiB of module memory
_RETRIES = 3


@dataclass(frozen=True, slots=True)
class Module:
    """One ``struct module`` read from guest memory."""

    name: str
    address: int
    state: int

    @property
    def key(self) -> str:
        """Name and address: a module loaded again is a new one."""
        return f"{self.name}@{self.address:#x}"

    @property
    def counted(self) -> bool:
        return self.state in (LIVE, COMING)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "address": f"{self.address:#x}", "state": _STATES.get(self.state, "?")}


@dataclass(frozen=True)
class ModuleView:
    """One view of the guest's modules (``source``: ``list`` or ``scan``), by address; ``reason`` says why
    it is inconclusive (else "")."""

    source: str
    modules: Mapping[int, Module]
    reason: str = ""
    read_ms: float = 0.0

    @property
    def conclusive(self) -> bool:
        return not self.reason


class ModuleReader:
    """Reads both module views of one guest boot; keeps the list head once found (``head``)."""

    def __init__(self, k: KernelInfo, *, max_modules: int = _MAX_MODULES, max_pages: int = _MAX_PAGES) -> None:
        self.k = k
        self.max_modules = max_modules
        self.max_pages = max_pages
        self.head: int | None = None
        self._boot: object = None
        self.o_list = k.off("module.list")
        self.o_name = k.off("module.name")
        self.o_state = k.off("module.state")
        self.o_self = k.off("module.mkobj") + k.off("module_kobject.mod")
        self.name_len = int(k.extra.get("module_name_len", 56))

    def module(self, mem: GuestMemory, addr: int) -> Module | None:
        """The module at ``addr``, or None if what is there is not one (see the module docstring)."""
        try:
            if mem.u64(addr + self.o_self) != addr:
                return None
            state = mem.u32(addr + self.o_state)
            raw = mem.read(addr + self.o_name, self.name_len)
        except MemoryReadError:
            return None
        name = raw.split(b"\0", 1)[0]
        if state not in _STATES or not _NAME.fullmatch(name):
            return None
        return Module(name.decode("ascii"), addr, state)

    def scan(self, mem: GuestMemory) -> dict[int, Module]:
        """Every module in the modules area, by address. ``MemoryReadError`` if it cannot be walked."""
        pages = mem.mapped(MODULES_VADDR, MODULES_END, max_pages=self.max_pages)
        found: dict[int, Module] = {}
        want = -self.o_self  # a qword at ``at`` that holds ``at - o_self`` is a candidate ``mkobj.mod``
        for page in pages:
            try:
                words = struct.unpack("<512Q", mem.read(page, 4096))
            except MemoryReadError:
                continue  # unmapped since the walk (a module freed meanwhile)
            for i, value in enumerate(words):
                if value - (page + 8 * i) == want:
                    m = self.module(mem, value)
                    if m is not None:
                        found[m.address] = m
                        if len(found) > self.max_modules:
                            raise MemoryReadError(f"more than {self.max_modules} modules in memory")
        return found

    def _find_head(self, mem: GuestMemory, scanned: Mapping[int, Module]) -> int | None:
        """The list head, from the rings of scanned modules; None if no scanned module is on a list."""
        heads: set[int] = set()
        for m in scanned.values():
            node = m.address + self.o_list
            for _ in range(self.max_modules + 1):
                node = mem.u64(node)
                if node == m.address + self.o_list:
                    break  # a ring without a head: unlinked with list_del_init (it points at itself)
                if START_KERNEL_MAP <= node < MODULES_VADDR:
                    heads.add(node)
                    break
                if not MODULES_VADDR <= node < MODULES_END:
                    break  # poisoned (list_del) or wild: this one is on no list
            if len(heads) > 1:
                raise MemoryReadError(f"modules link to two list heads ({', '.join(hex(h) for h in heads)})")
        return heads.pop() if heads else None

    def walk(self, mem: GuestMemory, head: int) -> dict[int, Module]:
        """The modules on the list from ``head``, by address. ``MemoryReadError`` for a loop, a wild or
        foreign node, a ring that changed while read (``prev`` mismatch), or too many entries."""
        out: dict[int, Module] = {}
        seen = {head}
        prev, node = head, mem.u64(head)
        while node != head:
            if node in seen:
                raise MemoryReadError(f"the module list loops at {node:#x} (not back to its head)")
            if len(seen) > self.max_modules:
                raise MemoryReadError(f"the module list has more than {self.max_modules} entries")
            seen.add(node)
            if mem.u64(node + 8) != prev:
                raise MemoryReadError(f"the module list changed while read (prev of {node:#x} is not {prev:#x})")
            m = self.module(mem, node - self.o_list)
            if m is None:
                raise MemoryReadError(f"the module list holds {node - self.o_list:#x}, which is not a module")
            out[m.address] = m
            prev, node = node, mem.u64(node)
        return out

    def read(self, mem: GuestMemory) -> tuple[ModuleView, ModuleView]:
        """Both views (``list``, ``scan``), retried while the guest changes them under the read; any
        failure gives inconclusive views with the reason, never an exception."""
        if self._boot != mem.info:
            self._boot, self.head = mem.info, None  # another boot: its head may be elsewhere (KASLR)
        t0 = time.perf_counter()
        reason = ""
        for _ in range(_RETRIES):
            try:
                scanned = self.scan(mem)
                t1 = time.perf_counter()
                if self.head is None:
                    self.head = self._find_head(mem, scanned)
                listed = self.walk(mem, self.head) if self.head is not None else {}
            except MemoryReadError as exc:
                reason = str(exc)
                continue
            t2 = time.perf_counter()
            return (ModuleView("list", listed, read_ms=(t2 - t1) * 1e3),
                    ModuleView("scan", scanned, read_ms=(t1 - t0) * 1e3))
        ms = (time.perf_counter() - t0) * 1e3
        return (ModuleView("list", {}, reason=f"modules: {reason}", read_ms=ms),
                ModuleView("scan", {}, reason=f"modules: {reason}", read_ms=ms))


@dataclass(frozen=True)
class ModuleDifference:
    """Modules in memory missing from the guest's listing (``hidden``), and those of them the scan found
    on no list (``hidden_from_list``)."""

    hidden: tuple[Module, ...]
    hidden_from_list: tuple[Module, ...]
    reason: str = ""

    @property
    def conclusive(self) -> bool:
        return not self.reason


def compare_modules(inside: Iterable[str] | None, views: Iterable[ModuleView]) -> ModuleDifference:
    """The modules hidden from the guest's own listing ``inside`` (names; None: it listed none, then only
    the list-vs-scan difference is made), from outside ``views`` read after it. An inconclusive view makes
    the difference inconclusive."""
    vs = list(views)
    bad = [v.reason for v in vs if not v.conclusive]
    if bad or not vs:
        return ModuleDifference((), (), reason="; ".join(dict.fromkeys(bad)) or "no module view")
    alive = {m.address: m for v in vs for m in v.modules.values() if m.counted}
    names = set(inside) if inside is not None else None
    hidden = tuple(sorted((m for m in alive.values() if names is not None and m.name not in names),
                          key=lambda m: m.name))
    listed = {a for v in vs if v.source == "list" for a in v.modules}
    have_list = any(v.source == "list" for v in vs)
    from_list = tuple(sorted((m for v in vs if v.source == "scan" for m in v.modules.values()
                              if have_list and m.counted and m.address not in listed), key=lambda m: m.name))
    return ModuleDifference(hidden, from_list)
