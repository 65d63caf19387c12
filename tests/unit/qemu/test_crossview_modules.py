"""The module views (the module list, a scan of the modules area) over a synthetic guest RAM, the inside
module listing, and compare_modules."""

from __future__ import annotations

import pytest

from enmei.monitor.crossview import InsideReader
from enmei.monitor.crossview_modules import GOING, MODULES_END, MODULES_VADDR, ModuleReader, compare_modules
from enmei.visor.qemu.guestmem import MemoryReadError

from .fakeguest import MODULES_VA, FakeGuest, kernel


def guest(kaslr: int = 0) -> FakeGuest:
    g = FakeGuest(kaslr=kaslr)
    g.spawn(1, "init", 0.5, ppid=0)
    for name in ("virtio_net", "virtio_blk", "ext4"):
        g.load(name)
    return g


@pytest.mark.parametrize("kaslr", [0, 0x1e400000])
def test_the_list_and_the_scan_see_the_same_modules(kaslr: int) -> None:
    g = guest(kaslr)
    mem = g.memory()
    mem.locate()
    r = ModuleReader(kernel())
    lst, scan = r.read(mem)
    assert lst.conclusive and scan.conclusive, (lst.reason, scan.reason)
    names = sorted(m.name for m in lst.modules.values())
    assert names == ["ext4", "virtio_blk", "virtio_net"]
    assert sorted(m.name for m in scan.modules.values()) == names
    assert r.head == g.modules_head  # found from a listed module's ring: the node in the kernel image
    assert compare_modules({"ext4", "virtio_blk", "virtio_net"}, [lst, scan]).hidden == ()


def test_a_module_that_unlinked_itself_is_found_by_the_scan() -> None:
    g = guest()
    rk = g.load("rootkit", on_list=False)
    mem = g.memory()
    mem.locate()
    lst, scan = ModuleReader(kernel()).read(mem)
    assert "rootkit" not in {m.name for m in lst.modules.values()} and rk in scan.modules
    diff = compare_modules({"ext4", "virtio_blk", "virtio_net"}, [lst, scan])  # /proc/modules walks the list
    assert [m.name for m in diff.hidden] == ["rootkit"]
    assert [(m.name, m.address) for m in diff.hidden_from_list] == [("rootkit", rk)]


def test_a_module_missing_only_from_the_inside_listing_is_hidden_there() -> None:
    g = guest()
    mem = g.memory()
    mem.locate()
    views = ModuleReader(kernel()).read(mem)
    diff = compare_modules({"ext4", "virtio_net"}, views)  # the guest's lsmod lies about virtio_blk
    assert [m.name for m in diff.hidden] == ["virtio_blk"] and diff.hidden_from_list == ()
    # a listing without a modules part compares the outside views only
    assert compare_modules(None, views).hidden == ()


def test_modules_being_unloaded_or_loaded_are_not_hidden() -> None:
    g = guest()
    g.load("leaving", state=GOING, on_list=False)  # list_del_rcu'd by delete_module, memory not freed yet
    g.unload("virtio_blk")  # gone: listed inside (the listing was before), not outside
    mem = g.memory()
    mem.locate()
    views = ModuleReader(kernel()).read(mem)
    diff = compare_modules({"ext4", "virtio_blk", "virtio_net"}, views)
    assert diff.conclusive and diff.hidden == () and diff.hidden_from_list == ()


def test_the_head_is_kept_for_the_boot_so_an_empty_list_still_reads() -> None:
    g = guest()
    mem = g.memory()
    mem.locate()
    r = ModuleReader(kernel())
    r.read(mem)
    for name in list(g.modules):
        g.unload(name)
    rk = g.load("rootkit", on_list=False, slot=5)
    mem2 = g.memory()
    mem2.locate()
    lst, scan = r.read(mem2)
    assert lst.conclusive and lst.modules == {} and list(scan.modules) == [rk]
    assert [m.name for m in compare_modules(set(), [lst, scan]).hidden_from_list] == ["rootkit"]


def test_a_loop_in_the_module_list_is_inconclusive() -> None:
    g = guest()
    node = g.modules["virtio_blk"] + 8
    g.put(node, node)  # virtio_blk -> itself, never back to the head
    mem = g.memory()
    mem.locate()
    r = ModuleReader(kernel())
    r.head = g.modules_head
    r._boot = mem.info
    lst, scan = r.read(mem)
    assert not lst.conclusive and "loops" in lst.reason
    diff = compare_modules(set(), [lst, scan])
    assert not diff.conclusive and diff.hidden == ()


def test_a_wild_pointer_in_the_module_list_is_inconclusive() -> None:
    g = guest()
    g.put(g.modules["ext4"] + 8, 0xDEAD000000000000)
    mem = g.memory()
    mem.locate()
    r = ModuleReader(kernel())
    r.head, r._boot = g.modules_head, mem.info
    lst, _ = r.read(mem)
    assert not lst.conclusive and "not mapped" in lst.reason


def test_garbage_that_only_looks_like_a_module_is_not_one() -> None:
    g = guest()
    fake = g.load("bad name!", on_list=False)  # points back to itself, but its name is no module's
    g.load("badstate", state=9, on_list=False)
    mem = g.memory()
    mem.locate()
    r = ModuleReader(kernel())
    assert r.module(mem, fake) is None
    _, scan = r.read(mem)
    assert {m.name for m in scan.modules.values()} == {"ext4", "virtio_blk", "virtio_net"}
    g.module_order.append("badstate")  # on the list, it makes the list (and so the read) inconclusive
    g.link()
    mem = g.memory()
    mem.locate()
    lst, scan = ModuleReader(kernel()).read(mem)
    assert not lst.conclusive and "which is not a module" in lst.reason


def test_the_scan_is_bounded() -> None:
    g = guest()
    mem = g.memory()
    mem.locate()
    assert len(mem.mapped(MODULES_VADDR, MODULES_END)) == 256
    assert mem.mapped(MODULES_VA, MODULES_VA + 8192) == [MODULES_VA, MODULES_VA + 4096]
    with pytest.raises(MemoryReadError, match="more than 100 pages"):
        mem.mapped(MODULES_VADDR, MODULES_END, max_pages=100)
    _, scan = ModuleReader(kernel(), max_pages=100).read(mem)
    assert not scan.conclusive and "more than 100 pages" in scan.reason


def test_the_inside_reader_takes_the_modules_part() -> None:
    r = InsideReader()
    done = r.feed(["enmei-ps: begin 1 1.0", "enmei-ps: 1 init", "enmei-ps: mod ext4", "enmei-ps: mod virtio_net",
                   "enmei-ps: mods 2", "enmei-ps: end 1 1.1",
                   "enmei-ps: begin 2 2.0", "enmei-ps: 1 init", "enmei-ps: end 2 2.1"])
    assert done[0].modules == frozenset({"ext4", "virtio_net"}) and done[1].modules is None
    # a module line lost (count mismatch): the listing is torn, dropped
    assert r.feed(["enmei-ps: begin 3 3.0", "enmei-ps: mod ext4", "enmei-ps: mods 2", "enmei-ps: end 3 3.1"]) == []
