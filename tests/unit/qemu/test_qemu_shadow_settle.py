"""``shadow.settle``: after a supervisor died in a shadow update, the update's files are made to agree
with the guest its successor adopted (files only: no QEMU here)."""

from __future__ import annotations

import json
from pathlib import Path

from enmei.visor.qemu import phase_image
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.shadow import read_record, record_path, settle

V1 = ("/img/v1/vmlinuz", "/img/v1/initrd")


def _unit(tmp_path: Path, current_id: str, backup_id: str | None) -> MachinePaths:
    paths = MachinePaths(tmp_path / "vm", tmp_path / "vm")
    paths.dir.mkdir(parents=True)
    paths.phase_image.write_bytes(b"image " + current_id.encode())
    phase_image.meta_path(paths).write_text(json.dumps({"format": 1, "id": current_id}))
    if backup_id is not None:
        (paths.dir / "pre-update-sys.qcow2").write_bytes(b"image " + backup_id.encode())
        (paths.dir / "pre-update-sys.json").write_text(json.dumps({"format": 1, "id": backup_id}))
    return paths


def _files(tmp_path: Path, name: str) -> tuple[str, str]:
    d = tmp_path / name
    d.mkdir()
    (d / "vmlinuz").write_bytes(b"k")
    (d / "initrd").write_bytes(b"i")
    return str(d / "vmlinuz"), str(d / "initrd")


def test_died_before_the_swap_the_originals_phase_image_is_put_back(tmp_path: Path) -> None:
    paths = _unit(tmp_path, "clone", "original")  # the clone's image had replaced the original's
    done = settle(paths, "v1", V1, running=V1, phase_image_id="original")
    assert paths.phase_image.read_bytes() == b"image original"
    assert json.loads(phase_image.meta_path(paths).read_text())["id"] == "original"
    assert not (paths.dir / "pre-update-sys.qcow2").exists() and not (paths.dir / "pre-update-sys.json").exists()
    assert done == ["the pre-update phase image put back (the update died before its swap)"]
    assert settle(paths, "v1", V1, running=V1, phase_image_id="original") == []  # once is enough


def test_died_after_the_swap_the_backup_goes_and_a_missing_record_is_written(tmp_path: Path) -> None:
    v2 = _files(tmp_path, "v2")
    paths = _unit(tmp_path, "clone", "original")
    done = settle(paths, "v1", V1, running=v2, phase_image_id="clone")
    assert paths.phase_image.read_bytes() == b"image clone"
    assert not (paths.dir / "pre-update-sys.qcow2").exists()
    rec = read_record(paths, "v1")
    assert rec is not None and (rec["kernel"], rec["initrd"]) == v2 and rec["verified"] is False
    assert rec["previous"] == {"kernel": V1[0], "initrd": V1[1]}
    assert len(done) == 2 and "names the running guest's boot files" in done[1]


def test_a_record_naming_files_that_do_not_run_is_removed_or_rewritten(tmp_path: Path) -> None:
    v1, v2 = _files(tmp_path, "v1"), _files(tmp_path, "v2")
    paths = _unit(tmp_path, "x", "x")  # an update was in flight (its pre-update image is there)
    record = json.dumps({"format": 1, "base_image": "v1", "kernel": v2[0], "initrd": v2[1]})
    record_path(paths).write_text(record)
    # the guest that runs boots the configured image: a later cold start must too
    assert settle(paths, "v1", v1, running=v1, phase_image_id="x")[-1] == (
        "the update record removed (the running guest boots the configured image)")
    assert not record_path(paths).exists()
    # no update in flight: the record is the operator's business (left alone); so when it names what runs,
    # or nothing is known about the configured image
    record_path(paths).write_text(record)
    assert settle(paths, "v1", v1, running=v1, phase_image_id="x") == []
    again = _unit(tmp_path / "again", "x", "x")
    record_path(again).write_text(record)
    assert settle(again, "v1", v1, running=v2, phase_image_id="x") == ["the pre-update phase image dropped"]
    third = _unit(tmp_path / "third", "x", "x")
    record_path(third).write_text(record)
    assert settle(third, "v1", None, running=v1, phase_image_id="x") == ["the pre-update phase image dropped"]
    assert read_record(paths, "v1") is not None and read_record(third, "v1") is not None


def test_a_cold_start_drops_a_left_backup(tmp_path: Path) -> None:
    paths = _unit(tmp_path, "clone", "original")
    assert settle(paths, "v1", None, running=None, phase_image_id=None) == ["the pre-update phase image dropped"]
    assert not (paths.dir / "pre-update-sys.qcow2").exists()
    assert paths.phase_image.read_bytes() == b"image clone"  # a first boot makes a new one anyway
