"""Guest memory read from outside: the shared RAM file mapped read-only, kernel addresses translated.

A VM unit with ``ram = "shared"`` keeps its guest's RAM in a file in ``/dev/shm`` (``enmei.visor.qemu.ram``).
``GuestMemory.open(path)`` maps it ``PROT_READ`` (the monitor can never write the guest), and reads
guest *physical* addresses (the ``pc`` machine's layout: RAM from 0 up to the low-memory limit, the rest
from 4 GiB on).

Kernel *virtual* addresses are translated by walking the guest kernel's own page tables from
``init_top_pgt`` (4-level paging), with each mapping cached at its page size (the direct map is 1 GiB
or 2 MiB pages: a handful of entries cover it). Where those tables are, and the KASLR offset, come from
the guest's vmcoreinfo note (``OSRELEASE=...``, ``BUILD-ID=``, ``SYMBOL(init_top_pgt)``,
``NUMBER(phys_base)``, ``KERNELOFFSET``), which the kernel writes into its memory at boot: found by one
``mmap.find`` over the RAM (about 40 ms for 256 MiB here, once per boot; ``locate`` keeps its place
and re-checks it is still there). This works the same with ``nokaslr`` and with KASLR.

Nothing here trusts the guest: every read is bounded, an address outside RAM or unmapped raises
``MemoryReadError`` (a plain exception of this module, never an ``EnmeiError``: callers turn it into an
"inconclusive" with its reason), and a vmcoreinfo that names another build ID than the image's kernel
raises ``KernelInfoError`` ("kernel symbols do not match").
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from enmei.visor.qemu.errors import KernelInfoError

__all__ = ["GuestMemory", "MemoryReadError", "VmcoreInfo", "parse_vmcoreinfo"]

START_KERNEL_MAP = 0xFFFFFFFF80000000
_FOUR_GIB = 1 << 32
_PRESENT = 1
_HUGE = 1 << 7
_ADDR_MASK = 0x000FFFFFFFFFF000
_MAX_READ = 1 << 20
_VMCOREINFO_MAX = 16384


class MemoryReadError(Exception):
    """A guest address could not be read: outside RAM, not mapped, or the RAM file is gone."""


@dataclass(frozen=True)
class VmcoreInfo:
    """The facts of the guest's vmcoreinfo note that translation needs, and where it was found."""

    release: str
    build_id: str
    kernel_offset: int
    phys_base: int
    init_top_pgt: int
    l5: bool
    at: int  # the guest physical address of the note's text

    @property
    def pgd_phys(self) -> int:
        return self.init_top_pgt - START_KERNEL_MAP + self.phys_base


def parse_vmcoreinfo(text: str, at: int = 0) -> VmcoreInfo:
    """The ``VmcoreInfo`` in a vmcoreinfo note's text; ``ValueError`` naming what is missing.

    >>> v = parse_vmcoreinfo("OSRELEASE=6.1\\nBUILD-ID=ab\\nSYMBOL(init_top_pgt)=ffffffff82a10000\\n"
    ...                      "NUMBER(phys_base)=0\\nKERNELOFFSET=0\\nNUMBER(pgtable_l5_enabled)=0\\n")
    >>> hex(v.pgd_phys)
    '0x2a10000'
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value.strip()
    try:
        return VmcoreInfo(release=fields["OSRELEASE"], build_id=fields.get("BUILD-ID", ""),
                          kernel_offset=int(fields.get("KERNELOFFSET", "0"), 16),
                          phys_base=int(fields["NUMBER(phys_base)"]),  # printed with %ld
                          init_top_pgt=int(fields["SYMBOL(init_top_pgt)"], 16),
                          l5=fields.get("NUMBER(pgtable_l5_enabled)", "0") == "1", at=at)
    except KeyError as exc:
        raise ValueError(f"vmcoreinfo has no {exc.args[0]}") from None


class GuestMemory:
    """Read-only access to one guest's RAM file. ``close`` (or ``with``) unmaps it."""

    def __init__(self, data: mmap.mmap | bytes, *, label: str = "guest") -> None:
        self._map = data
        self.label = label
        self.size = len(data)
        # the pc machine: RAM below 4 GiB up to lowmem (3 GiB when the guest has 3.5 GiB or more), the
        # rest from 4 GiB
        self.lowmem = 0xC0000000 if self.size >= 0xE0000000 else self.size
        self.info: VmcoreInfo | None = None
        self._tlb: dict[tuple[int, int], int] = {}
        self.reads = 0

    @classmethod
    def open(cls, path: Path, *, label: str = "guest") -> GuestMemory:
        """Map ``path`` read-only. ``MemoryReadError`` if it cannot be opened or is empty."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise MemoryReadError(f"cannot open the guest RAM file {path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise MemoryReadError(f"the guest RAM file {path} is empty")
            m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        except (OSError, ValueError) as exc:
            raise MemoryReadError(f"cannot map the guest RAM file {path}: {exc}") from exc
        finally:
            os.close(fd)
        return cls(m, label=label)

    def close(self) -> None:
        if isinstance(self._map, mmap.mmap):
            with contextlib.suppress(BufferError, ValueError):
                self._map.close()

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- physical ---------------------------------------------------------------------------------

    def _file_offset(self, phys: int) -> int:
        if 0 <= phys < self.lowmem:
            return phys
        if phys >= _FOUR_GIB and phys - _FOUR_GIB < self.size - self.lowmem:
            return self.lowmem + phys - _FOUR_GIB
        raise MemoryReadError(f"guest physical address {phys:#x} is outside its RAM")

    def read_phys(self, phys: int, n: int) -> bytes:
        """``n`` bytes at guest physical ``phys`` (not across the low-memory limit)."""
        if not 0 < n <= _MAX_READ:
            raise MemoryReadError(f"a read of {n} bytes is refused")
        start = self._file_offset(phys)
        end = self._file_offset(phys + n - 1) + 1
        if end - start != n:
            raise MemoryReadError(f"a read at {phys:#x} crosses a hole in guest RAM")
        self.reads += 1
        try:
            return bytes(self._map[start:end])
        except (ValueError, OSError) as exc:  # unmapped under us, or a truncated file (SIGBUS is not caught)
            raise MemoryReadError(f"the guest RAM could not be read at {phys:#x}: {exc}") from exc

    # -- vmcoreinfo -------------------------------------------------------------------------------

    def locate(self, *, release: str = "", build_id: str = "") -> VmcoreInfo:
        """Find the guest's vmcoreinfo (or re-check that it is where it was, unchanged: then no scan, and
        the translation cache is kept; else the cache is reset).

        ``release`` narrows the search to the image's kernel (and is faster). If ``build_id`` is given
        and the guest's differs: ``KernelInfoError`` (the guest runs another kernel than the image's).
        ``MemoryReadError`` if there is no vmcoreinfo (not booted yet, or a kernel without it).
        """
        needle = b"OSRELEASE=" + release.encode() + (b"\n" if release else b"")
        if self.info is not None:  # still where it was (the same boot): no scan
            with contextlib.suppress(ValueError, UnicodeDecodeError, IndexError):
                raw = bytes(self._map[self.info.at:self.info.at + _VMCOREINFO_MAX]).split(b"\0", 1)[0]
                if parse_vmcoreinfo(raw.decode("ascii"), self.info.at) == self.info:
                    return self.info
        candidates: list[int] = []
        pos = self._map.find(needle)
        while pos >= 0 and len(candidates) < 8:
            candidates.append(pos)
            pos = self._map.find(needle, pos + 1)
        for at in candidates:
            try:
                raw = bytes(self._map[at:at + _VMCOREINFO_MAX]).split(b"\0", 1)[0]
                info = parse_vmcoreinfo(raw.decode("ascii"), at)
            except (ValueError, UnicodeDecodeError, IndexError):
                continue  # the format string in the kernel's .rodata, or a torn copy
            if release and info.release != release:
                continue
            if build_id and info.build_id and info.build_id != build_id:
                raise KernelInfoError(self.label, "match",
                                      f"the guest runs build {info.build_id} of {info.release}, but the image's "
                                      f"kernel is build {build_id}: kernel symbols do not match")
            if info.l5:
                raise KernelInfoError(self.label, "match", "the guest uses 5-level paging, which this reader "
                                                           "does not translate")
            self.info = info
            self._tlb.clear()
            return info
        raise MemoryReadError("no vmcoreinfo in guest memory (the kernel has not booted yet, or has none)")

    # -- virtual ----------------------------------------------------------------------------------

    def translate(self, va: int) -> int:
        """The guest physical address of kernel virtual ``va``; ``MemoryReadError`` if unmapped."""
        if self.info is None:
            raise MemoryReadError("translate before locate")
        for shift in (30, 21, 12):
            base = self._tlb.get((shift, va >> shift))
            if base is not None:
                return base + (va & ((1 << shift) - 1))
        table = self.info.pgd_phys
        for level, shift in enumerate((39, 30, 21, 12)):
            entry: int = struct.unpack("<Q", self.read_phys(table + ((va >> shift) & 0x1FF) * 8, 8))[0]
            if not entry & _PRESENT:
                raise MemoryReadError(f"kernel address {va:#x} is not mapped")
            frame = entry & _ADDR_MASK
            if shift == 12 or (level in (1, 2) and entry & _HUGE):
                base = frame & ~((1 << shift) - 1)
                if len(self._tlb) > 65536:  # bounded: a guest that maps much keeps costing walks, not memory
                    self._tlb.clear()
                self._tlb[(shift, va >> shift)] = base
                return base + (va & ((1 << shift) - 1))
            table = frame
        raise MemoryReadError(f"kernel address {va:#x}: page walk did not end")  # pragma: no cover

    def mapped(self, start: int, end: int, *, max_pages: int = 65536) -> list[int]:
        """The kernel virtual addresses of the 4 KiB pages mapped in ``[start, end)`` (both 4 KiB
        aligned), in order, found by walking the guest's page tables (a huge page counts as its 4 KiB
        pages). ``MemoryReadError`` past ``max_pages`` pages or for a table outside RAM: a guest that maps
        more than that is not walked whole, and says so."""
        if self.info is None:
            raise MemoryReadError("mapped before locate")
        out: list[int] = []

        def walk(table: int, level: int, base: int) -> None:
            shift = (39, 30, 21, 12)[level]
            span = 1 << shift
            raw = self.read_phys(table, 4096)
            for i, entry in enumerate(struct.unpack("<512Q", raw)):
                va = base + i * span
                if level == 0:  # sign-extend the top-level index into a canonical address
                    va = (va | 0xFFFF000000000000) if i >= 256 else va
                if va + span <= start or va >= end or not entry & _PRESENT:
                    continue
                if shift == 12 or (level in (1, 2) and entry & _HUGE):
                    first, last = max(va, start), min(va + span, end)
                    if len(out) + (last - first) // 4096 > max_pages:
                        raise MemoryReadError(f"more than {max_pages} pages are mapped in "
                                              f"{start:#x}-{end:#x}")
                    out.extend(range(first, last, 4096))
                    continue
                walk(entry & _ADDR_MASK, level + 1, va)

        walk(self.info.pgd_phys, 0, 0)
        return out

    def read(self, va: int, n: int) -> bytes:
        """``n`` bytes at kernel virtual ``va`` (split at page boundaries as needed)."""
        out = bytearray()
        while n > 0:
            chunk = min(n, 4096 - (va & 0xFFF))
            out += self.read_phys(self.translate(va), chunk)
            va += chunk
            n -= chunk
        return bytes(out)

    def u64(self, va: int) -> int:
        value: int = struct.unpack("<Q", self.read(va, 8))[0]
        return value

    def u32(self, va: int) -> int:
        value: int = struct.unpack("<I", self.read(va, 4))[0]
        return value

    def cstr(self, va: int, n: int) -> str:
        raw = self.read(va, n).split(b"\0", 1)[0]
        return re.sub(r"[^\x20-\x7e]", "?", raw.decode("latin-1"))
