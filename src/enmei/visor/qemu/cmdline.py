"""The QEMU command line of a VM unit, and the files it uses: pure functions, no I/O.

The machine (``pc``, no default devices) has:

* the image's kernel and initramfs, ``console=ttyS0``; the guest panics into ``pvpanic`` and QEMU
  pauses (``panic_action = "pause"``) or exits (``"exit"``);
* ttyS0 = the serial console, appended to ``console.log`` (a log source);
  ttyS1 = the data-disk gate, a unix socket the host writes ``go`` to (see ``guest/gate.sh``);
* a qcow2 node ``sys`` with no device: the guest never sees it; it holds the internal snapshots and
  their machine state (the guest's root file system is its initramfs, in RAM);
* a qcow2 node ``data`` on a virtio-blk device: the guest's persistent data disk (ext4), never part of
  an internal snapshot;
* user-mode networking with ``restrict=on``: host forwards on 127.0.0.1 only, ``guestfwd`` to local
  commands, and two ``filter-dump`` objects that record every frame's header (64 bytes at most) in each
  direction, counted by ``netcount``;
* QMP on a unix socket; ``-daemonize`` so that QEMU outlives the supervisor (it is not our child).
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
GATE_ID = "gate"
GUESTFWD_ADDR = "10.0.2.100"
_SOCK_MAX = 100  # sun_path holds 108 bytes


@dataclass(frozen=True)
class MachinePaths:
    """Where one VM unit keeps its files (``<state>/qemu/<unit>/``) and sockets."""

    dir: Path
    sock_dir: Path

    @classmethod
    def for_unit(cls, state_dir: Path, unit: str) -> MachinePaths:
        """Paths under ``state_dir``; sockets go to a short folder in /tmp if the path is too long."""
        d = state_dir.absolute() / "qemu" / unit
        sock_dir = d
        if len(str(d / "qmp.sock")) > _SOCK_MAX:
            sock_dir = Path("/tmp") / f"enmei-{hashlib.sha256(str(d).encode()).hexdigest()[:16]}"
        return cls(d, sock_dir)

    @property
    def qmp(self) -> Path:
        return self.sock_dir / "qmp.sock"

    @property
    def gate(self) -> Path:
        return self.sock_dir / "gate.sock"

    @property
    def console(self) -> Path:
        return self.dir / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def sys_disk(self) -> Path:
        return self.dir / "sys.qcow2"

    @property
    def data_disk(self) -> Path:
        return self.dir / "data.qcow2"

    def net_dump(self, direction: str) -> Path:
        """``direction`` is ``tx`` (frames the guest sent) or ``rx`` (frames it received)."""
        return self.dir / f"net-{direction}.pcap"


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
                  daemonize: bool = True) -> list[str]:
    """The full argv. ``accel`` is ``tcg`` or ``kvm`` (already chosen). ``incoming`` starts the machine
    waiting for ``migrate-incoming`` (whole-state restore)."""
    if accel not in ("tcg", "kvm"):
        raise ValueError(f"accel must be tcg or kvm here, not {accel!r}")
    argv = [binary, "-name", f"enmei-{paths.dir.name},debug-threads=on", "-machine", "pc",
            "-accel", accel]
    if accel == "kvm":
        argv += ["-cpu", "host"]
    argv += [
        "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", kernel, "-initrd", initrd, "-append", kernel_append(spec),
        "-chardev", f"file,id=console,path={_opt(str(paths.console))},append=on",
        "-serial", "chardev:console",
        "-chardev", f"socket,id={GATE_ID},path={_opt(str(paths.gate))},server=on,wait=off",
        "-serial", f"chardev:{GATE_ID}",
        "-qmp", f"unix:{_opt(str(paths.qmp))},server=on,wait=off",
        "-blockdev", f"driver=file,node-name={SYS_NODE}-file,filename={_opt(str(paths.sys_disk))}",
        "-blockdev", f"driver=qcow2,node-name={SYS_NODE},file={SYS_NODE}-file",
        "-blockdev", f"driver=file,node-name={DATA_NODE}-file,filename={_opt(str(paths.data_disk))}",
        "-blockdev", f"driver=qcow2,node-name={DATA_NODE},file={DATA_NODE}-file",
        "-device", f"virtio-blk-pci,drive={DATA_NODE},id={DATA_NODE}0",
        "-netdev", netdev_arg(spec),
        "-device", f"virtio-net-pci,netdev={NET_DEV},id=nic0",
    ]
    for direction in ("tx", "rx"):
        o = dump_object(paths, direction)
        argv += ["-object", f"filter-dump,id={o['id']},netdev={NET_DEV},queue={o['queue']},"
                 f"file={_opt(str(o['file']))},maxlen={o['maxlen']}"]
    argv += ["-device", "pvpanic",
             "-action", "panic=pause" if spec.panic_action == "pause" else "panic=shutdown"]
    if incoming:
        argv += ["-incoming", "defer"]
    if daemonize:
        argv += ["-daemonize", "-pidfile", str(paths.pidfile)]
    argv += list(spec.extra_args)
    return argv
