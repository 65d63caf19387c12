"""Benchmark: VMM rejuvenation (``rejuvenate_vmm``) against reboots — downtime, and the warm cache.

One VM unit (the demo image, TCG here) serves ``/version`` and a cached file (``/cgi-bin/state?read=1``
reads ``/data/cache.bin``, ``cache_mib`` MiB on the data disk, whole; the guest times it with its own
clock). An external prober sends ``GET /version`` every ``probe_interval_s`` (5 ms) through the forwarded
port, each probe in its own connection bounded by ``probe_timeout_s`` (``enmei.bench.reboot``'s prober),
at most 8 waiting at once;
the *downtime* of one repair is the longest gap between two good answers from the last one before the
repair to the first one after it.

For each guest size (``sizes_mib``: 256 MiB and 1 GiB by default), ``runs`` times each:

* ``vmm`` — ``rejuvenate_vmm`` with shared guest RAM (``ram = "shared"``: only device state migrates);
* ``vmm_copied`` — the same with private RAM (``ram = "private"``): a plain local live migration that
  copies the RAM (the baseline the issue names);
* ``reboot`` (first size only) — ``cold_reboot`` of the same guest;
* ``phase_reboot`` (first size only) — ``phase_reboot`` in place (no standby: the guest's RAM goes
  back to its service-ready snapshot, taken before the data disk was mounted).

Warm cache (first size): before each repair the file is read until cached; after it, the first read's
time (``read_ms_after_*``, guest clock, 10 ms steps; ``read_s_after_*`` timed by the host) and the
throughput of the first ``throughput_window_s`` (10 s) after the service answers again: whole-file
reads per second by one client in a loop (``throughput_first_10s_after_*``), against the same window
before (``throughput_before``). After a VMM rejuvenation the guest's page cache is the one it had; after
a reboot of either kind the guest reads the disk again.

Keys (medians over the runs; ``*_runs_s`` lists every run): ``vmm_downtime_s``, ``vmm_copied_downtime_s``,
``reboot_downtime_s``, ``phase_reboot_downtime_s``, ``ratio`` (vmm / reboot), ``vmm_downtime_per_gib_s``
(each size's vmm downtime over its GiB, by size in ``by_size``), ``vmm_qemu_pause_s`` (the old QEMU's
STOP to the new one's RESUME, QEMU's clocks), ``vmm_transferred_bytes`` / ``vmm_copied_transferred_bytes``
(the migration stream), ``throughput_before``, ``throughput_first_10s_after_vmm``,
``throughput_first_10s_after_reboot``, ``throughput_first_10s_after_phase_reboot``,
``read_ms_before``, ``read_ms_after_vmm``, ``read_ms_after_reboot``, ``read_ms_after_phase_reboot`` (and
``read_s_*`` timed by the host), ``cache_grew_mib_before`` / ``_after_*`` (how much that first read added
to the guest's page cache, from its ``/proc/meminfo``: about ``cache_mib`` when the file was not cached,
about 0 when it was),
``by_size`` (per guest size: the vmm and vmm_copied figures), ``vmm_gentle_probe`` (the vmm runs again
with a prober every ``gentle_interval_s``, 50 ms: under TCG a fresh QEMU translates the guest's code
again, and 200 probes a second slow that down), and the settings.

    python -m enmei.bench.vmm --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from enmei.clock import SystemClock
from enmei.config.qemu import QemuUnit
from enmei.visor.qemu import QemuBackend
from enmei.visor.qemu import image as images

from .reboot import _Prober

__all__ = ["run"]

_UNIT = "bench-vmm"
_GIB = 1024
#: at most this many probes wait at once (a tick is skipped beyond it, counted): a TCG guest that a
#: fresh QEMU translates again, or that boots, would otherwise meet up to timeout / interval (60) new
#: connections at once, each answered by a fork of its web server, and fall further behind with each
#: (seen: no answer within 10 s of a rejuvenation, a cold reboot of 25 s instead of 6 s)
_IN_FLIGHT = 8
_REBOOT_GAP_S = 1.0  # a reboot's gap is seconds; a VMM rejuvenation's is judged when it returns


def run(runs: int = 5, *, sizes_mib: tuple[int, ...] = (256, 1024), cache_mib: int = 32, accel: str = "auto",
        probe_interval_s: float = 0.005, probe_timeout_s: float = 0.3, throughput_window_s: float = 10.0,
        gentle_interval_s: float = 0.05,
        cache_dir: Path | None = None, patience: float = 1.0,
        say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure (module docstring); starts and always stops its QEMUs. ``patience`` multiplies the bounds it
    waits under (a boot, an answer), not the figures."""
    if runs < 1 or not sizes_mib:
        raise ValueError("give at least one run and one guest size")
    return asyncio.run(_run(runs, sizes_mib, cache_mib, accel, probe_interval_s, probe_timeout_s,
                            throughput_window_s, gentle_interval_s, cache_dir, patience, say or (lambda _: None)))


async def _run(runs: int, sizes: tuple[int, ...], cache_mib: int, accel: str, interval_s: float,
               timeout_s: float, window_s: float, gentle_s: float, cache_dir: Path | None, patience: float,
               say: Callable[[str], None]) -> dict[str, Any]:
    info = await asyncio.to_thread(images.build, cache_dir=cache_dir)
    out: dict[str, Any] = {"runs": runs, "sizes_mib": list(sizes), "cache_mib": cache_mib,
                           "probe_interval_s": interval_s, "probe_timeout_s": timeout_s,
                           "throughput_window_s": window_s, "image": info.inputs_hash[:12], "by_size": {}}
    for i, size in enumerate(sizes):
        first = i == 0
        row: dict[str, Any] = {}
        for ram in ("shared", "private"):
            kind = "vmm" if ram == "shared" else "vmm_copied"
            async with _Unit(info.directory, size, ram, accel, cache_dir, interval_s, timeout_s, patience) as u:
                if first and ram == "shared":
                    await u.cache(cache_mib)
                    out["throughput_before"] = await u.throughput(window_s)
                    out["read_ms_before"], _, out["cache_grew_mib_before"] = await u.read()
                runs_out = []
                for n in range(runs):
                    r = await u.repair(lambda b: b.rejuvenate_vmm(_UNIT))
                    report = u.backend.vmm_report(_UNIT) or {}
                    r.update({"qemu_pause_s": report.get("downtime_s"),
                              "transferred_bytes": report.get("transferred_bytes"),
                              "migrate_s": report.get("migrate_s"), "total_s": report.get("total_s")})
                    if first and ram == "shared":
                        r["read_ms"], r["read_s"], r["cache_grew_mib"] = await u.read()
                        r["throughput"] = await u.throughput(window_s)
                    runs_out.append(r)
                    say(f"{size} MiB {kind} run {n + 1}: {r['downtime_s'] * 1000:.1f} ms down")
                row[kind] = _summary(runs_out)
                if first and ram == "shared" and gentle_s:
                    # the same with a prober 10 times gentler: how much of the gap is the probes' own
                    # load on a guest whose code a fresh QEMU translates again (TCG)
                    fast = u.prober
                    u.prober = _Prober(u.port, gentle_s, timeout_s, _IN_FLIGHT)
                    gentle = [await u.repair(lambda b: b.rejuvenate_vmm(_UNIT)) for _ in range(runs)]
                    u.prober = fast
                    out["vmm_gentle_probe"] = {"probe_interval_s": gentle_s, **_summary(gentle)}
                if first and ram == "shared":
                    for name, fn in (("reboot", _cold), ("phase_reboot", _phase)):
                        rs = []
                        for n in range(runs):
                            await u.read()  # cached again (a no-op after the first)
                            r = await u.repair(fn, reboot=True)
                            r["read_ms"], r["read_s"], r["cache_grew_mib"] = await u.read()
                            r["throughput"] = await u.throughput(window_s)
                            rs.append(r)
                            say(f"{size} MiB {name} run {n + 1}: {r['downtime_s']:.2f} s down")
                        out[name] = _summary(rs)
                    out["vmm_warm"] = row["vmm"]
        row["vmm_downtime_per_gib_s"] = round(row["vmm"]["downtime_s"] / (size / _GIB), 5)
        row["vmm_copied_downtime_per_gib_s"] = round(row["vmm_copied"]["downtime_s"] / (size / _GIB), 5)
        out["by_size"][str(size)] = row
    base = out["by_size"][str(sizes[0])]
    out.update({
        "memory_mib": sizes[0],
        "vmm_downtime_s": base["vmm"]["downtime_s"], "vmm_copied_downtime_s": base["vmm_copied"]["downtime_s"],
        "vmm_qemu_pause_s": base["vmm"]["qemu_pause_s"],
        "vmm_transferred_bytes": base["vmm"]["transferred_bytes"],
        "vmm_copied_transferred_bytes": base["vmm_copied"]["transferred_bytes"],
        "reboot_downtime_s": out["reboot"]["downtime_s"], "phase_reboot_downtime_s": out["phase_reboot"]["downtime_s"],
        "vmm_downtime_per_gib_s": {k: v["vmm_downtime_per_gib_s"] for k, v in out["by_size"].items()},
        "throughput_first_10s_after_vmm": out["vmm_warm"]["throughput"],
        "throughput_first_10s_after_reboot": out["reboot"]["throughput"],
        "throughput_first_10s_after_phase_reboot": out["phase_reboot"]["throughput"],
        "read_ms_after_vmm": out["vmm_warm"]["read_ms"], "read_ms_after_reboot": out["reboot"]["read_ms"],
        "read_ms_after_phase_reboot": out["phase_reboot"]["read_ms"],
        "read_s_after_vmm": out["vmm_warm"]["read_s"], "read_s_after_reboot": out["reboot"]["read_s"],
        "read_s_after_phase_reboot": out["phase_reboot"]["read_s"],
        "cache_grew_mib_after_vmm": out["vmm_warm"]["cache_grew_mib"],
        "cache_grew_mib_after_reboot": out["reboot"]["cache_grew_mib"],
        "cache_grew_mib_after_phase_reboot": out["phase_reboot"]["cache_grew_mib"]})
    out["ratio"] = round(out["vmm_downtime_s"] / out["reboot_downtime_s"], 5)
    del out["vmm_warm"]
    return out


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of each figure over the runs, and every run's figures under ``KEY_runs``."""
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        out[key] = round(statistics.median(values), 5) if values else None
        out[f"{key}_runs"] = [r.get(key) for r in rows]
    return out


async def _cold(b: QemuBackend) -> Any:
    return await b.cold_reboot(_UNIT)


async def _phase(b: QemuBackend) -> Any:
    return await b.phase_reboot(_UNIT, wait_data=True, standby=False)


class _Unit:
    """One VM unit on a temporary state dir, started on enter and stopped on exit."""

    def __init__(self, image: str, memory_mib: int, ram: str, accel: str, cache_dir: Path | None,
                 interval_s: float, timeout_s: float, patience: float) -> None:
        self.port = _free_port()
        self.spec = QemuUnit.model_validate({
            "backend": "qemu", "image": image, "memory_mib": memory_mib, "accel": accel, "ram": ram,
            "forward": [f"{self.port}:80"], "phase_standby": False, "ready_timeout_s": 60.0 * patience})
        self.cache_dir = cache_dir
        self.patience = patience
        self.prober = _Prober(self.port, interval_s, timeout_s, _IN_FLIGHT)
        self._tmp = tempfile.TemporaryDirectory(prefix="enmei-bench-vmm-")
        self.backend = QemuBackend(clock=SystemClock(), state_dir=Path(self._tmp.name), emit=lambda e: None,
                                   cache_dir=cache_dir)

    async def __aenter__(self) -> _Unit:
        try:
            await self.backend.start(_UNIT, self.spec)
            await self._answer("/version", 60.0)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            with contextlib.suppress(Exception):
                await self.backend.stop(_UNIT, timeout_s=10.0)
            with contextlib.suppress(Exception):
                await self.backend.close()
        finally:
            self._tmp.cleanup()

    async def _get(self, path: str, timeout_s: float = 30.0) -> bytes:
        return await self.backend.host.http_get(self.port, path, timeout_s)

    async def _answer(self, path: str, bound_s: float) -> float:
        deadline = time.monotonic() + bound_s * self.patience
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, TimeoutError):
                if b" 200 " in (await self._get(path, 2.0))[:16]:
                    return time.monotonic()
            await asyncio.sleep(0.01)
        raise TimeoutError(f"the guest did not answer {path} within {bound_s * self.patience:.0f} s")

    async def cache(self, mib: int) -> None:
        body = await self._get(f"/cgi-bin/state?cache={mib}", 120.0 * self.patience)
        if b"ok cache" not in body:
            raise RuntimeError(f"could not make the cached file: {body[-200:]!r}")
        await self.read()

    async def read(self) -> tuple[float, float, float]:
        """(guest ms, host seconds, MiB the page cache grew by) of one whole read of the cached file."""
        t = time.monotonic()
        body = await self._get("/cgi-bin/state?read=1", 60.0 * self.patience)
        took = time.monotonic() - t
        text = body.partition(b"\r\n\r\n")[2].decode(errors="replace")
        fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
        if "read_ms" not in fields or int(fields.get("bytes", "0")) <= 0:
            raise RuntimeError(f"the guest did not read its cached file: {text[:200]!r}")
        return float(fields["read_ms"]), round(took, 4), round(float(fields.get("cache_grew_kib", "nan")) / 1024, 2)

    async def throughput(self, window_s: float) -> float:
        """Whole-file reads per second by one client in a loop, over ``window_s``."""
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < window_s:
            with contextlib.suppress(OSError, TimeoutError):
                if b"read_ms=" in await self._get("/cgi-bin/state?read=1", max(1.0, window_s)):
                    n += 1
        return round(n / (time.monotonic() - t0), 3)

    async def repair(self, fn: Callable[[QemuBackend], Coroutine[Any, Any, Any]], *,
                     reboot: bool = False) -> dict[str, Any]:
        """Run one repair under the prober; its downtime: the longest gap between good answers, from the
        last one before the repair to the first one after the service came back.

        The service is back once a probe sent after the repair returned is answered, or, for a
        ``reboot`` (which returns only once the data disk is mounted), once an answer ends a gap of more
        than ``_REBOOT_GAP_S``: the prober stops then, so that it does not starve the guest's data-disk
        mount (which runs at the lowest priority, after the service) of its one vCPU."""
        self.prober.results.clear()
        task = asyncio.create_task(self.prober.loop())
        repair: asyncio.Task[Any] | None = None
        try:
            await asyncio.sleep(0.3)  # good answers before
            t0 = time.monotonic()
            repair = asyncio.create_task(fn(self.backend))
            back = await self._back(t0, repair, reboot, 120.0)
            await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.prober.close()
        await repair
        t1 = time.monotonic()
        good = sorted(p.done for p in self.prober.results if p.ok)
        before = [t for t in good if t < t0]
        window = [before[-1]] if before else [t0]
        window += [t for t in good if t0 <= t <= back]
        gap = max(b - a for a, b in itertools.pairwise(window)) if len(window) > 1 else back - t0
        return {"downtime_s": round(gap, 5), "remedy_s": round(t1 - t0, 4)}

    async def _back(self, t0: float, repair: asyncio.Task[Any], reboot: bool, bound_s: float) -> float:
        deadline = time.monotonic() + bound_s * self.patience
        t_done: float | None = None
        while time.monotonic() < deadline:
            if repair.done():
                repair.result()  # a failed repair raises here
                t_done = t_done or time.monotonic()
                later = [p.done for p in self.prober.results if p.ok and p.sent >= t_done]
                if later:
                    return min(later)
            elif reboot:
                good = sorted(p.done for p in self.prober.results if p.ok)
                last = max([t for t in good if t < t0], default=t0)
                for t in good:
                    if t > t0 and t - last > _REBOOT_GAP_S:
                        return t
                    if t > t0:
                        last = t
            await asyncio.sleep(0.01)
        raise TimeoutError(f"no good answer within {bound_s * self.patience:.0f} s of the repair")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:  # pragma: no cover - a command-line wrapper
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="256,1024", help="guest sizes in MiB, comma-separated")
    args = ap.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    print(json.dumps(run(args.runs, sizes_mib=sizes, say=lambda line: print(line, flush=True)), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
