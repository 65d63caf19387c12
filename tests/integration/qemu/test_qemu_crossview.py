"""Issue 17 on real TCG guests of the test image: a process hidden by a bind mount over its /proc entry is
found by comparing the guest's own listing with its memory read from outside, amid benign churn that is
never accused; a churn-only guest with KASLR on is judged clean. Two boots in all."""

from __future__ import annotations

from pathlib import Path

import pytest

from enmei.bench import crossview
from enmei.model import VerdictKind
from enmei.visor.qemu.kernelinfo import load
from support.wait import scaled

from .conftest import VmHarness

pytestmark = [pytest.mark.integration, pytest.mark.qemu]


@pytest.fixture(scope="module")
def specimen_image() -> crossview.ImageInfo:
    return crossview.specimen_image()


async def test_a_process_hidden_from_proc_is_found_and_churn_is_not(vmh: VmHarness,
                                                                      specimen_image: crossview.ImageInfo) -> None:
    b = vmh.backend()
    k = load(Path(specimen_image.kernel))
    assert k.release == specimen_image.kernel_release and k.build_id  # derived from the image's own kernel
    s = await crossview.session(b, vmh.state_dir, specimen_image, "hide-bind", 2, kernel=k,
                                max_trial_s=scaled(90.0))
    assert s.hidden_pid is not None, "the specimen did not report its pid"
    for t in s.trials:
        assert t["verdict"] == str(VerdictKind.HIDDEN_PROCESS), s.trials
        assert t["pid"] == s.hidden_pid and t["evidence"]["comm"] == "sleep" and t["evidence"]["how"] == "proc"
        assert t["evidence"]["comparisons_in_a_row"] >= 2
    assert s.list_ms and max(s.list_ms) < scaled(500.0)


async def test_churn_alone_is_clean_with_kaslr_on(vmh: VmHarness, specimen_image: crossview.ImageInfo) -> None:
    b = vmh.backend()
    s = await crossview.session(b, vmh.state_dir, specimen_image, "churn", 2, memory_mib=512, kaslr=True,
                                max_trial_s=scaled(90.0))
    assert [t["verdict"] for t in s.trials] == [str(VerdictKind.CLEAN)] * 2, s.trials
    assert s.hidden_pid is None
