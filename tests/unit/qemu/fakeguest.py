"""A synthetic guest RAM image for unit tests of the outside view: page tables, a vmcoreinfo note, a task
list and a PID radix tree laid out as an x86-64 Linux kernel lays them out, with small made-up offsets.

It is bytes handed to the real ``GuestMemory`` (its I/O edge is the mapping); nothing else is faked.
"""

from __future__ import annotations

import struct

from enmei.visor.qemu.guestmem import START_KERNEL_MAP, GuestMemory
from enmei.visor.qemu.kernelinfo import KernelInfo

PAGE_OFFSET = 0xFFFF888000000000
RAM = 8 << 20
PGD, PUD_DIRECT, PUD_KERNEL, PMD_KERNEL = 0x1000, 0x2000, 0x3000, 0x4000
IMAGE_PHYS = 0x200000  # where the "kernel image" (init_task) lives in guest RAM
IMAGE_LINK = START_KERNEL_MAP + 0x1000000  # its link address
TASKS_PHYS = 0x400000
PIDS_PHYS = 0x600000
NOTE_PHYS = 0x700000
MODULES_PHYS = 0x500000  # 1 MiB of "module memory", mapped at MODULES_VA with 4 KiB pages
MODULES_VA = 0xFFFFFFFFC0200000
PMD_MODULES, PTE_MODULES = 0x5000, 0x6000
MODULES_HEAD_OFF = 0x800  # the kernel's ``modules`` list head, in the "kernel image" after init_task
MODULE_SIZE = 0x200
BUILD_ID = "ab12"

OFFSETS = {
    "task_struct.tasks": 16, "task_struct.pid": 32, "task_struct.tgid": 36, "task_struct.comm": 64,
    "task_struct.real_parent": 40, "task_struct.group_leader": 48, "task_struct.real_cred": 56,
    "task_struct.start_time": 80, "task_struct.start_boottime": 88, "task_struct.flags": 8,
    "task_struct.exit_state": 12, "task_struct.mm": 96, "task_struct.thread_pid": 104,
    "task_struct.pid_links": 112,
    "list_head.next": 0, "list_head.prev": 8, "hlist_node.next": 0, "hlist_head.first": 0, "cred.uid": 4,
    "pid.level": 4, "pid.numbers": 32, "pid.tasks": 8, "upid.nr": 0, "upid.ns": 8,
    "pid_namespace.idr": 0, "pid_namespace.level": 64, "idr.idr_rt": 0, "idr.idr_base": 16,
    "xarray.xa_head": 8, "xa_node.shift": 0, "xa_node.slots": 40,
    "module.list": 8, "module.name": 24, "module.state": 0, "module.mkobj": 96, "module_kobject.mod": 16,
}
TASK_SIZE = 256


def kernel(init_task: int = IMAGE_LINK) -> KernelInfo:
    return KernelInfo(build_id=BUILD_ID, release="6.1-test", init_task=init_task, offsets=OFFSETS,
                      sizes={"task_struct": TASK_SIZE, "upid": 16, "module": 64, "pid": 48}, comm_len=16,
                      source="fake", extra={"slots_per_node": 64, "module_name_len": 56})


class FakeGuest:
    """Processes laid out in RAM; ``memory()`` gives a ``GuestMemory`` over a copy of it as it is now."""

    def __init__(self, *, kaslr: int = 0, build_id: str = BUILD_ID) -> None:
        self.ram = bytearray(RAM)
        self.kaslr = kaslr
        self.slots: dict[int, int] = {}  # pid -> task address
        self.order: list[int] = []  # the task list after init_task
        # page tables: the direct map (one 1 GiB page at phys 0), the kernel image (2 MiB pages)
        self._q(PGD + ((PAGE_OFFSET >> 39) & 511) * 8, PUD_DIRECT | 3)
        self._q(PUD_DIRECT, 0 | 0x83)
        self._q(PGD + 511 * 8, PUD_KERNEL | 3)
        va = IMAGE_LINK + kaslr
        self._q(PUD_KERNEL + ((va >> 30) & 511) * 8, PMD_KERNEL | 3)
        self._q(PMD_KERNEL + ((va >> 21) & 511) * 8, IMAGE_PHYS | 0x83)
        # the modules area: its PUD entry (511, beside the kernel image's), one PTE table of 256 pages
        self._q(PUD_KERNEL + ((MODULES_VA >> 30) & 511) * 8, PMD_MODULES | 3)
        self._q(PMD_MODULES + ((MODULES_VA >> 21) & 511) * 8, PTE_MODULES | 3)
        for i in range(256):
            self._q(PTE_MODULES + (((MODULES_VA >> 12) + i) & 511) * 8, (MODULES_PHYS + i * 4096) | 3)
        self.modules: dict[str, int] = {}  # name -> struct module address
        self.module_order: list[str] = []  # the module list after its head
        phys_base = IMAGE_PHYS - (va - START_KERNEL_MAP)
        pgd_va = START_KERNEL_MAP + PGD - phys_base  # its phys = va - START_KERNEL_MAP + phys_base
        note = (f"OSRELEASE=6.1-test\nBUILD-ID={build_id}\nSYMBOL(init_top_pgt)={pgd_va:x}\n"
                f"NUMBER(phys_base)={phys_base}\nKERNELOFFSET={kaslr:x}\nNUMBER(pgtable_l5_enabled)=0\n")
        self.ram[NOTE_PHYS:NOTE_PHYS + len(note)] = note.encode()
        # init_task (pid 0) in the image, and init_pid_ns with its radix tree
        self.init = va
        self.ns = PAGE_OFFSET + PIDS_PHYS
        self.node = PAGE_OFFSET + PIDS_PHYS + 0x1000
        self._task_at(self.init, 0, "swapper/0", 0, 0, kthread=True)
        self._q(self._p(self.ns) + OFFSETS["xarray.xa_head"], self.node | 2)
        self.modules_head = self.init + MODULES_HEAD_OFF
        self.link()

    # -- raw access
    def _p(self, va: int) -> int:
        if va >= MODULES_VA:
            return va - MODULES_VA + MODULES_PHYS
        if va >= START_KERNEL_MAP:
            return va - self.init + IMAGE_PHYS
        return va - PAGE_OFFSET

    def _q(self, phys: int, value: int) -> None:
        struct.pack_into("<Q", self.ram, phys, value & (2**64 - 1))

    def put(self, va: int, value: int) -> None:
        self._q(self._p(va), value)

    def _task_at(self, addr: int, pid: int, comm: str, ppid_addr: int, start_s: float, *, kthread: bool = False,
                 uid: int = 0) -> None:
        p = self._p(addr)
        self.ram[p:p + TASK_SIZE] = bytes(TASK_SIZE)
        struct.pack_into("<iI", self.ram, p + OFFSETS["task_struct.pid"], pid, pid)
        struct.pack_into("<I", self.ram, p + OFFSETS["task_struct.flags"], 0x00200000 if kthread else 0)
        name = comm.encode()[:15]
        self.ram[p + 64:p + 64 + len(name)] = name
        self._q(p + OFFSETS["task_struct.real_parent"], ppid_addr or addr)
        self._q(p + OFFSETS["task_struct.group_leader"], addr)
        cred = addr + TASK_SIZE - 16  # a cred inside the task's slot: uid at +4
        struct.pack_into("<I", self.ram, self._p(cred) + 4, uid)
        self._q(p + OFFSETS["task_struct.real_cred"], cred)
        self._q(p + OFFSETS["task_struct.start_boottime"], int(start_s * 1e9))
        pid_va = PAGE_OFFSET + PIDS_PHYS + 0x4000 + pid * 64
        self._q(p + OFFSETS["task_struct.thread_pid"], pid_va)
        pp = self._p(pid_va)
        self.ram[pp:pp + 64] = bytes(64)
        self._q(pp + OFFSETS["pid.tasks"], addr + OFFSETS["task_struct.pid_links"])
        struct.pack_into("<I", self.ram, pp + OFFSETS["pid.numbers"], pid)
        self._q(pp + OFFSETS["pid.numbers"] + 8, self.ns)
        if pid:
            self._q(self._p(self.node) + OFFSETS["xa_node.slots"] + pid * 8, pid_va)

    def spawn(self, pid: int, comm: str, start_s: float, *, ppid: int = 1, uid: int = 0, on_list: bool = True) -> int:
        """A process (pid < 64); on the task list unless ``on_list`` is false (a rootkit unlinked it)."""
        addr = PAGE_OFFSET + TASKS_PHYS + pid * 0x400
        parent = self.slots.get(ppid, self.init)
        self._task_at(addr, pid, comm, parent, start_s, uid=uid)
        self.slots[pid] = addr
        if on_list:
            self.order.append(pid)
        self.link()
        return addr

    def exit(self, pid: int) -> None:
        addr = self.slots.pop(pid)
        if pid in self.order:
            self.order.remove(pid)
        self._q(self._p(self.node) + OFFSETS["xa_node.slots"] + pid * 8, 0)
        self.ram[self._p(addr):self._p(addr) + TASK_SIZE] = bytes(TASK_SIZE)
        self.link()

    def load(self, name: str, *, state: int = 0, on_list: bool = True, slot: int | None = None) -> int:
        """A kernel module (at most 512 of them) in the modules area; on the module list unless ``on_list``
        is false (it unlinked itself, ``list_del``: its pointers poisoned)."""
        at = MODULES_VA + MODULE_SIZE * (len(self.modules) if slot is None else slot) + 0x40
        p = self._p(at)
        self.ram[p:p + MODULE_SIZE - 0x40] = bytes(MODULE_SIZE - 0x40)
        struct.pack_into("<I", self.ram, p + OFFSETS["module.state"], state)
        self.ram[p + 24:p + 24 + len(name)] = name.encode()
        self._q(p + OFFSETS["module.mkobj"] + OFFSETS["module_kobject.mod"], at)
        self._q(p + 8, 0xDEAD000000000100)
        self._q(p + 16, 0xDEAD000000000122)
        self.modules[name] = at
        if on_list:
            self.module_order.append(name)
        self.link()
        return at

    def unload(self, name: str) -> None:
        at = self.modules.pop(name)
        if name in self.module_order:
            self.module_order.remove(name)
        self.ram[self._p(at):self._p(at) + MODULE_SIZE - 0x40] = bytes(MODULE_SIZE - 0x40)
        self.link()

    def link(self) -> None:
        """Write the task list (init_task, then ``order``) and the module list as rings of list_heads."""
        for nodes in ([self.init + 16] + [self.slots[p] + 16 for p in self.order],
                      [self.modules_head] + [self.modules[m] + 8 for m in self.module_order]):
            for i, n in enumerate(nodes):
                self.put(n, nodes[(i + 1) % len(nodes)])
                self.put(n + 8, nodes[i - 1])

    def memory(self) -> GuestMemory:
        return GuestMemory(bytes(self.ram), label="fake")
