"""The outside views (task list, pid tree) over a synthetic guest RAM, the inside listing, and compare."""

from __future__ import annotations

import pytest

from enmei.monitor.crossview import InsideListing, InsideReader, OutsideView, compare, read_outside
from enmei.visor.qemu.errors import KernelInfoError
from enmei.visor.qemu.guestmem import MemoryReadError

from .fakeguest import BUILD_ID, PAGE_OFFSET, FakeGuest, kernel


def guest(kaslr: int = 0) -> FakeGuest:
    g = FakeGuest(kaslr=kaslr)
    g.spawn(1, "init", 0.5, ppid=0)
    g.spawn(7, "httpd", 3.0)
    g.spawn(9, "sh", 4.0, uid=1000)
    return g


@pytest.mark.parametrize("kaslr", [0, 0x1e400000])
def test_both_views_list_the_processes_with_their_fields(kaslr: int) -> None:
    g = guest(kaslr)
    mem = g.memory()
    info = mem.locate(release="6.1-test", build_id=BUILD_ID)
    assert info.kernel_offset == kaslr
    k = kernel()
    for source in ("list", "pids"):
        v = read_outside(mem, k, source)
        assert v.conclusive, v.reason
        assert sorted(v.tasks) == [1, 7, 9]
        sh = v.tasks[9]
        assert (sh.comm, sh.ppid, sh.uid, sh.start_ns, sh.kthread) == ("sh", 1, 1000, 4_000_000_000, False)
        assert v.tasks[1].ppid == 0


def test_a_task_unlinked_from_the_list_is_still_in_the_pid_tree() -> None:
    g = guest()
    g.spawn(12, "hidden", 2.0, on_list=False)
    mem = g.memory()
    mem.locate()
    k = kernel()
    lst, pids = read_outside(mem, k, "list"), read_outside(mem, k, "pids")
    assert 12 not in lst.tasks and 12 in pids.tasks
    listing = InsideListing(1, 10.0, 10.5, {1: "init", 7: "httpd", 9: "sh"})
    diff = compare(listing, [lst, pids])
    assert [t.pid for t in diff.hidden] == [12]
    assert [t.pid for t in diff.hidden_from_list] == [12]


def test_a_loop_in_the_list_is_inconclusive() -> None:
    g = guest()
    g.put(g.slots[9] + 16, g.slots[9] + 16)  # 9 -> 9, never back to init_task (its prev stays right)
    mem = g.memory()
    mem.locate()
    v = read_outside(mem, kernel(), "list")
    assert not v.conclusive and "loops" in v.reason and not v.tasks


@pytest.mark.parametrize(("target", "why"), [(0xDEAD000000000000, "not mapped"),
                                             (PAGE_OFFSET + (64 << 20), "outside its RAM")])
def test_a_wild_pointer_is_inconclusive_with_the_reason(target: int, why: str) -> None:
    g = guest()
    g.put(g.slots[7] + 16, target)
    mem = g.memory()
    mem.locate()
    v = read_outside(mem, kernel(), "list")
    assert not v.conclusive and why in v.reason


def test_a_list_changing_under_the_walk_is_inconclusive() -> None:
    g = guest()
    g.put(g.slots[9] + 16 + 8, g.slots[1] + 16)  # prev of 9 is not 7
    mem = g.memory()
    mem.locate()
    v = read_outside(mem, kernel(), "list")
    assert "changed while read" in v.reason


def test_a_garbage_pid_tree_is_bounded_and_inconclusive() -> None:
    g = guest()
    g.put(g.ns + 8, g.ns | 2)  # the root points at a "node" whose slots point at itself
    g.put(g.ns + 40, g.ns | 2)
    mem = g.memory()
    mem.locate()
    v = read_outside(mem, kernel(), "pids")
    assert not v.conclusive and "pid tree" in v.reason


def test_another_kernel_build_is_refused_with_a_clear_error() -> None:
    mem = FakeGuest(build_id="ffff").memory()
    with pytest.raises(KernelInfoError, match="kernel symbols do not match"):
        mem.locate(release="6.1-test", build_id=BUILD_ID)


def test_no_vmcoreinfo_is_a_read_error() -> None:
    from enmei.visor.qemu.guestmem import GuestMemory

    with pytest.raises(MemoryReadError, match="no vmcoreinfo"):
        GuestMemory(bytes(1 << 20)).locate()


def test_the_inside_reader_keeps_complete_listings_only() -> None:
    r = InsideReader()
    done = r.feed(["enmei-ps: begin 1 10.00", "enmei-ps: 1 init", "junk", "enmei-ps: 7 httpd",
                   "enmei-ps: end 1 10.20", "enmei-ps: begin 2 15.0", "enmei-ps: 1 init"])
    assert [d.seq for d in done] == [1]
    assert r.newest is not None and dict(r.newest.pids) == {1: "init", 7: "httpd"}
    assert r.newest.begin_s == 10.0 and r.newest.end_s == 10.2
    # a torn listing (begin 2 never ended; begin 3 with a garbled line) is never the newest
    assert r.feed(["enmei-ps: begin 3 20", "enmei-ps: x y", "enmei-ps: end 3 21"]) == []
    assert r.newest.seq == 1


def test_short_lived_processes_are_not_hidden() -> None:
    g = guest()
    k = kernel()
    g.exit(9)  # exited during the listing (it is in the listing, not outside after it)
    g.spawn(20, "sleep", 10.1)  # started during the listing (after it began): not listed, not hidden
    mem = g.memory()
    mem.locate()
    after = [read_outside(mem, k, "list"), read_outside(mem, k, "pids")]
    listing = InsideListing(4, 10.0, 10.3, {1: "init", 7: "httpd", 9: "sh"})
    diff = compare(listing, after)
    assert diff.conclusive and diff.hidden == () and diff.hidden_from_list == ()
    # a process that lived all through it but is missing from the listing is hidden
    diff = compare(InsideListing(4, 10.0, 10.3, {1: "init"}), after)
    assert [t.pid for t in diff.hidden] == [7]


def test_an_inconclusive_view_makes_the_comparison_inconclusive() -> None:
    bad = OutsideView("list", {}, reason="list: the task list loops")
    diff = compare(InsideListing(1, 1.0, 1.1, {}), [bad])
    assert not diff.conclusive and "loops" in diff.reason and diff.hidden == ()
