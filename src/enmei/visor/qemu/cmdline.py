"""The QEMU command line of a VM unit, and the files it uses: pure functions, no I/O.

The machine (``pc``, no default devices) has:

* the image's kernel and initramfs, ``console=ttyS0``; the guest panics into ``pvpanic`` and QEMU
  pauses (``panic_action = "pause"``) or exits (``"exit"``);
* ttyS0 = the serial console, appended to ``console.log`` (a log source);
  ttyS1 = the data-disk gate, a unix socket the host writes ``go`` to (see ``guest/gate.sh``);
* a qcow2 node ``sys`` with no device: the guest never sees it; it holds the internal snapshots and
  their machine state (the guest's root file system is its initramfs, in RAM);
* a raw node ``data`` on a virtio-blk device: the guest's persistent data disk (ext4, ``data.img``),
  never part of an internal snapshot. Raw, so that a QEMU that opened it earlier holds no image
  metadata that could go stale (a standby); with a standby its image lock is shared (``share-rw``);
* user-mode networking with ``restrict=on``: host forwards on 127.0.0.1 only, ``guestfwd`` to local
  commands, and two ``filter-dump`` objects that record every frame's header (64 bytes at most) in each
  direction, counted by ``netcount``;
* guest RAM in QEMU's own memory, or (``ram = "shared"``, resolved by ``enmei.visor.qemu.ram``) in a
  ``memory-backend-file`` with ``share=on`` at the slot's ``ram`` path in ``/dev/shm``;
* QMP on a unix socket; ``-daemonize`` so that QEMU outlives the supervisor (it is not our child).

Each QEMU of a unit runs in a *slot*: ``""`` for the one ``start`` makes, ``"a"``/``"b"`` for warm
standbys. Per slot: QMP and gate sockets, pid file, snapshot disk, network dumps, the RAM file. Per unit: the data
disk, the console log (a standby writes to its own until it takes over), QEMU's log, the phase image.
A standby is launched paused (``-S``), with its forwards on temporary loopback ports.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from enmei.config.qemu import QemuUnit

__all__ = [
    "DATA_NODE",
    "GATE_ID",
    "NET_DEV",
    "NIC_ID",
    "RAM_ID",
    "RAM_ROOT",
    "SYS_NODE",
    "MachinePaths",
    "build_cmdline",
    "dump_object",
    "kernel_append",
    "netdev_arg",
]

SYS_NODE = "sys"
DATA_NODE = "data"
NET_DEV = "n0"
NIC_ID = "nic0"  # the guest's network card (set_link cuts it)
GATE_ID = "gate"
GUESTFWD_ADDR = "10.0.2.100"
RAM_ID = "ram0"
#: where shared guest RAM files live (a tmpfs: the memory is the guest's, not a disk's)
RAM_ROOT = Path("/dev/shm")
_SOCK_MAX = 100  # sun_path holds 108 bytes


@dataclass(frozen=True)
class MachinePaths:
    """Where one VM unit keeps its files (``<state>/qemu/<unit>/``) and sockets."""

    dir: Path
    sock_dir: Path
    slot: str = ""

    @classmethod
    def for_unit(cls, state_dir: Path, unit: str, slot: str = "") -> MachinePaths:
        """Paths under ``state_dir``; sockets go to a short folder in /tmp if the path is too long."""
        d = state_dir.absolute() / "qemu" / unit
        sock_dir = d
        if len(str(d / "qmp-a.sock")) > _SOCK_MAX:
            sock_dir = Path("/tmp") / f"enmei-{hashlib.sha256(str(d).encode()).hexdigest()[:16]}"
        return cls(d, sock_dir, slot)

    def with_slot(self, slot: str) -> MachinePaths:
        return MachinePaths(self.dir, self.sock_dir, slot)

    def _s(self, stem: str, suffix: str) -> str:
        return f"{stem}-{self.slot}{suffix}" if self.slot else f"{stem}{suffix}"

    @property
    def qmp(self) -> Path:
        return self.sock_dir / self._s("qmp", ".sock")

    @property
    def gate(self) -> Path:
        return self.sock_dir / self._s("gate", ".sock")

    @property
    def console(self) -> Path:
        """The unit's console log (whichever QEMU runs the unit's guest writes it)."""
        return self.dir / "console.log"

    @property
    def slot_console(self) -> Path:
        """Where a standby's console goes until it takes over (the unit's console for slot ``""``)."""
        return self.dir / self._s("console", ".log")

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / self._s("qemu", ".pid")

    @property
    def sys_disk(self) -> Path:
        return self.dir / self._s("sys", ".qcow2")

    @property
    def data_disk(self) -> Path:
        return self.dir / "data.img"

    @property
    def legacy_data_disk(self) -> Path:
        """Where enmei kept the data disk before it was raw (converted on the next start)."""
        return self.dir / "data.qcow2"

    @property
    def phase_image(self) -> Path:
        """A copy of the snapshot disk holding the phase snapshot: what standbys start from."""
        return self.dir / "phase-sys.qcow2"

    @property
    def ram_dir(self) -> Path:
        """The unit's directory of shared RAM files, ``/dev/shm/enmei-HASH`` (HASH of ``dir``)."""
        return RAM_ROOT / f"enmei-{hashlib.sha256(str(self.dir).encode()).hexdigest()[:16]}"

    @property
    def ram(self) -> Path:
        """The slot's guest RAM file (used with ``ram = "shared"``)."""
        return self.ram_dir / self._s("ram", "")

    def net_dump(self, direction: str) -> Path:
        """``direction`` is ``tx`` (frames the guest sent) or ``rx`` (frames it received)."""
        return self.dir / self._s(f"net-{direction}", ".pcap")

    def slot_files(self) -> list[Path]:
        """The files of this slot's QEMU (removed once it is gone; never the unit's shared files)."""
        files = [self.qmp, self.gate, self.pidfile, self.sys_disk, self.net_dump("tx"), self.net_dump("rx"),
                 self.ram]
        return [*files, self.slot_console] if self.slot else files


def kernel_append(spec: QemuUnit) -> str:
    """The guest kernel command line: serial console, reboot at once on a panic without pvpanic,
    freed memory zeroed (``init_on_free=1``: a third less machine state to save and load)."""
    return " ".join(["console=ttyS0", "panic=-1", "quiet", "init_on_free=1", *spec.kernel_args])


def _opt(value: str) -> str:
    """Escape a value for QEMU's option syntax (a comma is written twice)."""
    return value.replace(",", ",,")


def netdev_arg(spec: QemuUnit) -> str:
    """``-netdev user,...``: restricted, host forwards on 127.0.0.1, guestfwd to local commands."""
    parts = [f"user,id={NET_DEV}", "restrict=on"]
    for item in spec.forward:
        host, _, guest = item.partition(":")
        parts.append(f"hostfwd=tcp:127.0.0.1:{int(host)}-:{int(guest)}")
    for item in spec.guestfwd:
        port, _, command = item.partition("=")
        parts.append(f"guestfwd=tcp:{GUESTFWD_ADDR}:{int(port)}-cmd:{_opt(command.strip())}")
    return ",".join(parts)


def dump_object(paths: MachinePaths, direction: str) -> dict[str, object]:
    """The ``filter-dump`` object (as ``object-add`` arguments) recording one direction's frames.

    On the user netdev, queue ``rx`` sees what the guest sends and ``tx`` what it receives.
    """
    queue = {"tx": "rx", "rx": "tx"}[direction]
    return {"qom-type": "filter-dump", "id": f"dump-{direction}", "netdev": NET_DEV, "queue": queue,
            "file": str(paths.net_dump(direction)), "maxlen": 64}


def build_cmdline(spec: QemuUnit, *, kernel: str, initrd: str, paths: MachinePaths, accel: str,
                  binary: str = "qemu-system-x86_64", incoming: bool = False,
                  daemonize: bool = True, standby: bool = False) -> list[str]:
    """The full argv. ``accel`` is ``tcg`` or ``kvm`` (already chosen). ``incoming`` starts the machine
    waiting for ``migrate-incoming`` (whole-state restore). ``standby`` starts it paused (``-S``, to
    load the phase snapshot into), its console going to the slot's own file."""
    if accel not in ("tcg", "kvm"):
        raise ValueError(f"accel must be tcg or kvm here, not {accel!r}")
    shared = spec.ram == "shared"
    argv = [binary, "-name", f"enmei-{paths.dir.name},debug-threads=on",
            "-machine", f"pc,memory-backend={RAM_ID}" if shared else "pc", "-accel", accel]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    argv += [
        "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
        *(["-object", f"memory-backend-file,id={RAM_ID},size={spec.memory_mib}M,"
                      f"mem-path={_opt(str(paths.ram))},share=on"] if shared else []),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", kernel, "-initrd", initrd, "-append", kernel_append(spec),
        "-chardev", f"file,id=console,path={_opt(str(paths.slot_console if standby else paths.console))},"
                    "append=on",
        "-serial", "chardev:console",
        "-chardev", f"socket,id={GATE_ID},path={_opt(str(paths.gate))},server=on,wait=off",
        "-serial", f"chardev:{GATE_ID}",
        "-qmp", f"unix:{_opt(str(paths.qmp))},server=on,wait=off",
        "-blockdev", f"driver=file,node-name={SYS_NODE}-file,filename={_opt(str(paths.sys_disk))}",
        "-blockdev", f"driver=qcow2,node-name={SYS_NODE},file={SYS_NODE}-file",
        "-blockdev", f"driver=file,node-name={DATA_NODE}-file,filename={_opt(str(paths.data_disk))}",
        "-blockdev", f"driver=raw,node-name={DATA_NODE},file={DATA_NODE}-file",
        "-device", f"virtio-blk-pci,drive={DATA_NODE},id={DATA_NODE}0" + (",share-rw=on" if spec.uses_standby else ""),
        "-netdev", netdev_arg(spec),
        "-device", f"virtio-net-pci,netdev={NET_DEV},id={NIC_ID}",
    ]
    for direction in ("tx", "rx"):
        o = dump_object(paths, direction)
        argv += ["-object", f"filter-dump,id={o['id']},netdev={NET_DEV},queue={o['queue']},"
                 f"file={_opt(str(o['file']))},maxlen={o['maxlen']}"]
    argv += ["-device", "pvpanic",
             "-action", "panic=pause" if spec.panic_action == "pause" else "panic=shutdown"]
    if incoming:
        argv += ["-incoming", "defer"]
    if standby:
        argv += ["-S"]
    if daemonize:
        argv += ["-daemonize", "-pidfile", str(paths.pidfile)]
    argv += list(spec.extra_args)
    return argv
