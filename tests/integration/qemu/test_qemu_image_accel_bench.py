"""The image build (cached), the real KVM probe, and a one-run smoke of the reboot benchmark."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from enmei.visor.qemu import ImageInfo, build
from enmei.visor.qemu.accel import accel_key, choose_accel, probe_kvm
from support.wait import scaled

pytestmark = [pytest.mark.integration, pytest.mark.qemu]


def test_an_unchanged_image_is_not_rebuilt(qemu_image: ImageInfo) -> None:
    before = os.stat(qemu_image.initrd).st_mtime_ns
    steps: list[tuple[str, float, float]] = []
    again = build(progress=lambda d, c, t: steps.append((d, c, t)))
    assert again.inputs_hash == qemu_image.inputs_hash and again.directory == qemu_image.directory
    assert os.stat(qemu_image.initrd).st_mtime_ns == before
    assert steps[-1][1:] == (100.0, 100.0)
    assert Path(qemu_image.kernel).stat().st_size > 1 << 20
    meta = json.loads((Path(qemu_image.directory) / "image.json").read_text())
    assert meta["kernel_package"].startswith("linux-image-") and meta["format"] == 1


async def test_the_kvm_probe_is_bounded_and_its_verdict_cached(qemu_image: ImageInfo, tmp_path: Path) -> None:
    calls = 0

    async def probe() -> bool:
        nonlocal calls
        calls += 1
        return await probe_kvm(qemu_image.kernel, qemu_image.initrd, timeout_s=10.0)

    loop = asyncio.get_running_loop()
    t = loop.time()
    key = accel_key()
    first = await choose_accel("auto", cache_file=tmp_path / "accel.json", key=key, probe=probe)
    assert loop.time() - t < 20
    assert first in ("tcg", "kvm")
    assert await choose_accel("auto", cache_file=tmp_path / "accel.json", key=key, probe=probe) == first
    assert calls <= 1  # 0 when /dev/kvm is not usable at all


@pytest.mark.timeout(900)  # three kinds of reboot under TCG; the bench bounds each wait itself (30-60 s × patience)
def test_reboot_benchmark_smoke(qemu_image: ImageInfo) -> None:
    from enmei.bench.reboot import run

    # A loaded machine boots TCG slowly (patience), and a TCG guest probed every 10 ms beside other work
    # dropped the one panic request (no verdict in 120 s, a load run): the smoke run probes every 50 ms
    # (the figures' resolution is not what it checks; `enmei bench reboot` keeps its 10 ms).
    result = run(runs=1, accel="tcg", probe_interval_s=0.05, patience=max(2.0, scaled(1.0)))
    assert set(result) >= {"cold_downtime_s", "phase_downtime_s", "ratio", "runs", "phase_inplace_downtime_s",
                           "phase_standby_downtime_s", "phase_inplace_ratio", "phase_standby_ratio"}
    assert result["runs"] == 1
    # each kind of run did what it says: the standby runs went through a ready standby
    assert result["phase_standby_via_runs"] == ["standby"] and result["phase_inplace_via_runs"] == ["in-place"]
    assert result["phase_downtime_s"] == result["phase_standby_downtime_s"]  # the backend's default
    assert 0 < result["phase_standby_downtime_s"] < result["phase_inplace_downtime_s"] < result["cold_downtime_s"]
    # (the figures are rounded: 4 decimals for seconds, 5 for ratios)
    assert result["ratio"] == pytest.approx(result["phase_downtime_s"] / result["cold_downtime_s"], abs=2e-5)
    assert result["probe_max_in_flight"] == 12 and result["standby_rss_mib"] > 0  # 2 × ceil(0.3 s / 50 ms)
