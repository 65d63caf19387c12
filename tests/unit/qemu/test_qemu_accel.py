"""Accelerator choice: given values pass, auto probes once and caches (fake probe, no QEMU)."""

from __future__ import annotations

import json
from pathlib import Path

from enmei.visor.qemu.accel import choose_accel


class Probe:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        return self.answer


async def test_explicit_choices_need_no_probe(tmp_path: Path) -> None:
    probe = Probe(True)
    for accel in ("tcg", "kvm"):
        assert await choose_accel(accel, cache_file=tmp_path / "a.json", key="k", probe=probe) == accel
    assert probe.calls == 0
    assert not (tmp_path / "a.json").exists()


async def test_auto_without_a_usable_kvm_device_is_tcg(tmp_path: Path) -> None:
    probe = Probe(True)
    got = await choose_accel("auto", cache_file=tmp_path / "a.json", key="k", probe=probe,
                             kvm=tmp_path / "no-kvm")
    assert got == "tcg" and probe.calls == 0


async def test_auto_probes_once_and_caches_per_key(tmp_path: Path) -> None:
    kvm = tmp_path / "kvm"
    kvm.write_text("")  # readable and writable, like a usable /dev/kvm
    cache = tmp_path / "cache" / "accel.json"
    hangs = Probe(False)
    assert await choose_accel("auto", cache_file=cache, key="k1", probe=hangs, kvm=kvm) == "tcg"
    assert await choose_accel("auto", cache_file=cache, key="k1", probe=hangs, kvm=kvm) == "tcg"
    assert hangs.calls == 1
    assert json.loads(cache.read_text()) == {"k1": "tcg"}
    works = Probe(True)  # another QEMU or host kernel: probed again
    assert await choose_accel("auto", cache_file=cache, key="k2", probe=works, kvm=kvm) == "kvm"
    assert works.calls == 1
    assert json.loads(cache.read_text()) == {"k1": "tcg", "k2": "kvm"}


async def test_a_broken_cache_is_rewritten(tmp_path: Path) -> None:
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    cache = tmp_path / "accel.json"
    cache.write_text("{not json")
    probe = Probe(False)
    assert await choose_accel("auto", cache_file=cache, key="k", probe=probe, kvm=kvm) == "tcg"
    assert json.loads(cache.read_text()) == {"k": "tcg"}
