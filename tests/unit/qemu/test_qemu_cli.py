"""``enmei image`` commands without building anything (the build itself is an integration test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from enmei.visor.qemu import image
from enmei.visor.qemu.cli import app

runner = CliRunner()


def _fake_image(cache: Path, name: str = "demo") -> image.ImageInfo:
    d = image.images_dir(cache) / f"{name}-abc"
    d.mkdir(parents=True)
    for f in ("vmlinuz", "initrd.img"):
        (d / f).write_bytes(b"x")
    info = image.ImageInfo(name=name, directory=str(d), kernel=str(d / "vmlinuz"), initrd=str(d / "initrd.img"),
                           kernel_package="linux-image-x", kernel_version="6.1", kernel_release="x",
                           busybox_version="1.35", service_version="1.0", inputs_hash="abcdef123456789",
                           built_wall=1.7e9, size_bytes=2)
    for meta in (d / "image.json", image.images_dir(cache) / f"{name}.json"):
        meta.write_text(json.dumps(info.to_json()))
    return info


def test_list_and_path(tmp_path: Path) -> None:
    empty = runner.invoke(app, ["list", "--cache-dir", str(tmp_path)])
    assert empty.exit_code == 0 and "enmei image build" in empty.output
    info = _fake_image(tmp_path)
    listed = runner.invoke(app, ["list", "--cache-dir", str(tmp_path)])
    assert listed.exit_code == 0 and "demo" in listed.output and "abcdef123456" in listed.output
    found = runner.invoke(app, ["path", "demo", "--cache-dir", str(tmp_path)])
    assert found.exit_code == 0 and found.output.strip() == info.directory
    missing = runner.invoke(app, ["path", "other", "--cache-dir", str(tmp_path)])
    assert missing.exit_code == 1 and "enmei image build --name other" in missing.output


def test_build_failure_is_one_line_with_the_install_command(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "_dpkg_version", lambda pkg: None)
    result = runner.invoke(app, ["build", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "apt-get install -y busybox-static" in result.output
