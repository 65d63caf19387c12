"""The QEMU command line: networking rules, devices, daemonizing (pure: no QEMU started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enmei.config.qemu import QemuUnit
from enmei.visor.qemu.cmdline import MachinePaths, build_cmdline, dump_object, kernel_append, netdev_arg


def _spec(**kw: object) -> QemuUnit:
    return QemuUnit.model_validate({"backend": "qemu", **kw})


def _argv(spec: QemuUnit, tmp_path: Path, **kw: object) -> list[str]:
    paths = MachinePaths.for_unit(tmp_path, "vm")
    return build_cmdline(spec, kernel="/k", initrd="/i", paths=paths, accel=str(kw.pop("accel", "tcg")),
                         **kw)  # type: ignore[arg-type]


def _value(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_user_networking_is_restricted_and_forwards_bind_loopback_only() -> None:
    arg = netdev_arg(_spec(forward=["8080:80", "2222:22"]))
    assert arg.startswith("user,id=n0,restrict=on,")
    assert "hostfwd=tcp:127.0.0.1:8080-:80" in arg
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in arg
    assert arg.count("hostfwd=") == 2
    assert "0.0.0.0" not in arg


def test_guestfwd_goes_to_a_local_command_with_commas_escaped() -> None:
    arg = netdev_arg(_spec(guestfwd=["514=logger -t a,b"]))
    assert "guestfwd=tcp:10.0.2.100:514-cmd:logger -t a,,b" in arg


def test_command_line_devices_and_daemon(tmp_path: Path) -> None:
    argv = _argv(_spec(memory_mib=128, cpus=2, forward=["8080:80"]), tmp_path)
    assert argv[0] == "qemu-system-x86_64"
    assert _value(argv, "-accel") == ["tcg"]
    assert "-cpu" not in argv
    assert _value(argv, "-m") == ["128"] and _value(argv, "-smp") == ["2"]
    assert "-daemonize" in argv and _value(argv, "-pidfile") == [str(tmp_path.absolute() / "qemu/vm/qemu.pid")]
    assert "-nodefaults" in argv and _value(argv, "-display") == ["none"]
    assert "-no-reboot" not in argv  # a reset must stay a reset: cold_reboot relies on system_reset
    assert _value(argv, "-serial") == ["chardev:console", "chardev:gate"]
    assert any(v.startswith("unix:") and v.endswith("qmp.sock,server=on,wait=off") for v in _value(argv, "-qmp"))
    blockdevs = _value(argv, "-blockdev")
    assert any("node-name=sys," in b and "qcow2" in b for b in blockdevs)
    assert "driver=raw,node-name=data,file=data-file" in blockdevs  # no image metadata to go stale
    assert any(b.endswith(f"filename={tmp_path.absolute()}/qemu/vm/data.img") for b in blockdevs)
    # the unit keeps a warm standby by default: the data disk's lock is shared by its two QEMUs
    assert _value(argv, "-device").count("virtio-blk-pci,drive=data,id=data0,share-rw=on") == 1
    assert "-S" not in argv
    assert not any("drive=sys" in d for d in _value(argv, "-device"))  # the guest never sees sys
    assert "pvpanic" in _value(argv, "-device")
    assert _value(argv, "-action") == ["panic=pause"]
    assert len([o for o in _value(argv, "-object") if o.startswith("filter-dump")]) == 2
    assert "-incoming" not in argv


def test_without_a_standby_the_data_disk_lock_is_exclusive(tmp_path: Path) -> None:
    argv = _argv(_spec(phase_standby=False), tmp_path)
    assert _value(argv, "-device").count("virtio-blk-pci,drive=data,id=data0") == 1


def test_a_standby_starts_paused_in_its_slot_with_its_own_console(tmp_path: Path) -> None:
    unit = MachinePaths.for_unit(tmp_path, "vm")
    paths = unit.with_slot("a")
    argv = build_cmdline(_spec(forward=["40000:80"]), kernel="/k", initrd="/i", paths=paths, accel="tcg",
                         standby=True)
    assert "-S" in argv and "-incoming" not in argv
    assert _value(argv, "-pidfile") == [str(unit.dir / "qemu-a.pid")]
    assert any(v.startswith(f"unix:{unit.dir}/qmp-a.sock,") for v in _value(argv, "-qmp"))
    chardevs = _value(argv, "-chardev")
    assert f"file,id=console,path={unit.dir}/console-a.log,append=on" in chardevs
    assert any(c.startswith(f"socket,id=gate,path={unit.dir}/gate-a.sock,") for c in chardevs)
    blockdevs = _value(argv, "-blockdev")
    assert any(b.endswith(f"filename={unit.dir}/sys-a.qcow2") for b in blockdevs)
    assert any(b.endswith(f"filename={unit.dir}/data.img") for b in blockdevs)  # the unit's one data disk


def test_slots_share_the_unit_files_and_keep_their_own() -> None:
    unit = MachinePaths(Path("/s/qemu/vm"), Path("/s/qemu/vm"))
    a = unit.with_slot("a")
    for shared in ("console", "qemu_log", "data_disk", "phase_image"):
        assert getattr(a, shared) == getattr(unit, shared)
    assert unit.slot_console == unit.console and a.slot_console == Path("/s/qemu/vm/console-a.log")
    assert [f.name for f in unit.slot_files()] == ["qmp.sock", "gate.sock", "qemu.pid", "sys.qcow2",
                                                   "net-tx.pcap", "net-rx.pcap", "ram"]
    assert [f.name for f in a.slot_files()] == ["qmp-a.sock", "gate-a.sock", "qemu-a.pid", "sys-a.qcow2",
                                                "net-tx-a.pcap", "net-rx-a.pcap", "ram-a", "console-a.log"]
    assert a.ram.parent == unit.ram.parent and str(unit.ram).startswith("/dev/shm/enmei-")
    assert unit.data_disk not in a.slot_files() and unit.console not in a.slot_files()


def test_kvm_incoming_exit_on_panic_and_extra_args(tmp_path: Path) -> None:
    argv = _argv(_spec(panic_action="exit", extra_args=["-rtc", "base=utc"]), tmp_path, accel="kvm",
                 incoming=True, daemonize=False)
    assert _value(argv, "-cpu") == ["host"]
    assert _value(argv, "-action") == ["panic=shutdown"]
    assert _value(argv, "-incoming") == ["defer"]
    assert "-daemonize" not in argv
    assert argv[-2:] == ["-rtc", "base=utc"]


def test_accel_must_be_chosen_first(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tcg or kvm"):
        _argv(_spec(), tmp_path, accel="auto")


def test_kernel_append_has_console_and_extra_args() -> None:
    text = kernel_append(_spec(kernel_args=["enmei.version=2.0"]))
    assert text.split()[0] == "console=ttyS0"
    assert "panic=-1" in text.split()
    assert text.endswith("enmei.version=2.0")


def test_dump_directions_match_the_netdev_queues(tmp_path: Path) -> None:
    paths = MachinePaths.for_unit(tmp_path, "vm")
    # On the user netdev, queue rx sees what the guest sends.
    assert dump_object(paths, "tx")["queue"] == "rx"
    assert dump_object(paths, "rx")["queue"] == "tx"
    assert dump_object(paths, "tx")["file"] == str(paths.net_dump("tx"))


def test_sockets_move_to_a_short_folder_when_the_path_is_too_long(tmp_path: Path) -> None:
    short = MachinePaths.for_unit(tmp_path, "vm")
    assert short.qmp.parent == short.dir
    deep = tmp_path / ("d" * 90)
    long = MachinePaths.for_unit(deep, "vm")
    assert long.qmp.parent != long.dir
    assert len(str(long.qmp)) < 108
    assert long.sock_dir == MachinePaths.for_unit(deep, "vm").sock_dir  # stable: adoption finds it
    assert long.console.parent == long.dir
