"""Image building without network or root: module order, tool checks, clear errors (no QEMU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enmei.visor.qemu import image
from enmei.visor.qemu.errors import ImageError, MissingToolError


def _ko(depends: str) -> bytes:
    return b"\x7fELF....\0license=GPL\0depends=" + depends.encode() + b"\0name=x\0"


def test_modules_come_with_their_dependencies_first(tmp_path: Path) -> None:
    mods = tmp_path / "kernel"
    (mods / "a").mkdir(parents=True)
    (mods / "a" / "virtio.ko").write_bytes(_ko(""))
    (mods / "a" / "virtio_ring.ko").write_bytes(_ko("virtio"))
    (mods / "a" / "virtio_net.ko").write_bytes(_ko("virtio_ring,virtio,failover"))
    (mods / "a" / "failover.ko").write_bytes(_ko(""))
    (mods / "a" / "pvpanic-mmio.ko").write_bytes(_ko("pvpanic"))
    (mods / "a" / "pvpanic.ko").write_bytes(_ko(""))
    got = [name for name, _ in image._collect_modules("img", tmp_path, ("virtio_net", "pvpanic_mmio"))]
    assert got == ["virtio.ko", "virtio_ring.ko", "failover.ko", "virtio_net.ko", "pvpanic.ko",
                   "pvpanic-mmio.ko"]
    with pytest.raises(ImageError, match="ext4"):
        image._collect_modules("img", tmp_path, ("ext4",))


def test_missing_busybox_static_names_the_install_command(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "_dpkg_version", lambda pkg: None)
    with pytest.raises(MissingToolError) as info:
        image.build(cache_dir=tmp_path)
    assert info.value.install_command == "apt-get install -y busybox-static"
    assert "apt-get install -y busybox-static" in str(info.value)


def test_a_dynamic_busybox_is_not_enough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "busybox"
    # 64-bit ELF with one PT_INTERP program header: dynamically linked.
    header = bytearray(64)
    header[:5] = b"\x7fELF\x02"
    header[32:40] = (64).to_bytes(8, "little")
    header[54:56] = (56).to_bytes(2, "little")
    header[56:58] = (1).to_bytes(2, "little")
    fake.write_bytes(bytes(header) + (3).to_bytes(4, "little") + bytes(52))
    assert not image._is_static(fake)
    monkeypatch.setattr(image, "_BUSYBOX", fake)
    monkeypatch.setattr(image, "_dpkg_version", lambda pkg: "1:1.35")
    with pytest.raises(MissingToolError, match="busybox-static"):
        image.build(cache_dir=tmp_path)


def test_no_kernel_package_known_says_apt_get_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "_apt", lambda cmd: None)
    with pytest.raises(ImageError, match="apt-get update"):
        image._kernel_package("img", None, tmp_path)
    # Offline, but downloaded before: the cached package is used.
    (tmp_path / "linux-image-6.1.0-9-amd64_6.1.27-1_amd64.deb").write_bytes(b"deb")
    assert image._kernel_package("img", None, tmp_path) == ("linux-image-6.1.0-9-amd64", "6.1.27-1", 3)


def test_resolve_names_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="enmei image build --name nope"):
        image.resolve("nope", cache_dir=tmp_path)


def test_resolve_finds_a_name_or_a_directory(tmp_path: Path) -> None:
    d = image.images_dir(tmp_path) / "demo-abc"
    d.mkdir(parents=True)
    (d / "vmlinuz").write_bytes(b"k")
    (d / "initrd.img").write_bytes(b"i")
    info = image.ImageInfo(name="demo", directory=str(d), kernel=str(d / "vmlinuz"),
                           initrd=str(d / "initrd.img"), kernel_package="linux-image-x", kernel_version="1",
                           kernel_release="x", busybox_version="1", service_version="1.0",
                           inputs_hash="abc", built_wall=1.0, size_bytes=2)
    (d / "image.json").write_text(json.dumps(info.to_json()))
    (image.images_dir(tmp_path) / "demo.json").write_text(json.dumps(info.to_json()))
    assert image.resolve("demo", cache_dir=tmp_path) == info
    assert image.resolve(str(d), cache_dir=tmp_path) == info
    assert image.list_images(tmp_path) == [info]
    (d / "vmlinuz").unlink()
    with pytest.raises(ImageError, match="missing"):
        image.resolve("demo", cache_dir=tmp_path)


def test_cache_root_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert image.cache_root() == tmp_path / "enmei"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert image.cache_root() == Path.home() / ".cache" / "enmei"


def test_guest_scripts_ship_as_package_data() -> None:
    scripts = image._guest_scripts()
    for name in ("rc.sh", "gate.sh", "keys.sh", "power.sh", "down.sh", "cgi/app.sh", "cgi/fault.sh",
                 "cgi/data.sh"):
        assert scripts[name].startswith(b"#!/bin/sh\n"), name
    assert all(b"enmei-phase" in scripts[n] for n in ("rc.sh", "gate.sh"))


def test_errors_read_as_sentences() -> None:
    err = MissingToolError("default", "build", "qemu-img", ["qemu-utils"])
    assert str(err) == ("image 'default': build failed: qemu-img is not installed; "
                        "run: apt-get install -y qemu-utils")
