"""Shadow update of a VM unit with real TCG guests: a clone boots the new initramfs while the original
serves, the clone is swapped in with a short gap, writes acknowledged meanwhile are on the disk after;
a clone that cannot boot is rolled back and the original never stopped serving."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from enmei.clock import wait_for
from enmei.visor.qemu import ImageInfo, build
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.shadow import UpdateFailed, read_record
from support.wait import scaled

from .conftest import VmHarness, http_get, until_answer

pytestmark = [pytest.mark.integration, pytest.mark.qemu]


@pytest.fixture(scope="session")
def image_v2(qemu_image: ImageInfo) -> ImageInfo:
    """The same kernel and guest with another service version in its initramfs (the "update")."""
    return build("shadow-v2", service_version="2.0")


@dataclass
class Traffic:
    """A prober of ``/version`` every 10 ms and a writer of synced lines every 50 ms, both on the unit's port."""

    port: int
    probes: list[tuple[float, bool, str]] = field(default_factory=list)
    acked: list[str] = field(default_factory=list)

    async def probe(self) -> None:
        while True:
            t = time.monotonic()
            try:
                status, body = await http_get(self.port, "/version", 0.5)
                self.probes.append((t, status == 200, body.strip()))
            except (OSError, TimeoutError):
                self.probes.append((t, False, ""))
            await asyncio.sleep(0.01)

    async def write(self) -> None:
        n = 0
        while True:
            n += 1
            line = f"w{n}"
            with contextlib.suppress(OSError, TimeoutError):
                if await http_get(self.port, f"/cgi-bin/data?put={line}", 2.0) == (200, "stored\n"):
                    self.acked.append(line)
            await asyncio.sleep(0.05)

    def longest_gap_s(self, since: float) -> float:
        """The longest time between two good answers after ``since``."""
        good = [t for t, ok, _ in self.probes if ok and t >= since]
        return max((b - a for a, b in itertools.pairwise(good)), default=0.0)


@contextlib.asynccontextmanager
async def traffic(port: int) -> AsyncIterator[Traffic]:
    tr = Traffic(port)
    tasks = [asyncio.create_task(tr.probe()), asyncio.create_task(tr.write())]
    try:
        yield tr
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_shadow_update_swaps_in_the_new_guest_and_keeps_every_acknowledged_write(
        vmh: VmHarness, image_v2: ImageInfo) -> None:
    b = vmh.backend()
    spec = vmh.spec(phase_standby=True)
    port = int(spec.forward[0].split(":")[0])
    first = await b.start("vm", spec)
    assert (await until_answer(port, "/version")).startswith("enmei-demo 1.0")
    assert await http_get(port, "/cgi-bin/data?put=before") == (200, "stored\n")
    steps: list[str] = []
    async with traffic(port) as tr:
        await vmh.wait_for("a few writes", lambda: len(tr.acked) >= 3, 30)
        t0 = time.monotonic()
        report = await b.shadow_update("vm", kernel=image_v2.kernel, initrd=image_v2.initrd,
                                       image=image_v2.directory, clone_timeout_s=scaled(60.0),
                                       on_step=lambda s, facts: steps.append(s))
        n = len(tr.acked)
        await vmh.wait_for("writes to the updated guest", lambda: len(tr.acked) >= n + 3, 30)
        gap = tr.longest_gap_s(t0)
        served_during = [ok for t, ok, _ in tr.probes if t0 <= t]
    assert report["outcome"] == "updated", report
    assert steps == ["clone", "boot", "snapshot", "swap", "verify"]
    assert report["replaced_pid"] == first.pid and report["pid"] != first.pid
    # the clone resumed with the unit's port before the original was paused and killed (its exit is off
    # the interruption), and its gate opened only once the original was gone
    at = report["swap_stamps_mono"]
    assert at["start"] <= at["unplugged"] <= at["forwarded"] <= at["resumed"] <= at["paused"] <= at["killed"] \
        <= at["gone"] <= at["gate"], at
    assert report["downtime_s"] == pytest.approx(at["resumed"] - at["start"], abs=1e-3)
    assert report["mount_s"] is not None and report["mount_s"] > 0
    assert (await until_answer(port, "/version")).startswith("enmei-demo 2.0")
    assert (await until_answer(port, "/cgi-bin/app")).startswith("enmei-demo 2.0")
    # the original answered while the clone booted (seconds), then one short gap at the swap
    assert sum(served_during) > 50, "the service did not answer during the update"
    assert gap < 3.0, f"the service was away {gap:.2f}s"
    stored = (await until_answer(port, "/cgi-bin/data")).split()
    assert "before" in stored
    missing = [w for w in tr.acked if w not in stored]
    assert missing == [], f"acknowledged writes lost: {missing}"
    ident = b.identity("vm")
    assert ident is not None and ident.extra["kernel"] == image_v2.kernel and ident.extra["initrd"] == image_v2.initrd
    # the update persists: a later cold start boots the updated files
    paths_dir = Path(str(ident.extra["dir"]))
    rec = json.loads((paths_dir / "update.json").read_text())
    assert rec["format"] == 1 and rec["initrd"] == image_v2.initrd and rec["base_image"] == spec.image
    assert rec["verified"] is True
    assert len(vmh.our_qemus()) <= 2
    await b.stop("vm", timeout_s=5.0)
    again = await b.start("vm", spec)
    assert again.extra["initrd"] == image_v2.initrd
    assert (await until_answer(port, "/version")).startswith("enmei-demo 2.0")


async def test_a_clone_that_cannot_boot_is_rolled_back_while_the_original_serves(
        vmh: VmHarness, tmp_path: Path) -> None:
    b = vmh.backend()
    spec = vmh.spec(phase_standby=True)
    port = int(spec.forward[0].split(":")[0])
    first = await b.start("vm", spec)
    assert await b.wait_standby("vm", scaled(60))
    broken = tmp_path / "broken-initrd.img"
    broken.write_bytes(b"not an initramfs\n" * 64)  # the kernel finds no init in it and panics
    steps: list[str] = []
    async with traffic(port) as tr:
        await vmh.wait_for("a few writes", lambda: len(tr.acked) >= 3, 30)
        t0 = time.monotonic()
        with pytest.raises(UpdateFailed) as failed:
            await b.shadow_update("vm", kernel=vmh.image.kernel, initrd=str(broken),
                                  clone_timeout_s=scaled(40.0), on_step=lambda s, facts: steps.append(s))
        gap = tr.longest_gap_s(t0)
    report = failed.value.report
    assert report["outcome"] == "rolled-back" and steps == ["clone", "rollback"], (steps, report)
    assert "rolled back" in str(failed.value)
    ident = b.identity("vm")
    assert ident is not None and ident.pid == first.pid  # the original never stopped
    assert gap < 2.0, f"the original was away {gap:.2f}s during the failed update"
    assert (await until_answer(port, "/version")).startswith("enmei-demo 1.0")
    assert read_record(MachinePaths.for_unit(vmh.state_dir, "vm"), spec.image) is None
    # a standby of the original is prepared again (the pre-update phase image was put back)
    assert await b.wait_standby("vm", scaled(60)), b.standby("vm")
    stored = (await until_answer(port, "/cgi-bin/data")).split()
    assert [w for w in tr.acked if w not in stored] == []


async def test_an_updated_guest_failing_its_verification_is_rolled_back_after_the_swap(
        vmh: VmHarness, image_v2: ImageInfo) -> None:
    b = vmh.backend()
    # (a short ready_timeout_s bounds how long the verification waits for an answer: half of it)
    spec = vmh.spec(phase_standby=True, ready_timeout_s=scaled(40.0))
    port = int(spec.forward[0].split(":")[0])
    first = await b.start("vm", spec)
    assert await b.wait_standby("vm", scaled(60))
    assert await http_get(port, "/cgi-bin/data?put=before") == (200, "stored\n")
    steps: list[str] = []
    # the updated guest boots and swaps in, but never answers the verification's path (a 404)
    with pytest.raises(UpdateFailed) as failed:
        await b.shadow.update("vm", image=image_v2.directory, clone_timeout_s=scaled(60.0), verify_s=1.0,
                              verify_path="/no-such-page", on_step=lambda s, facts: steps.append(s))
    report = failed.value.report
    assert report["outcome"] == "rolled-back" and steps == ["clone", "boot", "snapshot", "swap", "verify",
                                                            "rollback"], (steps, report)
    assert report["steps"]["rollback"]["after"] == "swap" and report["steps"]["rollback"]["pid"]
    # the pre-update guest runs again: the pre-update boot files, its version, its data
    ident = b.identity("vm")
    assert ident is not None and ident.pid not in (first.pid, report["pid"])
    assert ident.extra["initrd"] == vmh.image.initrd
    assert (await until_answer(port, "/version")).startswith("enmei-demo 1.0")
    assert "before" in (await until_answer(port, "/cgi-bin/data")).split()
    assert read_record(MachinePaths.for_unit(vmh.state_dir, "vm"), spec.image) is None
    assert await b.wait_standby("vm", scaled(60)), b.standby("vm")
    assert len(vmh.our_qemus()) == 2


@pytest.mark.timeout(900)  # a cold restart and a shadow update under TCG; the bench bounds its waits (× patience)
def test_update_benchmark_smoke(qemu_image: ImageInfo, image_v2: ImageInfo) -> None:
    from enmei.bench.update import KEYS, run

    # probes every 50 ms here (the figures' resolution is not what this checks; the bench keeps its 5 ms)
    result = run(runs=1, accel="tcg", probe_interval_s=0.05, patience=max(2.0, scaled(1.0)))
    assert set(KEYS) <= set(result) and result["runs"] == 1
    assert result["writes_acknowledged"] > 0 and result["writes_lost"] == 0
    # the shadow update's interruption is its swap, far shorter than a cold restart's boot
    assert 0 < result["shadow_downtime_s"] < result["cold_downtime_s"]
    assert result["ratio"] == pytest.approx(result["shadow_downtime_s"] / result["cold_downtime_s"], abs=2e-5)
    assert result["shadow_p99_gap_s"] == result["shadow_downtime_s"]  # one run: its own p99
    assert list(result["shadow_steps_runs_s"][0]) == ["clone", "boot", "snapshot", "swap", "verify"]


_DYING_SUPERVISOR = """
import asyncio, json, os, sys
from pathlib import Path
from enmei.clock import SystemClock
from enmei.config.qemu import QemuUnit
from enmei.visor.qemu import QemuBackend

async def main():
    b = QemuBackend(clock=SystemClock(), state_dir=Path(sys.argv[1]), emit=lambda e: None)
    await b.start("vm", QemuUnit.model_validate_json(sys.argv[2]))
    assert await b.wait_standby("vm", 120), b.standby("vm")

    def step(name, facts):
        if name == sys.argv[4]:  # the supervisor dies here, without stopping or closing anything
            print(json.dumps({"identity": b.identity("vm").to_json(), "facts": facts}), flush=True)
            os._exit(0)

    await b.shadow_update("vm", image=sys.argv[3], clone_timeout_s=120.0, on_step=step)
    os._exit(3)

asyncio.run(main())
"""


@pytest.mark.parametrize("die_at", ["boot", "swap"])
async def test_a_supervisor_dying_in_a_shadow_update_leaves_one_guest_serving_for_its_successor(
        vmh: VmHarness, image_v2: ImageInfo, tmp_path: Path, die_at: str) -> None:
    from enmei.visor.base import Identity

    spec = vmh.spec(phase_standby=True)
    port = int(spec.forward[0].split(":")[0])
    script = tmp_path / "supervisor.py"
    script.write_text(_DYING_SUPERVISOR)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), str(vmh.state_dir),
                                                spec.model_dump_json(), image_v2.directory, die_at,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await wait_for(proc.communicate(), scaled(300))
    assert proc.returncode == 0, err.decode()[-2000:]
    left = json.loads(out.decode().strip().splitlines()[-1])
    identity = Identity.from_json(left["identity"])
    # dead in the clone's boot: the original and the clone outlived it; after the swap: the updated guest
    # (and a standby being prepared, perhaps)
    assert 1 <= len(vmh.our_qemus()) <= 2

    b = vmh.backend()
    assert await b.adopt("vm", spec, identity)
    await vmh.wait_for("only the adopted guest (and its new standby)", lambda: identity.pid in
                       [p.pid for p in vmh.our_qemus()] and len(vmh.our_qemus()) <= 2, 30)
    # the boot files a later cold start uses are those of the guest that runs
    rec = read_record(MachinePaths.for_unit(vmh.state_dir, "vm"), spec.image)
    assert (rec is None) if die_at == "boot" else (rec is not None and rec["initrd"] == image_v2.initrd)
    want = "enmei-demo 1.0" if die_at == "boot" else "enmei-demo 2.0"
    assert (await until_answer(port, "/version")).startswith(want)
    # (dead right after the swap: the gate may not have reached the guest; the successor opens it)
    await vmh.wait_for("the data disk mounted", lambda: "data-ready" in b.phases("vm"), 60)
    assert await http_get(port, "/cgi-bin/data?put=after") == (200, "stored\n")
    # the successor can update the unit (again): every QEMU of the dead supervisor's update is gone
    assert await b.wait_standby("vm", scaled(60)), b.standby("vm")
    target = image_v2 if die_at == "boot" else vmh.image
    report = await b.shadow_update("vm", kernel=target.kernel, initrd=target.initrd, clone_timeout_s=scaled(60.0))
    assert report["outcome"] == "updated"
    assert (await until_answer(port, "/version")).startswith("enmei-demo 2.0" if die_at == "boot" else "enmei-demo 1.0")
    assert "after" in (await until_answer(port, "/cgi-bin/data")).split()
