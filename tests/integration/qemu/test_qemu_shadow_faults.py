"""Issue 14, bad input: the disk fills during a shadow update. The unit's state dir is a small tmpfs this
test mounts (and unmounts); its data disk is allocated up front, so only the update's own files need
room. Full before the update: refused, nothing done. Filled once the clone runs: the clone's snapshot
cannot be written, the update is rolled back, the original serves throughout with every write."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from enmei.errors import VisorError
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.image import data_disk
from enmei.visor.qemu.shadow import UpdateFailed, read_record
from support.wait import scaled

from .conftest import VmHarness, http_get, until_answer
from .test_qemu_shadow import traffic

pytestmark = [pytest.mark.integration, pytest.mark.qemu]

DATA_MIB = 16


@pytest.fixture
def small_state(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/state`` on a 448 MiB tmpfs (the unit's disks, its standby's and one update's copies)."""
    mnt = tmp_path / "state"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=448m,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(where: Path) -> Path:
    """A file that takes all the room left on ``where``'s file system (bounded: the tmpfs' size)."""
    filler = where / "filler"
    chunk = b"\xa5" * 2**20
    with open(filler, "wb") as f:
        for _ in range(4096):
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    # the page that filled last may be partial: take the last bytes too
    with contextlib.suppress(OSError), open(filler, "ab") as f:
        for _ in range(4096):
            f.write(b"\xa5" * 4096)
            f.flush()
    return filler


@pytest.mark.timeout(900)
async def test_a_disk_filling_during_a_shadow_update_rolls_it_back_and_the_original_serves(
        small_state: Path, vmh: VmHarness, tmp_path: Path) -> None:
    from enmei.visor.qemu import build

    v2 = build("shadow-v2", service_version="2.0")
    assert vmh.state_dir == small_state
    paths = MachinePaths.for_unit(vmh.state_dir, "vm")
    # the data disk made and allocated before the start: the guest's writes never need new room
    data_disk(paths.data_disk, DATA_MIB, unit="vm")
    fd = os.open(paths.data_disk, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, DATA_MIB * 2**20)
    finally:
        os.close(fd)
    b = vmh.backend()
    spec = vmh.spec(phase_standby=True, data_disk_mib=DATA_MIB)
    port = int(spec.forward[0].split(":")[0])
    first = await b.start("vm", spec)
    assert await b.wait_standby("vm", scaled(60)), b.standby("vm")
    assert await http_get(port, "/cgi-bin/data?put=before") == (200, "stored\n")

    # 1. full before the update: refused before anything is done (no clone, no partial copy)
    filler = fill(small_state)
    with pytest.raises(VisorError) as refused:
        await b.shadow_update("vm", image=v2.directory, clone_timeout_s=scaled(60.0))
    assert not isinstance(refused.value, UpdateFailed)
    assert "not enough room for the update" in str(refused.value) and "MiB free" in str(refused.value)
    assert not (paths.dir / "pre-update-sys.qcow2").exists()
    assert b.identity("vm").pid == first.pid  # type: ignore[union-attr]
    filler.unlink()

    # 2. filled once the clone runs: its snapshot finds no room; rolled back while the original serves
    steps: list[str] = []
    facts: dict[str, dict[str, object]] = {}

    def on_step(step: str, f: Mapping[str, object]) -> None:
        steps.append(step)
        facts[step] = dict(f)
        if step == "clone":
            fill(small_state)

    async with traffic(port) as tr:
        await vmh.wait_for("a few writes", lambda: len(tr.acked) >= 3, 30)
        t0 = time.monotonic()
        with pytest.raises(UpdateFailed) as failed:
            await b.shadow_update("vm", image=v2.directory, clone_timeout_s=scaled(60.0), on_step=on_step)
        failed_after = time.monotonic() - t0
        n = len(tr.acked)
        await vmh.wait_for("writes after the failed update", lambda: len(tr.acked) >= n + 3, 30)
        gap = tr.longest_gap_s(t0)
    report = failed.value.report
    assert report["outcome"] == "rolled-back" and steps[-1] == "rollback" and "swap" not in steps, (steps, report)
    # the journal says why, at once (not as a boot that never reached service-ready)
    assert "the disk filled during the clone's boot" in str(facts["rollback"]["why"]), facts["rollback"]
    assert failed_after < scaled(60.0), f"the update waited {failed_after:.1f}s: as long as the clone's boot limit"
    assert "rolled back, the original kept serving" in str(failed.value)
    ident = b.identity("vm")
    assert ident is not None and ident.pid == first.pid  # the original never stopped
    assert gap < 2.0, f"the original was away {gap:.2f}s during the failed update"
    assert (await until_answer(port, "/version")).startswith("enmei-demo 1.0")
    assert read_record(paths, spec.image) is None
    stored = (await until_answer(port, "/cgi-bin/data")).split()
    assert "before" in stored and [w for w in tr.acked if w not in stored] == []
    # room again: a standby of the original is made from its own (put back) phase image
    (small_state / "filler").unlink()
    assert await b.wait_standby("vm", scaled(90)), b.standby("vm")
    assert len(vmh.our_qemus()) == 2
