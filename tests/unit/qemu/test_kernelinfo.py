"""kernelinfo: BTF parsed, init_task found by what it is, build ID and release read, errors that name the part."""

from __future__ import annotations

import gzip
import struct
from collections import defaultdict
from pathlib import Path

import pytest

from enmei.visor.qemu import kernelinfo
from enmei.visor.qemu.errors import KernelInfoError

DATA_VA = 0xFFFFFFFF82A00000


class BtfBuilder:
    """A small BTF blob: ints, pointers, arrays, structs, typedefs (ids from 1)."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types: list[bytes] = []

    def _s(self, name: str) -> int:
        if not name:
            return 0
        at = len(self.strings)
        self.strings += name.encode() + b"\0"
        return at

    def _add(self, raw: bytes) -> int:
        self.types.append(raw)
        return len(self.types)

    def int(self, name: str, size: int) -> int:
        return self._add(struct.pack("<IIII", self._s(name), 1 << 24, size, size * 8))

    def ptr(self, target: int) -> int:
        return self._add(struct.pack("<III", 0, 2 << 24, target))

    def array(self, elem: int, n: int, index: int) -> int:
        return self._add(struct.pack("<IIIIII", 0, 3 << 24, 0, elem, index, n))

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], union: bool = False) -> int:
        head = struct.pack("<III", self._s(name), ((5 if union else 4) << 24) | len(members), size)
        body = b"".join(struct.pack("<III", self._s(m), t, off * 8) for m, t, off in members)
        return self._add(head + body)

    def typedef(self, name: str, target: int) -> int:
        return self._add(struct.pack("<III", self._s(name), 8 << 24, target))

    def blob(self) -> bytes:
        types = b"".join(self.types)
        hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return hdr + types + bytes(self.strings)


def kernel_btf() -> tuple[bytes, dict[str, int]]:
    """BTF with every struct kernelinfo reads; task_struct's pid sits in an anonymous struct."""
    b = BtfBuilder()
    u8, u32, u64 = b.int("u8", 1), b.int("unsigned int", 4), b.int("long unsigned int", 8)
    char = b.int("char", 1)
    vp = b.ptr(0)
    by_struct: dict[str, list[str]] = defaultdict(list)
    for st, member in kernelinfo.FIELDS:
        by_struct[st].append(member)
    expected: dict[str, int] = {}
    kuid = b.typedef("kuid_t", b.struct("", 4, [("val", u32, 0)]))
    for st, members in by_struct.items():
        fields: list[tuple[str, int, int]] = []
        off = 8
        for m in members:
            if (st, m) == ("task_struct", "pid"):
                anon = b.struct("", 8, [("pid", u32, 0), ("tgid_pad", u32, 4)])
                fields.append(("", anon, off))
                expected[f"{st}.{m}"] = off
                off += 8
                continue
            if m in ("comm", "name"):
                t, size = b.array(char, 16 if m == "comm" else 56, u32), 64
            elif m == "slots":
                t, size = b.array(vp, 64, u32), 512
            elif m == "uid":
                t, size = kuid, 8
            elif m == "shift":
                t, size = u8, 8
            else:
                t, size = u64, 8
            fields.append((m, t, off))
            expected[f"{st}.{m}"] = off
            off += size
        b.struct(st, off + 8, fields)
    return b.blob(), expected


def elf(sections: dict[str, tuple[int, bytes]]) -> bytes:
    """A minimal ELF64 with the named sections (name -> (address, contents))."""
    names = bytearray(b"\0")
    body = bytearray()
    heads = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)]
    base = 64
    for name, (addr, contents) in [*sections.items(), (".shstrtab", (0, b""))]:
        at = len(names)
        names += name.encode() + b"\0"
        data = bytes(names) if name == ".shstrtab" else contents
        heads.append(struct.pack("<IIQQQQIIQQ", at, 1, 0, addr, base + len(body), len(data), 0, 0, 1, 0))
        body += data
    shoff = base + len(body)
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(heads),
                                 len(heads) - 1)
    return header + bytes(body) + b"".join(heads)


def note(build_id: bytes) -> bytes:
    return struct.pack("<III", 4, len(build_id), 3) + b"GNU\0" + build_id


def fake_kernel(copies: int = 1, btf: bool = True) -> tuple[bytes, dict[str, int], int]:
    blob, off = kernel_btf()
    data = bytearray(0x8000)
    init_at = 0x1000
    for i in range(copies):
        base = init_at + i * 0x3000
        va = DATA_VA + base
        struct.pack_into("<Q", data, base + off["task_struct.real_parent"], va)
        struct.pack_into("<Q", data, base + off["task_struct.group_leader"], va)
        data[base + off["task_struct.comm"]:base + off["task_struct.comm"] + 8] = b"swapper\0"
    # a decoy: named swapper, but not its own parent
    decoy = 0x6000
    data[decoy + off["task_struct.comm"]:decoy + off["task_struct.comm"] + 8] = b"swapper\0"
    sections = {".rodata": (0xFFFFFFFF82000000, b"xx Linux version 6.1.0-99-test (gcc) #1\0"),
                ".notes": (0xFFFFFFFF82400000, note(bytes.fromhex("c0ffee")))}
    if btf:
        sections[".BTF"] = (0xFFFFFFFF82500000, blob)
    sections[".data"] = (DATA_VA, bytes(data))
    return elf(sections), off, DATA_VA + init_at


def test_offsets_build_id_release_and_init_task_come_from_the_kernel() -> None:
    raw, off, init_va = fake_kernel()
    k = kernelinfo.derive(raw, "fake")
    for key, value in off.items():
        assert k.offsets[key] == value, key  # (cred.uid: kuid_t's val is at 0 of it)
    assert k.init_task == init_va
    assert (k.build_id, k.release, k.comm_len) == ("c0ffee", "6.1.0-99-test", 16)
    assert k.extra["slots_per_node"] == 64 and k.extra["module_name_len"] == 56
    assert kernelinfo.KernelInfo.from_json(k.to_json()) == k


def test_a_kernel_without_btf_is_refused_by_name() -> None:
    raw, _, _ = fake_kernel(btf=False)
    with pytest.raises(KernelInfoError, match=r"no \.BTF section"):
        kernelinfo.derive(raw, "nobtf")


def test_two_init_tasks_mean_an_unknown_layout() -> None:
    raw, _, _ = fake_kernel(copies=2)
    with pytest.raises(KernelInfoError, match=r"expected one init_task in \.data, found 2"):
        kernelinfo.derive(raw, "odd")


def test_a_missing_member_names_the_struct_and_member() -> None:
    b = BtfBuilder()
    b.struct("task_struct", 8, [("flags", b.int("u32", 4), 0)])
    with pytest.raises(KernelInfoError, match="struct task_struct has no member 'tasks'"):
        kernelinfo.Btf(b.blob()).offset("task_struct", "tasks")
    with pytest.raises(KernelInfoError, match="no BTF magic"):
        kernelinfo.Btf(b"\0" * 64)


def test_the_kernel_elf_is_unpacked_from_a_compressed_image(tmp_path: Path) -> None:
    raw, _, init_va = fake_kernel()
    bz = b"MZ setup code" + bytes(100) + gzip.compress(raw, mtime=0) + b"trailer"
    assert kernelinfo.extract_vmlinux(bz) == raw
    with pytest.raises(KernelInfoError, match="no xz or gzip"):
        kernelinfo.extract_vmlinux(b"MZ nothing here", "junk")
    (tmp_path / "vmlinuz").write_bytes(bz)
    k = kernelinfo.load(tmp_path / "vmlinuz", cache_dir=tmp_path / "c")
    cached = list((tmp_path / "c" / "kernels").glob("*.json"))
    assert len(cached) == 1 and k.init_task == init_va
    cached[0].write_text(cached[0].read_text().replace(str(init_va), "1234"))
    assert kernelinfo.load(tmp_path / "vmlinuz", cache_dir=tmp_path / "c").init_task == 1234  # from the cache
