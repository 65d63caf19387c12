"""Shared guest RAM (``ram``): the command line it makes, and the room check before a start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enmei.config.qemu import QemuUnit
from enmei.errors import StartError
from enmei.visor.qemu import ram
from enmei.visor.qemu.cmdline import MachinePaths, build_cmdline


def _spec(**kw: object) -> QemuUnit:
    return QemuUnit.model_validate({"backend": "qemu", **kw})


def _paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MachinePaths:
    root = tmp_path / "shm"
    root.mkdir()
    monkeypatch.setattr("enmei.visor.qemu.cmdline.RAM_ROOT", root)
    return MachinePaths(tmp_path / "qemu" / "vm", tmp_path / "qemu" / "vm")


def test_shared_ram_is_a_shared_memory_backend_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _paths(tmp_path, monkeypatch)
    argv = build_cmdline(_spec(ram="shared", memory_mib=320), kernel="k", initrd="i", paths=paths, accel="tcg")
    assert argv[argv.index("-machine") + 1] == "pc,memory-backend=ram0"
    obj = [argv[i + 1] for i, a in enumerate(argv) if a == "-object" and argv[i + 1].startswith("memory-backend")]
    assert obj == [f"memory-backend-file,id=ram0,size=320M,mem-path={paths.ram},share=on"]
    private = build_cmdline(_spec(ram="private"), kernel="k", initrd="i", paths=paths, accel="tcg")
    assert private[private.index("-machine") + 1] == "pc"
    assert not any("memory-backend" in a for a in private)


def test_auto_is_shared_with_room_and_private_without(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _paths(tmp_path, monkeypatch)
    assert ram.resolve("vm", _spec(), paths).ram == "shared"
    monkeypatch.setattr(ram, "free_bytes", lambda folder: 100 * 2**20)
    assert ram.resolve("vm", _spec(memory_mib=256), paths).ram == "private"
    assert ram.resolve("vm", _spec(memory_mib=64, phase_standby=False), paths).ram == "shared"
    with pytest.raises(StartError) as err:
        ram.resolve("vm", _spec(ram="shared", memory_mib=256), paths)
    text = str(err.value)
    assert "512 MiB" in text and "100 MiB free" in text and "twice for the warm standby" in text


def test_a_missing_tmpfs_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("enmei.visor.qemu.cmdline.RAM_ROOT", tmp_path / "nowhere")
    paths = MachinePaths(tmp_path / "vm", tmp_path / "vm")
    with pytest.raises(StartError, match="does not exist"):
        ram.resolve("vm", _spec(ram="shared"), paths)
    assert ram.resolve("vm", _spec(), paths).ram == "private"


def test_fresh_never_reuses_a_left_file_and_checks_its_folder(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _paths(tmp_path, monkeypatch)
    ram.fresh(paths)
    assert paths.ram_dir.stat().st_mode & 0o777 == 0o700
    paths.ram.write_bytes(b"x" * 10)
    assert ram.check_file(paths, _spec(memory_mib=64)) is not None and "10 bytes" in str(
        ram.check_file(paths, _spec(memory_mib=64)))
    ram.fresh(paths)
    assert not paths.ram.exists()
    assert "missing" in str(ram.check_file(paths, _spec()))
    os.chmod(paths.ram_dir, 0o755)
    with pytest.raises(OSError, match="not a private directory"):
        ram.fresh(paths)
    os.chmod(paths.ram_dir, 0o700)
    ram.remove(paths)
    assert not paths.ram_dir.exists()


def test_the_sweep_removes_guest_ram_no_process_holds_and_keeps_the_rest(tmp_path: Path) -> None:
    """RAM folders of killed guests (nothing has their files open or mapped) go; a folder whose file a
    process has open, or only mapped, stays, as do a folder just made or with a file just made (its QEMU may
    be starting) and folders that are not enmei's private ones."""
    import mmap
    import time

    def folder(name: str, *files: str, mode: int = 0o700) -> Path:
        d = tmp_path / name
        d.mkdir(mode=mode)
        d.chmod(mode)
        for f in files:
            (d / f).write_bytes(b"\0" * 4096)
        return d

    dead, opened = folder("enmei-dead", "ram", "ram-b"), folder("enmei-open", "ram")
    mapped = folder("enmei-map", "ram")
    young, old = folder("enmei-young"), folder("enmei-old")
    starting = folder("enmei-starting", "ram")  # a file just made: its QEMU may be about to map it
    hour_ago = (time.time() - 3600, time.time() - 3600)
    for d in (dead, old):
        for f in d.iterdir():
            os.utime(f, hour_ago)
        os.utime(d, hour_ago)
    shared, other = folder("enmei-shared", "ram", mode=0o755), folder("other", "ram")
    with open(opened / "ram", "rb") as f, open(mapped / "ram", "r+b") as g:
        view = mmap.mmap(g.fileno(), 4096)
        g.close()  # only the mapping holds it now
        try:
            removed = ram.sweep_unheld(tmp_path, min_age_s=60)
        finally:
            view.close()
        assert not f.closed
    assert sorted(removed) == sorted([dead, old])
    assert not dead.exists() and not old.exists()
    for kept in (opened, mapped, young, starting, shared, other):
        assert kept.exists(), kept
