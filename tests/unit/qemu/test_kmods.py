"""kmods: the test-only kernel modules' sources ship, their build tree is named from the kernel release,
the headers' Makefile is pointed at the unpacked tree, and a missing compiler names its package. The
downloader and the command runner are the I/O edges, given as callables (the real build runs in the
image build and the QEMU integration test)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from enmei.visor.qemu import kmods
from enmei.visor.qemu.errors import ImageError, MissingToolError


def test_the_sources_ship_and_say_what_they_are() -> None:
    src = kmods.sources()
    assert sorted(src) == ["cv_benign.c", "cv_hide_self.c", "cv_hide_task.c"]
    assert all(b"TEST IMAGES ONLY" in data for data in src.values())
    assert len(kmods.sources_digest()) == 64


def test_a_release_that_is_not_debian_s_is_refused() -> None:
    with pytest.raises(ValueError, match="not a Debian one"):
        kmods.header_packages("6.18.44-custom")


def test_a_missing_compiler_names_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "gcc-12" else real(tool))
    with pytest.raises(MissingToolError, match="apt-get install -y gcc-12"):
        kmods.build("t", "6.1.0-57-amd64", "6.1.192-3", tmp_path, lambda *a: tmp_path, lambda *a: None)


def test_the_build_uses_the_unpacked_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    asked: list[tuple[str, str]] = []
    runs: list[list[str]] = []
    tree = tmp_path / "headers/usr/src/linux-headers-6.1.0-57-amd64"

    def download(pkg: str, version: str, size: int) -> Path:
        asked.append((pkg, version))
        return tmp_path / f"{pkg}.deb"

    def run(cmd: list[str], cwd: Path) -> None:
        runs.append(cmd)
        if cmd[0] == "dpkg-deb" and cmd[2].endswith("amd64.deb"):
            tree.mkdir(parents=True)
            (tree / "Makefile").write_text("include /usr/src/linux-headers-6.1.0-57-common/Makefile\n")
        if cmd[0] == "make":  # what kbuild leaves: one .ko per object
            for name in ("cv_benign", "cv_hide_self", "cv_hide_task"):
                (tmp_path / "kmod" / f"{name}.ko").write_bytes(b"\x7fELF" + name.encode())

    out = kmods.build("t", "6.1.0-57-amd64", "6.1.192-3", tmp_path, download, run)
    assert asked == [("linux-headers-6.1.0-57-amd64", "6.1.192-3"), ("linux-headers-6.1.0-57-common", "6.1.192-3"),
                     ("linux-kbuild-6.1", "6.1.192-3")]
    common = tmp_path / "headers/usr/src/linux-headers-6.1.0-57-common"
    assert (tree / "Makefile").read_text() == f"include {common}/Makefile\n"
    assert runs[-1] == ["make", "-C", str(tree), f"M={tmp_path / 'kmod'}", "modules"]
    assert (tmp_path / "kmod/Kbuild").read_text() == "obj-m := cv_benign.o cv_hide_self.o cv_hide_task.o\n"
    assert sorted(out) == ["cv_benign.ko", "cv_hide_self.ko", "cv_hide_task.ko"]


def test_a_build_that_leaves_no_module_is_an_image_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: f"/usr/bin/{tool}")
    tree = tmp_path / "headers/usr/src/linux-headers-6.1.0-57-amd64"
    tree.mkdir(parents=True)
    (tree / "Makefile").write_text("include /usr/src/x/Makefile\n")
    with pytest.raises(ImageError, match=r"make left no cv_benign\.ko"):
        kmods.build("t", "6.1.0-57-amd64", "6.1.192-3", tmp_path, lambda *a: tmp_path, lambda *a: None)
