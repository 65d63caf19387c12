"""Issue 17 on real TCG guests of the test image: a process hidden by a bind mount over its /proc entry is
found by comparing the guest's own listing with its memory read from outside, amid benign churn that is
never accused; a churn-only guest with KASLR on is judged clean; a process unlinked from the task list
and a module unlinked from the module list by test-only kernel modules are found. Three boots in all."""

from __future__ import annotations

from pathlib import Path

import pytest

from enmei.bench import crossview
from enmei.clock import SystemClock
from enmei.detect.crossview import CrossviewDetector, CrossviewOptions
from enmei.model import Verdict, VerdictKind
from enmei.monitor.crossview_probe import CrossviewProbe
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.kernelinfo import load
from support.wait import auntil, scaled

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
    assert [t["verdict"] for t in s.trials] == [str(VerdictKind.CLEAN)] * 2, [
        (t["verdict"], t.get("evidence")) for t in s.trials]
    assert s.hidden_pid is None
    # its data disk, copied while paused and checked by AIDE against the image's baseline: nothing changed
    assert s.shadow is not None and s.shadow["reason"] == "" and s.shadow["findings"] == [], s.shadow
    assert s.shadow["shadow_scan_s"] < scaled(60.0)


@pytest.mark.timeout(300)
async def test_kernel_module_specimens_are_found_and_module_churn_is_not(
        vmh: VmHarness, specimen_image: crossview.ImageInfo) -> None:
    """One boot with both kernel-module specimens (built at image-build time against the image kernel's own
    headers): a sleep unlinked from the task list by cv_hide_task, and cv_hide_self unlinked from the
    module list, amid process churn and a module loaded and unloaded every 0.6 s. Both are found, with
    how = "list" (seen only by the view that does not trust the list); the file that the tamper-bin
    specimen's patched ls hides is found on the data disk read from outside; nothing else is accused. Then a VM
    Shadow scan of its data disk finds the tampered ls that the tamper-bin specimen left there."""
    b = vmh.backend()
    k = load(Path(specimen_image.kernel))
    unit = "cv-kmod"
    spec = crossview.unit_spec(specimen_image, ["churn", "modchurn", "hide-task", "hide-module", "tamper-bin"],
                               file_dirs=("/data/bin",))
    await b.start(unit, spec)
    paths = MachinePaths.for_unit(vmh.state_dir, unit)
    console = b.log_path(unit, "console") or paths.console
    clock = SystemClock()
    probe = CrossviewProbe(unit, "crossview", 0.5, clock, ram_path=paths.ram, console_path=console, kernel=k,
                           console_from=0, data_disk=paths.data_disk, file_dirs=("/data/bin",))
    det = CrossviewDetector(unit, CrossviewOptions(kind="crossview"))
    found: list[Verdict] = []
    want = {VerdictKind.HIDDEN_PROCESS, VerdictKind.HIDDEN_MODULE, VerdictKind.HIDDEN_FILE}
    seen_benign = False
    try:
        async def both() -> bool | None:
            nonlocal seen_benign
            obs = await probe.observe()
            found.extend(v for v in det.feed(obs).verdicts if v.kind != VerdictKind.CLEAN)
            for v in probe.last_module_views:
                seen_benign |= any(m.name == "cv_benign" for m in v.modules.values())
            kinds = {v.kind for v in found}
            return True if want <= kinds else None

        await auntil(both, 150.0, "a hidden process, module and file", every_s=0.5)
        text = console.read_text(errors="replace")
        assert "hide-task failed" not in text and "hide-module failed" not in text, text[-2000:]
        pid = crossview._hidden_pid(console)
        assert pid is not None, text[-2000:]
        await auntil(lambda: "tamper-bin wrote" in console.read_text(errors="replace"), 60.0, "the tamper-bin specimen")
        shadow = await crossview.shadow_scan(b, unit, specimen_image, vmh.state_dir)
    finally:
        await probe.aclose()
        await b.stop(unit, timeout_s=5.0)
    by_kind = {v.kind: v for v in found}
    assert [v.kind for v in found].count(VerdictKind.HIDDEN_PROCESS) == 1, found
    assert [v.kind for v in found].count(VerdictKind.HIDDEN_MODULE) == 1, found
    task = by_kind[VerdictKind.HIDDEN_PROCESS].evidence
    assert (task["pid"], task["comm"], task["how"]) == (pid, "sleep", "list")
    mod = by_kind[VerdictKind.HIDDEN_MODULE].evidence
    assert (mod["name"], mod["how"]) == (crossview.HIDDEN_MODULE, "list")
    assert seen_benign, "the module churn was never seen from outside"
    # the file the patched ls hides, on the disk read from outside (only it: the rest of /data/bin is listed)
    assert [v.evidence["path"] for v in found if v.kind == VerdictKind.HIDDEN_FILE] == ["/data/bin/.enmei-stash"]
    assert len(found) == 3, found  # no INCONCLUSIVE, no other accusation
    # VM Shadow: the tampered ls and the file it hides, on the data disk, found by AIDE from outside
    assert shadow["reason"] == "", shadow
    assert {(f["what"], f["path"]) for f in shadow["findings"]} >= {("added", p) for p in crossview.TAMPERED}, shadow
    assert shadow["shadow_scan_s"] < scaled(60.0)
