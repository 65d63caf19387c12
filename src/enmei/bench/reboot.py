"""Benchmark: downtime of a guest kernel panic repaired by a cold reboot vs a phase-based reboot.

The same guest (the demo image, one VM unit, a forwarded port) and the same service. Each run injects
a kernel panic in the guest (``/cgi-bin/fault?panic=1``, sysrq ``c``); the panic reaches the host as a
QMP ``GUEST_PANICKED`` event (pvpanic), which the backend turns into a ``PANIC`` verdict; the
benchmark, playing the policy, answers it with one of three repairs, ``runs`` times each:

* ``cold``: ``cold_reboot`` (reset, boot again);
* ``phase_inplace``: ``phase_reboot(standby=False)``: the phase snapshot loaded into the same QEMU;
* ``phase_standby``: ``phase_reboot()`` as the backend does it by default (``phase_standby = true``):
  the warm standby QEMU takes over. Before each run the benchmark waits until the standby is ready
  (the one used by the previous run is replaced in the background in about a second);
  ``phase_standby_via_runs`` says what each run really used.

``phase_downtime_s`` is the default (the standby) and ``ratio`` = phase / cold;
``phase_inplace_ratio`` and ``phase_standby_ratio`` are given too.

An external prober sends ``GET /version`` to the forwarded port every ``probe_interval_s`` (10 ms),
each probe in its own connection and bounded by ``probe_timeout_s`` (0.3 s), whether or not earlier
probes have answered: a connection made while the guest is frozen is lost with the guest's state, and
waiting for it would measure the probe timeout. Each probe lives about its timeout at most, so about
``timeout / interval`` (30) can be waiting at once, while the guest is frozen or booting; a tick is
skipped only while ``max_in_flight`` probes are waiting, and the default is twice that natural bound,
``2 * ceil(timeout / interval)`` (60): the cap does not thin the probing (``probe_ticks_skipped``
shows it) even when the event loop runs a little late, and still bounds the sockets if the host falls
far behind. ``/version`` is the service's static version
page: the CGI endpoint costs more guest CPU per request under TCG, and probing it 100 times a second
would saturate the guest's one vCPU. Right after an in-place load TCG translates the guest's code
again (a load flushes its translation cache), so the first requests are slow, and the probes that keep
arriving meanwhile slow them further: that is part of the measured in-place downtime.

Downtime of one run = from the fault (QEMU's timestamp of ``GUEST_PANICKED``, mapped onto the
monotonic clock) to the first good answer (HTTP 200 with the service's version) received after the
host learnt of the panic (the guest is frozen from the panic on, so such an answer comes from the
repaired guest). ``run`` returns the medians over the runs of each kind, with the per-run figures
split into detect (fault to verdict), remedy (the remedy call) and answer (remedy done to first good
answer: negative when the service answered before the remedy call returned — a cold reboot returns
once the data disk is mounted, a standby takeover once its gate is open); the standby's preparation
time and resident memory while it waits are reported too.

    python -m enmei.bench.reboot --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.clock import SystemClock, wait_for
from enmei.config.qemu import QemuUnit
from enmei.model import Verdict, VerdictKind
from enmei.visor.qemu import QemuBackend
from enmei.visor.qemu import image as images

__all__ = ["run"]

_UNIT = "bench-vm"


@dataclass
class _Probe:
    sent: float
    done: float = 0.0
    ok: bool = False


@dataclass
class _Prober:
    """Fires a probe every ``interval_s`` in its own task; keeps every result."""

    port: int
    interval_s: float
    timeout_s: float
    max_in_flight: int
    skipped: int = 0
    results: list[_Probe] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def loop(self) -> None:
        next_at = time.monotonic()
        while True:
            if len(self._tasks) < self.max_in_flight:
                probe = _Probe(time.monotonic())
                self.results.append(probe)
                task = asyncio.create_task(self._one(probe))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self.skipped += 1
            next_at += self.interval_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _one(self, probe: _Probe) -> None:
        writer = None
        try:
            reader, writer = await wait_for(
                asyncio.open_connection("127.0.0.1", self.port), self.timeout_s)
            writer.write(b"GET /version HTTP/1.0\r\nHost: bench\r\n\r\n")
            left = self.timeout_s - (time.monotonic() - probe.sent)
            data = await wait_for(reader.read(), max(0.001, left))
            probe.ok = data.startswith(b"HTTP/1.") and b" 200 " in data[:16] and b"enmei-demo" in data
        except (OSError, TimeoutError):
            probe.ok = False
        finally:
            probe.done = time.monotonic()
            if writer is not None:
                writer.close()

    def first_good_after(self, t: float) -> float | None:
        """When the first good answer received at or after ``t`` arrived."""
        times = [p.done for p in self.results if p.ok and p.done >= t]
        return min(times) if times else None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


KINDS = ("cold", "phase_inplace", "phase_standby")


def run(runs: int = 5, *, memory_mib: int = 256, accel: str = "auto", probe_interval_s: float = 0.01,
        probe_timeout_s: float = 0.3, max_in_flight: int | None = None, cache_dir: Path | None = None,
        patience: float = 1.0) -> dict[str, Any]:
    """Measure the three repairs ``runs`` times each; returns medians, ratios and the per-run figures.

    Builds the demo image first if needed (cached). Starts one QEMU (and its standby) and always stops
    them. ``max_in_flight`` defaults to ``2 * ceil(probe_timeout_s / probe_interval_s)``. ``patience``
    multiplies every bound the benchmark waits under (30-60 s each: a standby, a boot phase, an answer,
    the panic verdict) — for a machine that is busy with other work; the figures are not scaled.
    """
    if patience < 1.0:
        raise ValueError(f"patience must be at least 1, not {patience}")
    if max_in_flight is None:
        max_in_flight = 2 * math.ceil(probe_timeout_s / probe_interval_s)
    return asyncio.run(_run(runs, memory_mib, accel, probe_interval_s, probe_timeout_s, max_in_flight,
                            cache_dir, patience))


async def _run(runs: int, memory_mib: int, accel: str, interval_s: float, timeout_s: float,
               max_in_flight: int, cache_dir: Path | None, patience: float = 1.0) -> dict[str, Any]:
    info = await asyncio.to_thread(images.build, cache_dir=cache_dir)
    port = _free_port()
    verdicts: asyncio.Queue[Verdict] = asyncio.Queue()
    with tempfile.TemporaryDirectory(prefix="enmei-bench-") as tmp:
        backend = QemuBackend(clock=SystemClock(), state_dir=Path(tmp), emit=lambda e: None,
                              verdict=verdicts.put_nowait, cache_dir=cache_dir)
        spec = QemuUnit.model_validate({"backend": "qemu", "image": info.directory, "memory_mib": memory_mib,
                                        "accel": accel, "forward": [f"{port}:80"]})
        prober = _Prober(port, interval_s, timeout_s, max_in_flight)
        prober_task: asyncio.Task[None] | None = None
        try:
            identity = await backend.start(_UNIT, spec)
            prober_task = asyncio.create_task(prober.loop())
            out: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
            standby_rss: list[float] = []
            for kind in KINDS:
                for _ in range(runs):
                    rss = await _standby_ready(backend, 60.0 * patience)
                    if kind == "phase_standby":
                        standby_rss.append(rss)
                    out[kind].append(await _one_run(backend, prober, verdicts, port, kind, patience))
            med = {k: statistics.median(r["downtime_s"] for r in out[k]) for k in KINDS}
            cold = med["cold"]
            result: dict[str, Any] = {
                "cold_downtime_s": round(cold, 4), "phase_downtime_s": round(med["phase_standby"], 4),
                "ratio": round(med["phase_standby"] / cold, 5), "runs": runs, "phase_default": "standby",
                "phase_inplace_downtime_s": round(med["phase_inplace"], 4),
                "phase_inplace_ratio": round(med["phase_inplace"] / cold, 5),
                "phase_standby_downtime_s": round(med["phase_standby"], 4),
                "phase_standby_ratio": round(med["phase_standby"] / cold, 5)}
            for kind in KINDS:
                for key in ("downtime_s", "detect_s", "remedy_s", "answer_s"):
                    result[f"{kind}_{key.removesuffix('_s')}_runs_s"] = [round(r[key], 4) for r in out[kind]]
            result["phase_standby_via_runs"] = [r["via"] for r in out["phase_standby"]]
            result["phase_inplace_via_runs"] = [r["via"] for r in out["phase_inplace"]]
            result["phase_standby_prepare_runs_s"] = [r["standby_prepare_s"] for r in out["phase_standby"]]
            result.update({
                "standby_rss_mib": round(statistics.median(standby_rss), 1) if standby_rss else None,
                "accel": str(identity.extra.get("accel")), "memory_mib": memory_mib,
                "probe_interval_s": interval_s, "probe_timeout_s": timeout_s,
                "probe_max_in_flight": max_in_flight, "probes": len(prober.results),
                "probe_ticks_skipped": prober.skipped, "kernel": info.kernel_package,
                "image": info.inputs_hash[:12]})
            return result
        finally:
            if prober_task is not None:
                prober_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await prober_task
            await prober.close()
            with contextlib.suppress(Exception):
                await backend.stop(_UNIT, timeout_s=5.0)
            await backend.close()


async def _standby_ready(backend: QemuBackend, timeout_s: float = 60.0) -> float:
    """Wait until the unit's standby is ready; its resident memory (MiB) then."""
    if not await backend.wait_standby(_UNIT, timeout_s):
        raise RuntimeError(f"the standby did not get ready: {backend.standby(_UNIT)}")
    status = backend.standby(_UNIT) or {}
    return float(status.get("rss_bytes") or 0.0) / 2**20


async def _one_run(backend: QemuBackend, prober: _Prober, verdicts: asyncio.Queue[Verdict], port: int,
                   kind: str, patience: float = 1.0) -> dict[str, Any]:
    """One fault and its repair: the downtime and where it went."""
    await _until_good(prober, time.monotonic(), 30.0 * patience)
    await _until_phase(backend, "data-ready", 30.0 * patience)
    await asyncio.sleep(0.3)  # let the service settle before the fault
    if not verdicts.empty():  # a late request (see _panic_until_verdict) would spoil the measurement
        stray = verdicts.get_nowait()
        raise RuntimeError(f"a guest panic the benchmark did not ask for, before the {kind} run: "
                           f"{stray.evidence.get('panic_message')}")
    verdict = await _panic_until_verdict(port, verdicts, 60.0 * patience)
    seen = time.monotonic()
    assert verdict.kind == VerdictKind.PANIC
    # QEMU's wall-clock timestamp of the panic, mapped onto the monotonic clock.
    fault = seen - (time.time() - float(verdict.evidence["qemu_wall"]))
    prepare: float | None = None
    if kind == "cold":
        await backend.cold_reboot(_UNIT)
        via = "cold"
    else:
        await backend.phase_reboot(_UNIT, standby=kind == "phase_standby")
        report = backend.reboot_report(_UNIT) or {}
        via = str(report.get("via"))
        prepare = report.get("standby_prepare_s")
    repaired = time.monotonic()
    good = await _until_good(prober, seen, 60.0 * patience)
    return {"downtime_s": good - fault, "detect_s": seen - fault, "remedy_s": repaired - seen,
            "answer_s": good - repaired, "via": via, "standby_prepare_s": prepare}


async def _until_phase(backend: QemuBackend, phase: str, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while phase not in backend.phases(_UNIT):
        if time.monotonic() > end:
            raise TimeoutError(f"the guest did not reach {phase} within {timeout_s:.0f} s")
        await asyncio.sleep(0.01)


async def _until_good(prober: _Prober, after: float, timeout_s: float) -> float:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        t = prober.first_good_after(after)
        if t is not None:
            return t
        await asyncio.sleep(0.005)
    raise TimeoutError(f"the service gave no good answer within {timeout_s:.0f} s")


async def _panic_until_verdict(port: int, verdicts: asyncio.Queue[Verdict], timeout_s: float = 60.0) -> Verdict:
    """Ask the guest to panic (``/cgi-bin/fault?panic=1``) once, and wait for the panic verdict.

    Exactly one request per run, its connection held open until the verdict comes: under the prober's
    load the guest may drop the connection's SYN, and QEMU's user-mode network then retries it seconds
    later — even after the client gave up and closed it — so a second request would be delivered to
    some later guest and panic it at a moment nobody chose.
    """
    writer = None
    try:
        _, writer = await wait_for(asyncio.open_connection("127.0.0.1", port), 5.0)
        writer.write(b"GET /cgi-bin/fault?panic=1 HTTP/1.0\r\n\r\n")
        await writer.drain()
    except (OSError, TimeoutError) as exc:  # the forwarded port is QEMU's own: it always accepts
        raise RuntimeError(f"could not send the panic request: {exc!r}") from exc
    try:
        return await wait_for(verdicts.get(), timeout_s)
    except TimeoutError as exc:
        raise TimeoutError(f"no panic verdict within {timeout_s:.0f} s of the request to panic") from exc
    finally:
        writer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description="downtime: cold reboot vs phase-based reboot")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--accel", default="auto", choices=["auto", "tcg", "kvm"])
    parser.add_argument("--max-in-flight", type=int, default=None,
                        help="default: 2 * ceil(probe timeout / probe interval)")
    args = parser.parse_args()
    print(json.dumps(run(args.runs, memory_mib=args.memory_mib, accel=args.accel,
                         max_in_flight=args.max_in_flight), indent=2))


if __name__ == "__main__":
    main()
