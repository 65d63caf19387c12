"""VM Shadow with the real tools (aide, cpio, e2fsck, debugfs) on a small made-up image and data disk, no guest:
the baseline is the image as built, a clean disk gives no finding, a file dropped into a system path of the
disk is found, the service's own data files are not, a broken disk is inconclusive with the reason."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from enmei.monitor.vmshadow import VmShadow
from enmei.visor.qemu.cpio import CpioWriter

pytestmark = pytest.mark.integration


def initrd(path: Path) -> Path:
    w = CpioWriter()
    for d in ("bin", "etc", "data", "dev"):
        w.directory(d)
    w.file("bin/busybox", b"\x7fELF pretend", mode=0o755)
    w.symlink("bin/ls", "busybox")
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.char_device("dev/console", 5, 1)
    path.write_bytes(gzip.compress(w.finish()))
    return path


def disk(path: Path, files: dict[str, bytes], tmp: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(path)], check=True, capture_output=True)
    for name, data in files.items():
        parent = str(Path(name).parent)
        if parent != ".":
            subprocess.run(["debugfs", "-w", "-R", f"mkdir {parent}", str(path)], check=True, capture_output=True)
        src = tmp / "payload"
        src.write_bytes(data)
        subprocess.run(["debugfs", "-w", "-R", f"write {src} {name}", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture
def shadow(tmp_path: Path) -> VmShadow:
    for tool in ("aide", "debugfs", "e2fsck", "cpio", "mkfs.ext4"):
        if shutil.which(tool) is None and not Path("/sbin", tool).exists():
            pytest.fail(f"{tool} is not installed; run: apt-get install -y aide e2fsprogs cpio")
    return VmShadow(initrd(tmp_path / "initrd.img"), tmp_path / "cache")


def test_a_clean_disk_has_no_finding_and_a_dropped_binary_is_found(shadow: VmShadow, tmp_path: Path) -> None:
    base = shadow.baseline()
    assert base.is_file() and shadow.baseline() == base  # made once, then cached
    clean = shadow.scan(disk(tmp_path / "clean.img", {"app.log": b"tick\n", "notes.txt": b"hi\n"}, tmp_path))
    assert clean.conclusive and clean.findings == (), (clean.reason, clean.findings)
    assert clean.seconds["total_s"] < 60
    bad = shadow.scan(disk(tmp_path / "bad.img", {"bin/ls": b"#!/bin/sh\n", "app.log": b"x\n"}, tmp_path))
    assert bad.conclusive, bad.reason
    assert {(f.what, f.path) for f in bad.findings} == {("added", "/data/bin"), ("added", "/data/bin/ls")}


def test_a_disk_that_is_not_ext4_is_inconclusive(shadow: VmShadow, tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * (1 << 20))
    scan = shadow.scan(junk)
    assert not scan.conclusive and "e2fsck exited" in scan.reason and scan.findings == ()


def test_a_missing_tool_is_inconclusive(shadow: VmShadow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "aide" else real(tool))
    scan = shadow.scan(tmp_path / "none.img")
    assert not scan.conclusive and "aide is not installed" in scan.reason


def test_the_outside_file_view_reads_the_disk(shadow: VmShadow, tmp_path: Path) -> None:
    from enmei.monitor.crossview_files import read_files

    d = disk(tmp_path / "files.img", {"bin/ls": b"#!/bin/sh\n", "app.log": b"x\n"}, tmp_path)
    v = read_files(d, ["/data/bin", "/data", "/data/nothing"])
    assert v.conclusive, v.reason
    assert v.files == {"/data/bin/ls", "/data/app.log", "/data/bin", "/data/lost+found"}
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * (1 << 20))
    bad = read_files(junk, ["/data/bin"])
    assert not bad.conclusive and "cannot be read" in bad.reason
