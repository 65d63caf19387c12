"""Benchmark: the same guest update done by a cold reboot and by a shadow update (ShadowReboot).

One VM unit (the demo image, a forwarded port, a warm standby) serves throughout. "The update" is a
real reboot into other boot files: the demo image and a second build of it (``shadow-v2``: the same
kernel, an initramfs whose ``/etc/enmei/version`` says 2.0; the guest's service reports it). Each run
updates the guest to the other version, ``runs`` times each way:

* ``cold``: what an operator does without enmei's help: the unit's config names the other image, the
  VM is stopped (ACPI power button) and started again; it serves once it has booted;
* ``shadow``: ``QemuBackend.shadow_update``: a clone boots the other files while the original serves,
  then takes over (``enmei.visor.qemu.shadow``).

Throughout, an external prober sends ``GET /version`` every ``probe_interval_s`` (5 ms), each in its own
connection, bounded by ``probe_timeout_s`` (``enmei.bench.reboot``'s prober), at most ``max_in_flight``
(8) waiting at once — a tick is skipped beyond that (``probe_ticks_skipped``): with 120 waiting, as many as
the timeout allows, the connections QEMU's user-mode network kept retrying into a booting guest made its
cold boot take minutes and it never mounted its data disk (measured: a restart under 5 ms probes took
37 s with 4 in flight, 10.7 s without probes, and did not finish in 150 s with 120) — and a writer stores a
numbered line on the data disk (``/cgi-bin/data?put=``, synced by the guest before it answers) one
after the other, counting those acknowledged.

Downtime of one run = the longest time between two consecutive good answers (HTTP 200 naming the demo
service) around the update's interruption: the stop and start of a cold run, the swap of a shadow run
(the shadow update's own ``swap_mono``). ``*_max_gap_runs_s`` give the longest gap anywhere from the
update's start until the new version answered: while a clone boots beside it, the original answers
more slowly on a loaded 2-core host. ``failed_requests_*`` = probes
that failed in that window, the median over the runs. ``shadow_p99_gap_s`` = the 99th percentile
(nearest rank: the largest of fewer than 100 runs) of the shadow runs' downtimes. ``writes_lost`` =
acknowledged lines missing from the data disk at the end. ``shadow_gap_breakdown_runs_s`` splits each
shadow run's gap: ``before_swap_s`` (the last good answer to the swap's start), the swap's own work
(``kill_s``: the clone checked, the original paused, killed and waited for; ``forward_s``: the unit's
ports moved to the clone; ``cont_s``: the clone resumed), and ``after_resume_s`` (the resumed guest until
its first good answer), with ``timeline_s``: each step of the swap (``enmei.visor.qemu.standby.TIMELINE``;
the old QEMU's kill and exit come after the resume). ``shadow_mount_runs_s``: the updated guest's gate
opening until its data disk was mounted (writes are refused until then).

    python -m enmei.bench.update --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.bench.reboot import _Prober
from enmei.clock import SystemClock, wait_for
from enmei.config.qemu import QemuUnit
from enmei.visor.qemu import ImageInfo, QemuBackend
from enmei.visor.qemu import image as images

__all__ = ["KEYS", "run"]

_UNIT = "bench-vm"
_SWAP_PARTS = ("kill_s", "forward_s", "cont_s")  # the swap's steps, as ``StandbyManager.take_over`` reports them
KEYS = ("cold_downtime_s", "shadow_downtime_s", "ratio", "shadow_p99_gap_s", "failed_requests_cold",
        "failed_requests_shadow", "writes_acknowledged", "writes_lost", "runs")


@dataclass
class _Writer:
    """Stores ``w1``, ``w2``... one after the other; keeps those acknowledged (``stored``)."""

    port: int
    timeout_s: float = 1.0
    interval_s: float = 0.02
    retry_s: float = 0.5
    n: int = 0
    acked: list[str] = field(default_factory=list)
    acked_at: dict[str, float] = field(default_factory=dict)  # line -> when its acknowledgement came

    async def loop(self) -> None:
        while True:
            self.n += 1
            line = f"w{self.n}"
            with contextlib.suppress(OSError, TimeoutError):
                data = await _get(self.port, f"/cgi-bin/data?put={line}", self.timeout_s)
                if data.startswith(b"HTTP/1.") and b" 200 " in data[:16] and data.endswith(b"stored\n"):
                    self.acked.append(line)
                    self.acked_at[line] = time.monotonic()
                    await asyncio.sleep(self.interval_s)
                    continue
            # Down or booting: every refused write is a CGI process in the guest, and the guest mounts
            # its data disk at the lowest priority (guest/gate.sh): retrying fast would starve the mount.
            await asyncio.sleep(self.retry_s)


async def _get(port: int, path: str, timeout_s: float) -> bytes:
    reader, writer = await wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        return await wait_for(reader.read(), timeout_s)
    finally:
        writer.close()


def run(runs: int = 5, *, memory_mib: int = 256, accel: str = "auto", probe_interval_s: float = 0.005,
        probe_timeout_s: float = 0.3, max_in_flight: int = 8, cache_dir: Path | None = None,
        patience: float = 1.0) -> dict[str, Any]:
    """Update the guest ``runs`` times by each way; returns ``KEYS`` and the per-run figures.

    Builds the two images first if needed (cached). Starts one QEMU (and its standby, clones) and always
    stops them. ``patience`` multiplies every bound the benchmark waits under (a busy machine); the
    figures are not scaled. Raises ``RuntimeError`` if a run does not end with the new version serving.
    """
    if runs < 1:
        raise ValueError("runs must be at least 1")
    if patience < 1.0:
        raise ValueError(f"patience must be at least 1, not {patience}")
    return asyncio.run(_run(runs, memory_mib, accel, probe_interval_s, probe_timeout_s, max_in_flight, cache_dir,
                            patience))


async def _run(runs: int, memory_mib: int, accel: str, interval_s: float, timeout_s: float, max_in_flight: int,
               cache_dir: Path | None, patience: float) -> dict[str, Any]:
    v1 = await asyncio.to_thread(images.build, cache_dir=cache_dir)
    v2 = await asyncio.to_thread(images.build, "shadow-v2", cache_dir=cache_dir, service_version="2.0")
    versions = {v1.directory: v1.service_version, v2.directory: v2.service_version}
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="enmei-bench-update-") as tmp:
        backend = QemuBackend(clock=SystemClock(), state_dir=Path(tmp), emit=lambda e: None, cache_dir=cache_dir)
        spec = QemuUnit.model_validate({"backend": "qemu", "image": v1.directory, "memory_mib": memory_mib,
                                        "accel": accel, "forward": [f"{port}:80"],
                                        "ready_timeout_s": 60.0 * patience})
        prober = _Prober(port, interval_s, timeout_s, max_in_flight)
        writer = _Writer(port)
        tasks: list[asyncio.Task[None]] = []
        try:
            identity = await backend.start(_UNIT, spec)
            tasks = [asyncio.create_task(prober.loop()), asyncio.create_task(writer.loop())]
            current = v1
            out: dict[str, list[dict[str, Any]]] = {"cold": [], "shadow": []}
            for kind in ("cold", "shadow"):
                for _ in range(runs):
                    target = v2 if current is v1 else v1
                    if not await backend.wait_standby(_UNIT, 90.0 * patience):
                        raise RuntimeError(f"the standby did not get ready: {backend.standby(_UNIT)}")
                    await asyncio.sleep(0.3)  # the service settles
                    if kind == "cold":
                        spec = spec.model_copy(update={"image": target.directory})
                        res = await _cold(backend, prober, spec, target, versions, patience)
                    else:
                        res = await _shadow(backend, prober, target, versions, patience)
                    out[kind].append(res)
                    current = target
            await asyncio.sleep(0.5)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            stored = set((await _get(port, "/cgi-bin/data", 10.0)).partition(b"\r\n\r\n")[2].decode().split())
            lost = [w for w in writer.acked if w not in stored]

            def lost_in(kind: str) -> int:
                return sum(1 for w in lost if any(r["window"][0] <= writer.acked_at[w] <= r["window"][1]
                                                  for r in out[kind]))
            cold = statistics.median(r["downtime_s"] for r in out["cold"])
            shadow_runs = sorted(r["downtime_s"] for r in out["shadow"])
            shadow = statistics.median(shadow_runs)
            p99 = shadow_runs[min(len(shadow_runs) - 1, math.ceil(0.99 * len(shadow_runs)) - 1)]
            result: dict[str, Any] = {
                "cold_downtime_s": round(cold, 4), "shadow_downtime_s": round(shadow, 4),
                "ratio": round(shadow / cold, 5) if cold > 0 else None, "shadow_p99_gap_s": round(p99, 4),
                "failed_requests_cold": statistics.median(r["failed"] for r in out["cold"]),
                "failed_requests_shadow": statistics.median(r["failed"] for r in out["shadow"]),
                "writes_acknowledged": len(writer.acked), "writes_lost": len(lost), "runs": runs,
                "writes_lost_in_cold_runs": lost_in("cold"), "writes_lost_in_shadow_runs": lost_in("shadow")}
            for kind in ("cold", "shadow"):
                result[f"{kind}_downtime_runs_s"] = [round(r["downtime_s"], 4) for r in out[kind]]
                result[f"{kind}_failed_runs"] = [r["failed"] for r in out[kind]]
                result[f"{kind}_took_runs_s"] = [round(r["took_s"], 3) for r in out[kind]]
                result[f"{kind}_max_gap_runs_s"] = [round(r["max_gap_s"], 4) for r in out[kind]]
            result["shadow_swap_runs_s"] = [r.get("swap_s") for r in out["shadow"]]
            result["shadow_steps_runs_s"] = [r.get("steps") for r in out["shadow"]]
            result["shadow_gap_breakdown_runs_s"] = [r.get("breakdown") for r in out["shadow"]]
            result["shadow_mount_runs_s"] = [r.get("mount_s") for r in out["shadow"]]
            result.update({"accel": str(identity.extra.get("accel")), "memory_mib": memory_mib,
                           "probe_interval_s": interval_s, "probe_timeout_s": timeout_s,
                           "probe_max_in_flight": max_in_flight,
                           "probes": len(prober.results), "probe_ticks_skipped": prober.skipped,
                           "kernel": v1.kernel_package, "versions": [v1.service_version, v2.service_version],
                           "lost_examples": lost[:5]})
            return result
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await prober.close()
            with contextlib.suppress(Exception):
                await backend.stop(_UNIT, timeout_s=5.0)
            await backend.close()


async def _cold(backend: QemuBackend, prober: _Prober, spec: QemuUnit, target: ImageInfo,
                versions: dict[str, str], patience: float) -> dict[str, Any]:
    t0 = time.monotonic()
    await backend.stop(_UNIT, timeout_s=10.0)
    await backend.start(_UNIT, spec)
    took = time.monotonic() - t0
    return await _measure(prober, t0, took, (t0, t0 + took), target, versions, patience)


async def _shadow(backend: QemuBackend, prober: _Prober, target: ImageInfo, versions: dict[str, str],
                  patience: float) -> dict[str, Any]:
    t0 = time.monotonic()
    report = await backend.shadow_update(_UNIT, kernel=target.kernel, initrd=target.initrd,
                                         image=target.directory, clone_timeout_s=60.0 * patience)
    took = time.monotonic() - t0
    swap = report.get("swap_mono") or [t0, t0 + took]
    res = await _measure(prober, t0, took, (float(swap[0]), float(swap[1])), target, versions, patience)
    res["swap_s"] = report.get("downtime_s")
    res["mount_s"] = report.get("mount_s")
    res["steps"] = {k: v.get("took_s") for k, v in report.get("steps", {}).items()}
    facts = report.get("steps", {}).get("swap", {})
    stamps = report.get("swap_stamps_mono") or {}
    if res.get("gap") is not None and all(isinstance(facts.get(k), (int, float)) for k in _SWAP_PARTS):
        # where the gap goes: the prober's last good answer .. the swap's start, the swap's own parts
        # (enmei's work: the clone checked, the original paused, killed and waited for, forwards, cont),
        # then the resumed guest until its first good answer (its vCPU under TCG, user-mode networking,
        # a new connection)
        last_good, first_good = res["gap"]
        resumed = float(stamps.get("resumed", float(swap[0]) + sum(float(facts[k]) for k in _SWAP_PARTS)))
        res["breakdown"] = {"before_swap_s": round(float(swap[0]) - last_good, 4),
                            **{k: round(float(facts[k]), 4) for k in _SWAP_PARTS},
                            "after_resume_s": round(first_good - resumed, 4)}
        if isinstance(facts.get("timeline_s"), dict):
            res["breakdown"]["timeline_s"] = facts["timeline_s"]
    return res


async def _measure(prober: _Prober, t0: float, took: float, action: tuple[float, float], target: ImageInfo,
                   versions: dict[str, str], patience: float) -> dict[str, Any]:
    """Wait until the new version answers; the run's figures since ``t0``: ``downtime_s``, the longest
    time between two consecutive good answers around the ``action`` (the stop and start of a cold run,
    the swap of a shadow run: a gap that ends after its start and begins before its end);
    ``max_gap_s``, the longest anywhere from ``t0`` on (a shadow run's clone boots beside the original:
    a loaded host makes the original slower meanwhile); ``failed`` probes."""
    end = time.monotonic() + 60.0 * patience
    want = f"enmei-demo {versions[target.directory]}".encode()
    seen_new: float | None = None
    while seen_new is None:
        if time.monotonic() > end:
            raise RuntimeError(f"version {versions[target.directory]} did not answer within {60 * patience:.0f} s")
        with contextlib.suppress(OSError, TimeoutError):
            if want in await _get(prober.port, "/version", 1.0):
                seen_new = time.monotonic()
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)  # the probes in flight land
    upto = max(seen_new, action[1]) + 0.3
    window = [p for p in prober.results if p.done and t0 - 1.0 <= p.done <= upto]
    good = sorted(p.done for p in window if p.ok)
    pairs = list(itertools.pairwise(good))
    around = [(b - a, (a, b)) for a, b in pairs if b >= action[0] and a <= action[1]]
    anywhere = [b - a for a, b in pairs if b >= t0]
    widest = max(around, default=None)
    return {"downtime_s": widest[0] if widest else upto - t0, "gap": widest[1] if widest else None,
            "max_gap_s": max(anywhere, default=upto - t0),
            "failed": sum(1 for p in window if not p.ok and p.sent >= t0), "took_s": took,
            "window": (t0, upto)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description="downtime of a guest update: cold reboot vs shadow update")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--accel", default="auto", choices=["auto", "tcg", "kvm"])
    parser.add_argument("--probe-ms", type=float, default=5.0, help="the external prober's period")
    args = parser.parse_args()
    print(json.dumps(run(args.runs, memory_mib=args.memory_mib, accel=args.accel,
                         probe_interval_s=args.probe_ms / 1000.0), indent=2))


if __name__ == "__main__":
    main()
