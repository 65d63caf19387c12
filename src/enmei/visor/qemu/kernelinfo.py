"""What enmei must know of a guest kernel to read its processes from outside: offsets and anchors.

Everything comes from the exact kernel an image boots (``vmlinuz``), nothing is written down per
kernel version:

* the kernel ELF (``vmlinux``) is unpacked from the bzImage (its xz or gzip payload);
* struct offsets (``task_struct.tasks``, ``.pid``, ``.comm``, ``cred.uid``, ``pid.numbers``,
  ``xa_node.slots``, ``module.list`` ...) are read from its BTF type information (the ``.BTF``
  section, ``CONFIG_DEBUG_INFO_BTF``), parsed here: a few hundred lines of stdlib, no ``pahole`` or
  ``drgn`` at run time (see ``README``: they need a debug-info package of ~1 GB or a live kernel);
* the anchor ``init_task`` is located in the kernel's ``.data`` by what only it is: a
  ``task_struct`` whose ``real_parent`` and ``group_leader`` point to itself and whose ``comm`` is
  ``swapper``. Debian's ``System.map`` in the image package is a stub ("The real System.map is in the
  -dbg package"), so the symbol cannot come from there;
* the build ID (the ELF's GNU note) and the release (``linux_banner``): the guest's vmcoreinfo names
  its build ID, and a guest running another kernel is refused with ``KernelInfoError``.

``load(vmlinuz)`` caches the result per kernel (by the bzImage's sha256) in
``<cache>/kernels/SHA.json`` (format 1, written with ``os.replace``): the first load takes about 2 s
(decompression and BTF), later ones a millisecond.

Failures raise ``KernelInfoError`` naming the file and what is missing: not a bzImage, no BTF, a
struct or member that is absent, no ``init_task`` found (or more than one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import re
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.visor.qemu.errors import KernelInfoError

__all__ = ["FIELDS", "Btf", "KernelInfo", "derive", "extract_vmlinux", "load"]

_FORMAT = 2  # 2: the module fields (module.mkobj, module_kobject.mod) for the module views

#: The struct members read from guest memory: (struct, dotted member path) -> key ``struct.path``.
FIELDS: tuple[tuple[str, str], ...] = (
    ("task_struct", "tasks"), ("task_struct", "pid"), ("task_struct", "tgid"), ("task_struct", "comm"),
    ("task_struct", "real_parent"), ("task_struct", "group_leader"), ("task_struct", "real_cred"),
    ("task_struct", "start_time"), ("task_struct", "start_boottime"), ("task_struct", "flags"),
    ("task_struct", "exit_state"), ("task_struct", "mm"), ("task_struct", "thread_pid"),
    ("task_struct", "pid_links"),
    ("list_head", "next"), ("list_head", "prev"), ("hlist_node", "next"), ("hlist_head", "first"),
    ("cred", "uid"),
    ("pid", "level"), ("pid", "numbers"), ("pid", "tasks"), ("upid", "nr"), ("upid", "ns"),
    ("pid_namespace", "idr"), ("pid_namespace", "level"), ("idr", "idr_rt"), ("idr", "idr_base"),
    ("xarray", "xa_head"), ("xa_node", "shift"), ("xa_node", "slots"),
    ("module", "list"), ("module", "name"), ("module", "state"), ("module", "mkobj"),
    ("module_kobject", "mod"),
)
#: Structs whose size is needed.
SIZES = ("task_struct", "upid", "module", "pid")

# BTF kinds (include/uapi/linux/btf.h)
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT = range(1, 12)
_FUNC, _FUNC_PROTO, _VAR, _DATASEC, _FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = range(12, 20)
_MODIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)


@dataclass(frozen=True)
class KernelInfo:
    """The facts about one kernel that the outside view needs (plain values, JSON-ready).

    ``offsets[f"{struct}.{member}"]`` is a byte offset; ``sizes[struct]`` a size in bytes;
    ``init_task`` the link-time address of ``init_task`` (add the guest's KASLR offset).
    """

    build_id: str
    release: str
    init_task: int
    offsets: Mapping[str, int]
    sizes: Mapping[str, int]
    comm_len: int
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def off(self, key: str) -> int:
        """The offset named ``struct.member``; ``KernelInfoError`` if it was not derived."""
        try:
            return self.offsets[key]
        except KeyError:
            raise KernelInfoError(self.source or self.release, "offset", f"no offset {key!r} known") from None

    def to_json(self) -> dict[str, Any]:
        return {"format": _FORMAT, "build_id": self.build_id, "release": self.release,
                "init_task": self.init_task, "offsets": dict(self.offsets), "sizes": dict(self.sizes),
                "comm_len": self.comm_len, "source": self.source, "extra": dict(self.extra)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KernelInfo:
        if data.get("format") != _FORMAT:
            raise ValueError(f"kernel info format {data.get('format')!r}, not {_FORMAT}")
        return cls(build_id=str(data["build_id"]), release=str(data["release"]), init_task=int(data["init_task"]),
                   offsets={str(k): int(v) for k, v in data["offsets"].items()},
                   sizes={str(k): int(v) for k, v in data["sizes"].items()}, comm_len=int(data["comm_len"]),
                   source=str(data.get("source", "")), extra=dict(data.get("extra", {})))


def load(vmlinuz: Path, *, cache_dir: Path | None = None) -> KernelInfo:
    """The ``KernelInfo`` of the bzImage at ``vmlinuz``, from the cache or derived (then cached).

    ``cache_dir`` defaults to enmei's cache (``image.cache_root()``); an unreadable cache entry is
    derived again. Raises ``KernelInfoError`` (see the module docstring).
    """
    from enmei.visor.qemu.image import cache_root

    try:
        raw = vmlinuz.read_bytes()
    except OSError as exc:
        raise KernelInfoError(str(vmlinuz), "read", exc.strerror or str(exc)) from exc
    digest = hashlib.sha256(raw).hexdigest()
    folder = (cache_dir or cache_root()) / "kernels"
    entry = folder / f"{digest[:32]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return KernelInfo.from_json(json.loads(entry.read_text()))
    info = derive(extract_vmlinux(raw, str(vmlinuz)), str(vmlinuz))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info.to_json(), indent=1, sort_keys=True) + "\n")
    os.replace(tmp, entry)
    return info


def extract_vmlinux(bzimage: bytes, label: str = "vmlinuz") -> bytes:
    """The kernel ELF inside a bzImage (xz or gzip payload); an ELF given as is is returned as is."""
    if bzimage[:4] == b"\x7fELF":
        return bzimage
    for magic, unpack in ((b"\xfd7zXZ\x00", _unxz), (b"\x1f\x8b\x08\x00", _ungzip)):
        start = bzimage.find(magic)
        while start >= 0:
            with contextlib.suppress(lzma.LZMAError, zlib.error, EOFError):
                out = unpack(bzimage[start:])
                if out[:4] == b"\x7fELF":
                    return out
            start = bzimage.find(magic, start + 1)
    raise KernelInfoError(label, "unpack", "no xz or gzip compressed kernel ELF inside (is it a bzImage?)")


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _ungzip(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=31).decompress(data)  # stops at the stream's end: what follows is not ours


@dataclass(frozen=True)
class _Section:
    name: str
    addr: int
    offset: int
    size: int
    nobits: bool


def _sections(elf: bytes, label: str) -> dict[str, _Section]:
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise KernelInfoError(label, "elf", "not a 64-bit little-endian ELF")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    heads = []
    for i in range(shnum):
        name, kind, _flags, addr, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        heads.append((name, kind, addr, offset, size))
    strtab = heads[shstrndx]
    out: dict[str, _Section] = {}
    for name, kind, addr, offset, size in heads:
        start = strtab[3] + name
        text = elf[start:elf.index(b"\0", start)].decode("ascii", "replace")
        out[text] = _Section(text, addr, offset, size, kind == 8)
    return out


def derive(vmlinux: bytes, label: str = "vmlinux") -> KernelInfo:
    """``KernelInfo`` from a kernel ELF. ``KernelInfoError`` if a part is missing (see the module)."""
    secs = _sections(vmlinux, label)
    if ".BTF" not in secs:
        raise KernelInfoError(label, "btf", "the kernel has no .BTF section (built without CONFIG_DEBUG_INFO_BTF)")
    b = secs[".BTF"]
    btf = Btf(vmlinux[b.offset:b.offset + b.size], label)
    offsets: dict[str, int] = {}
    for st, member in FIELDS:
        offsets[f"{st}.{member}"] = btf.offset(st, member)
    offsets["cred.uid"] += btf.offset_in("kuid_t", "val")
    sizes = {st: btf.size(st) for st in SIZES}
    comm_len = btf.array_len("task_struct", "comm")
    build_id = _build_id(vmlinux, secs)
    release = _release(vmlinux, secs)
    init_task = _find_init_task(vmlinux, secs, offsets, label)
    return KernelInfo(build_id=build_id, release=release, init_task=init_task, offsets=offsets, sizes=sizes,
                      comm_len=comm_len, source=label,
                      extra={"slots_per_node": btf.array_len("xa_node", "slots"),
                             "module_name_len": btf.array_len("module", "name")})


def _build_id(elf: bytes, secs: Mapping[str, _Section]) -> str:
    notes = secs.get(".notes")
    if notes is None:
        return ""
    data = elf[notes.offset:notes.offset + notes.size]
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, kind = struct.unpack_from("<III", data, pos)
        name = data[pos + 12:pos + 12 + namesz]
        desc_at = pos + 12 + ((namesz + 3) & ~3)
        if kind == 3 and name.rstrip(b"\0") == b"GNU":
            return data[desc_at:desc_at + descsz].hex()
        pos = desc_at + ((descsz + 3) & ~3)
    return ""


def _release(elf: bytes, secs: Mapping[str, _Section]) -> str:
    ro = secs.get(".rodata")
    data = elf[ro.offset:ro.offset + ro.size] if ro else elf
    m = re.search(rb"Linux version (\S+) ", data)
    return m.group(1).decode("ascii", "replace") if m else ""


def _find_init_task(elf: bytes, secs: Mapping[str, _Section], off: Mapping[str, int], label: str) -> int:
    """The link address of ``init_task``: in ``.data``, a task named ``swapper`` that is its own parent."""
    data_sec = secs.get(".data")
    if data_sec is None:
        raise KernelInfoError(label, "init_task", "the kernel has no .data section")
    data = elf[data_sec.offset:data_sec.offset + data_sec.size]
    found: list[int] = []
    for m in re.finditer(rb"swapper\0", data):
        base = m.start() - off["task_struct.comm"]
        if base < 0 or base + off["task_struct.group_leader"] + 8 > len(data):
            continue
        va = data_sec.addr + base
        parent, = struct.unpack_from("<Q", data, base + off["task_struct.real_parent"])
        leader, = struct.unpack_from("<Q", data, base + off["task_struct.group_leader"])
        if parent == va and leader == va:
            found.append(va)
    if len(found) != 1:
        raise KernelInfoError(label, "init_task", f"expected one init_task in .data, found {len(found)}: "
                                                  "the kernel's layout is not one this reader knows")
    return found[0]


# -- BTF ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Type:
    kind: int
    name: str
    size_or_type: int
    members: tuple[tuple[str, int, int], ...] = ()  # (name, type id, byte offset) for structs/unions
    array: tuple[int, int] = (0, 0)  # (element type, count)


class Btf:
    """A parsed BTF blob (the kernel's type information): struct sizes, member offsets, array lengths.

    Raises ``KernelInfoError`` for a blob that is not BTF and for a struct or member it lacks.
    """

    def __init__(self, blob: bytes, label: str = "btf") -> None:
        self.label = label
        if len(blob) < 24 or struct.unpack_from("<H", blob, 0)[0] != 0xEB9F:
            raise KernelInfoError(label, "btf", "the .BTF section has no BTF magic")
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", blob, 4)
        strings = blob[hdr_len + str_off:hdr_len + str_off + str_len]
        self.types: list[_Type] = [_Type(0, "void", 0)]
        self.by_name: dict[tuple[int, str], int] = {}
        for t in self._parse(blob[hdr_len + type_off:hdr_len + type_off + type_len], strings):
            if t.name and (t.kind, t.name) not in self.by_name:
                self.by_name[(t.kind, t.name)] = len(self.types)
            self.types.append(t)

    @staticmethod
    def _name(strings: bytes, at: int) -> str:
        if at == 0:
            return ""
        return strings[at:strings.index(b"\0", at)].decode("ascii", "replace")

    def _parse(self, data: bytes, strings: bytes) -> Iterator[_Type]:
        pos = 0
        end = len(data)
        while pos + 12 <= end:
            name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kflag = info >> 31
            name = self._name(strings, name_off)
            if kind in (_STRUCT, _UNION):
                members = []
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                    bits = m_off & 0xFFFFFF if kflag else m_off
                    members.append((self._name(strings, m_name), m_type, bits // 8))
                pos += 12 * vlen
                yield _Type(kind, name, size_or_type, tuple(members))
                continue
            if kind == _ARRAY:
                elem, _index, nelems = struct.unpack_from("<III", data, pos)
                pos += 12
                yield _Type(kind, name, size_or_type, array=(elem, nelems))
                continue
            if kind in (_INT, _VAR, _DECL_TAG):
                pos += 4
            elif kind in (_ENUM, _FUNC_PROTO):
                pos += 8 * vlen
            elif kind in (_DATASEC, _ENUM64):
                pos += 12 * vlen
            elif kind not in (_PTR, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _FUNC, _FLOAT, _TYPE_TAG):
                raise KernelInfoError(self.label, "btf", f"unknown BTF kind {kind} at byte {pos - 12}")
            yield _Type(kind, name, size_or_type)

    def _resolve(self, tid: int) -> int:
        for _ in range(32):
            t = self.types[tid]
            if t.kind not in _MODIFIERS:
                return tid
            tid = t.size_or_type
        return tid

    def _struct(self, name: str) -> int:
        for kind in (_STRUCT, _UNION, _TYPEDEF):
            tid = self.by_name.get((kind, name))
            if tid is not None:
                tid = self._resolve(tid)
                if self.types[tid].kind in (_STRUCT, _UNION):
                    return tid
        raise KernelInfoError(self.label, "btf", f"the kernel has no struct {name}")

    def _member(self, tid: int, name: str) -> tuple[int, int] | None:
        """(byte offset, type id) of member ``name`` of struct ``tid``, looking inside anonymous members."""
        for m_name, m_type, m_off in self.types[tid].members:
            if m_name == name:
                return m_off, m_type
            if not m_name:
                inner = self._resolve(m_type)
                if self.types[inner].kind in (_STRUCT, _UNION):
                    found = self._member(inner, name)
                    if found is not None:
                        return m_off + found[0], found[1]
        return None

    def _walk(self, struct_name: str, path: str) -> tuple[int, int]:
        tid = self._struct(struct_name)
        total = 0
        for part in path.split("."):
            found = self._member(tid, part)
            if found is None:
                raise KernelInfoError(self.label, "btf", f"struct {struct_name} has no member {path!r}")
            total += found[0]
            tid = self._resolve(found[1])
        return total, tid

    def offset(self, struct_name: str, path: str) -> int:
        """The byte offset of ``path`` (``a.b.c``) in ``struct_name``."""
        return self._walk(struct_name, path)[0]

    def offset_in(self, type_name: str, member: str) -> int:
        """Like ``offset``, for a struct known by a typedef name (``kuid_t``)."""
        return self.offset(type_name, member)

    def size(self, struct_name: str) -> int:
        return self.types[self._struct(struct_name)].size_or_type

    def array_len(self, struct_name: str, path: str) -> int:
        _, tid = self._walk(struct_name, path)
        t = self.types[tid]
        if t.kind != _ARRAY:
            raise KernelInfoError(self.label, "btf", f"{struct_name}.{path} is not an array")
        return t.array[1]
