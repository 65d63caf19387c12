"""Benchmark: hidden processes found by cross-view (issue 17), on real TCG guests of the test image.

A *session* boots one guest of the test image (``enmei image build --name crossview --specimens``) with
shared RAM, the guest's own listing (``psview``) and benign churn (``churn``: short-lived processes,
bursts of 40), and for the specimen also ``hide-bind`` (a sleep hidden by a bind mount over its
``/proc/PID``; the guest names its pid on the console). In it, *trials* run one after another: each
starts a fresh ``crossview`` detector and feeds it the ``crossview`` probe's observations until its
first verdict. A trial of the specimen is a true positive if that verdict is ``hidden_process`` for the
hidden pid; a trial of churn is a false positive if it is ``hidden_process`` at all (and so is a
specimen trial's verdict naming another pid). Trials in one session share the boot (and the one hidden
process): they measure the detector's repeatability, not independent infections — ``sessions`` says
how many boots there were.

``list_ms_256mib`` / ``list_ms_1gib``: the median time to walk the task list from outside in a 256 MiB
guest (``nokaslr``) and a 1 GiB guest (KASLR on); ``locate_ms_*`` the one-off vmcoreinfo scan per boot.

    python -m enmei.bench.crossview --trials 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.clock import SystemClock
from enmei.config.qemu import QemuUnit
from enmei.demo.ports import free_ports
from enmei.detect.crossview import CrossviewDetector, CrossviewOptions
from enmei.model import Verdict, VerdictKind
from enmei.monitor.crossview import read_outside
from enmei.monitor.crossview_probe import CrossviewProbe
from enmei.visor.qemu import ImageInfo, QemuBackend
from enmei.visor.qemu import image as images
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.guestmem import GuestMemory
from enmei.visor.qemu.kernelinfo import KernelInfo, load

__all__ = ["IMAGE", "KEYS", "Session", "run", "session", "specimen_image"]

IMAGE = "crossview"
KEYS = ("trials", "tpr", "fpr", "by_specimen", "list_ms_256mib", "list_ms_1gib", "shadow_scan_s")
#: workload -> the guest's specimens (churn always; module churn where modules are looked at)
WORKLOADS: dict[str, tuple[str, ...]] = {
    "churn": ("churn", "modchurn"),
    "hide-bind": ("churn", "hide-bind"),
    "hide-task": ("churn", "hide-task"),
    "hide-module": ("churn", "modchurn", "hide-module", "tamper-bin"),
}
#: workloads whose boot ends with a VM Shadow scan of its data disk (churn: a negative; tamper-bin: a positive)
SHADOW_SCANNED = ("churn", "hide-module")
#: what the tamper-bin specimen leaves on the data disk (what the scan must name)
TAMPERED = ("/data/bin/ls", "/data/bin/.enmei-stash")
#: the module specimen's name (what a hidden_module verdict must name)
HIDDEN_MODULE = "cv_hide_self"
_HIDDEN_PID = re.compile(r"enmei-specimen: hide-(?:bind|task) pid (\d+)")


def specimen_image() -> ImageInfo:
    """The test image with the specimens (built once; cached while its inputs stay)."""
    return images.build(IMAGE, specimens=True)


def unit_spec(image: ImageInfo, specimens: list[str], *, memory_mib: int = 256, kaslr: bool = False,
              psview_s: float = 1.0, file_dirs: tuple[str, ...] = ()) -> QemuUnit:
    args = [f"enmei.specimen={','.join(['psview', *specimens])}", f"enmei.psview={psview_s:g}"]
    if file_dirs:
        args.append(f"enmei.fileview={','.join(file_dirs)}")
    if not kaslr:
        args.append("nokaslr")
    (port,) = free_ports(1)
    return QemuUnit.model_validate({
        "backend": "qemu", "image": image.directory, "accel": "tcg", "forward": [f"{port}:80"],
        "ready_timeout_s": 180.0, "phase_standby": False, "ram": "shared", "memory_mib": memory_mib,
        "kernel_args": args})


@dataclass
class Session:
    """What one boot gave: its trials (first verdicts), the hidden pid, listing timings."""

    workload: str
    memory_mib: int
    kaslr: bool
    hidden_pid: int | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    list_ms: list[float] = field(default_factory=list)
    locate_ms: float | None = None
    boot_s: float = 0.0
    shadow: dict[str, Any] | None = None  # the VM Shadow scan at the end: findings, seconds, reason


async def session(backend: QemuBackend, state_dir: Path, image: ImageInfo, workload: str, trials: int, *,
                  unit: str = "cv-vm", memory_mib: int = 256, kaslr: bool = False, max_trial_s: float = 90.0,
                  options: CrossviewOptions | None = None, kernel: KernelInfo | None = None,
                  say: Callable[[str], None] | None = None) -> Session:
    """Boot a guest running ``workload`` (a key of ``WORKLOADS``; churn runs in all), run ``trials``
    detector runs in it, measure the outside listing, stop the guest (also on failure)."""
    specimens = list(WORKLOADS[workload])
    k: KernelInfo = kernel if kernel is not None else await asyncio.to_thread(load, Path(image.kernel))
    clock = SystemClock()
    out = Session(workload, memory_mib, kaslr)
    t0 = clock.monotonic()
    await backend.start(unit, unit_spec(image, specimens, memory_mib=memory_mib, kaslr=kaslr))
    out.boot_s = round(clock.monotonic() - t0, 2)
    paths = MachinePaths.for_unit(state_dir, unit)
    console = backend.log_path(unit, "console") or paths.console
    probe = CrossviewProbe(unit, "crossview", 0.5, clock, ram_path=paths.ram, console_path=console, kernel=k,
                           console_from=0)
    try:
        out.locate_ms = await asyncio.to_thread(_locate_ms, paths.ram, k)
        for i in range(trials):
            det = CrossviewDetector(unit, options or CrossviewOptions(kind="crossview"))
            first: Verdict | None = None
            start = clock.monotonic()
            while first is None and clock.monotonic() - start < max_trial_s:
                obs = await probe.observe()
                if obs.values.get("compared"):
                    out.list_ms.append(probe.last_views[0].read_ms)
                verdicts = det.feed(obs).verdicts
                first = verdicts[0] if verdicts else None
                if first is None:
                    await clock.sleep(0.5)
            if out.hidden_pid is None:
                out.hidden_pid = await asyncio.to_thread(_hidden_pid, console)
            row = {"workload": workload, "verdict": str(first.kind) if first else None,
                   "pid": first.evidence.get("pid") if first else None,
                   "module": first.evidence.get("name") if first else None,
                   "detect_s": round(clock.monotonic() - start, 2),
                   "evidence": dict(first.evidence) if first else {}}
            out.trials.append(row)
            if say is not None:
                say(f"{workload} trial {i + 1}/{trials}: {row['verdict']} pid {row['pid']} "
                    f"(hidden pid {out.hidden_pid}) after {row['detect_s']} s")
        if workload in SHADOW_SCANNED:
            out.shadow = await shadow_scan(backend, unit, image, state_dir)
            if say is not None:
                say(f"{workload} VM Shadow scan: {out.shadow}")
    finally:
        await probe.aclose()
        with contextlib.suppress(Exception):
            await backend.stop(unit, timeout_s=5.0)
    return out


async def shadow_scan(backend: QemuBackend, unit: str, image: ImageInfo, state_dir: Path) -> dict[str, Any]:
    """One VM Shadow scan of ``unit``'s data disk (``enmei.monitor.vmshadow``): a copy taken while the guest
    is paused, checked by AIDE against the image's baseline. ``shadow_scan_s`` is the whole of it (copy,
    journal replay, tree, AIDE); the baseline, made once per image, is timed apart."""
    from enmei.monitor.vmshadow import VmShadow
    from enmei.visor.qemu.image import cache_root

    t0 = time.perf_counter()
    shadow = VmShadow(Path(image.initrd), cache_root())
    try:
        await asyncio.to_thread(shadow.baseline)
    except RuntimeError as exc:
        return {"findings": [], "reason": str(exc), "shadow_scan_s": None}
    baseline_s = time.perf_counter() - t0
    copy = state_dir / f"{unit}-shadow.img"
    try:
        t1 = time.perf_counter()
        paused_s = await backend.copy_data_disk(unit, copy)
        scan = await asyncio.to_thread(shadow.scan, copy)
        total = time.perf_counter() - t1
    finally:
        copy.unlink(missing_ok=True)
    return {"findings": [f.to_json() for f in scan.findings], "reason": scan.reason,
            "shadow_scan_s": round(total, 2), "paused_s": round(paused_s, 3), "baseline_s": round(baseline_s, 2),
            "steps_s": scan.seconds}


def _locate_ms(ram: Path, k: KernelInfo) -> float:
    with GuestMemory.open(ram) as mem:
        t = time.perf_counter()
        mem.locate(release=k.release, build_id=k.build_id)
        ms = (time.perf_counter() - t) * 1e3
        read_outside(mem, k, "list")
        return round(ms, 1)


def _hidden_pid(console: Path) -> int | None:
    with contextlib.suppress(OSError):
        found = _HIDDEN_PID.findall(console.read_text(errors="replace"))
        return int(found[-1]) if found else None
    return None


def summarize(sessions: list[Session]) -> dict[str, Any]:
    """``{trials, tpr, fpr, by_specimen, list_ms_256mib, list_ms_1gib, ...}`` over ``sessions``."""
    by: dict[str, dict[str, Any]] = {}
    tp = fn = fp = tn = 0
    accusing = (str(VerdictKind.HIDDEN_PROCESS), str(VerdictKind.HIDDEN_MODULE))
    for s in sessions:
        row = by.setdefault(s.workload, {"trials": 0, "found": 0, "accused": 0, "inconclusive": 0, "sessions": 0,
                                         "detect_s": []})
        row["sessions"] += 1
        for t in s.trials:
            row["trials"] += 1
            row["inconclusive"] += int(t["verdict"] in (None, str(VerdictKind.INCONCLUSIVE)))
            if s.workload != "churn":
                if s.workload == "hide-module":
                    hit = t["verdict"] == str(VerdictKind.HIDDEN_MODULE) and t.get("module") == HIDDEN_MODULE
                else:
                    hit = (t["verdict"] == str(VerdictKind.HIDDEN_PROCESS) and s.hidden_pid is not None
                           and t["pid"] == s.hidden_pid)
                tp += int(hit)
                fn += int(not hit)
                row["found"] += int(hit)
                if t["verdict"] in accusing and not hit:
                    fp += 1  # a process accused that is not the hidden one
                    row["accused"] += 1
                if hit:
                    row["detect_s"].append(t["detect_s"])
            else:
                bad = t["verdict"] in accusing
                fp += int(bad)
                tn += int(not bad)
                row["accused"] += int(bad)
    for row in by.values():
        ds = row.pop("detect_s")
        row["median_detect_s"] = round(statistics.median(ds), 2) if ds else None
    def median_ms(mib: int) -> float | None:
        ms = [m for s in sessions if s.memory_mib == mib for m in s.list_ms]
        return round(statistics.median(ms), 2) if ms else None

    def locate(mib: int) -> float | None:
        ms = [s.locate_ms for s in sessions if s.memory_mib == mib and s.locate_ms is not None]
        return max(ms) if ms else None

    scans = [s for s in sessions if s.shadow is not None]
    shadow_s = [s.shadow["shadow_scan_s"] for s in scans if s.shadow and s.shadow.get("shadow_scan_s") is not None]
    shadow = {"scans": len(scans),
              "found": sum(1 for s in scans if s.workload != "churn" and s.shadow
                           and set(TAMPERED) <= {f["path"] for f in s.shadow["findings"]}),
              "positives": sum(1 for s in scans if s.workload != "churn"),
              "false_alarms": sum(1 for s in scans if s.workload == "churn" and s.shadow and s.shadow["findings"]),
              "negatives": sum(1 for s in scans if s.workload == "churn"),
              "inconclusive": sum(1 for s in scans if s.shadow and s.shadow.get("reason"))}
    return {"trials": sum(len(s.trials) for s in sessions), "sessions": len(sessions),
            "tpr": round(tp / (tp + fn), 3) if tp + fn else None,
            "fpr": round(fp / (fp + tn), 3) if fp + tn else None,
            "by_specimen": by, "list_ms_256mib": median_ms(256), "list_ms_1gib": median_ms(1024),
            "locate_ms_256mib": locate(256), "locate_ms_1gib": locate(1024),
            "shadow_scan_s": max(shadow_s) if shadow_s else None, "shadow": shadow,
            "boot_s": [s.boot_s for s in sessions]}


_PLAN = (("churn", 256, False), ("hide-bind", 1024, True), ("hide-task", 256, False), ("hide-module", 512, True))


def run(trials: int = 50, *, sessions: int = 4, say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``trials`` trials in all over ``sessions`` boots (at least one per workload): churn (256 MiB,
    nokaslr), the process hidden by a bind mount (1 GiB, KASLR), the one unlinked by a kernel module
    (256 MiB) and the module hiding itself (512 MiB, KASLR), in turn; churn sessions get half the trials
    (the negatives), the specimens share the rest. The summary plus ``per_session``."""
    image = specimen_image()
    k = load(Path(image.kernel))
    plan = [_PLAN[i % len(_PLAN)] for i in range(max(len(_PLAN), sessions))]
    churns = [i for i, p in enumerate(plan) if p[0] == "churn"]
    others = [i for i, p in enumerate(plan) if p[0] != "churn"]
    each = [0] * len(plan)
    for group, total in ((churns, trials // 2), (others, trials - trials // 2)):
        for j, i in enumerate(group):
            each[i] = total // len(group) + (1 if j < total % len(group) else 0)
    done: list[Session] = []

    async def go(workdir: Path) -> None:
        state = workdir / "state"
        backend = QemuBackend(clock=SystemClock(), state_dir=state, emit=lambda event: None)
        try:
            for i, ((workload, mib, kaslr), n) in enumerate(zip(plan, each, strict=True)):
                if n:  # a unit of its own per boot: its console log holds that boot's listings only
                    done.append(await session(backend, state, image, workload, n, unit=f"cv-{i}", memory_mib=mib,
                                              kaslr=kaslr, kernel=k, say=say))
        finally:
            await backend.close()

    with tempfile.TemporaryDirectory(prefix="enmei-bench-crossview-") as tmp:
        asyncio.run(go(Path(tmp)))
    out = summarize(done)
    out["per_session"] = [{"workload": s.workload, "memory_mib": s.memory_mib, "kaslr": s.kaslr,
                           "hidden_pid": s.hidden_pid, "locate_ms": s.locate_ms, "trials": s.trials,
                           "shadow": s.shadow}
                          for s in done]
    return out


def main() -> None:  # pragma: no cover - a manual entry point
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--sessions", type=int, default=4)
    a = ap.parse_args()
    print(json.dumps(run(a.trials, sessions=a.sessions, say=print)))


if __name__ == "__main__":  # pragma: no cover
    main()
