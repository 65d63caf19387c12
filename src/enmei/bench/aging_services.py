"""Small Python services with real memory behaviour, for the aging benchmark's recorded series.

Run as ``python3 -m enmei.bench.aging_services KIND [--seed N] [--key value ...]``: the process allocates
real, touched memory (``b"\\x01" * n``: filled, so the pages are resident; chunks of at least 256 KiB, so
freeing them gives the pages back to the system), prints ``ready`` and runs until ``--duration-s`` has
passed, SIGTERM, or — for a leak — its own RSS reaches ``--die-at-mib`` (it exits 3: it "ran out").

Kinds (every rate in MiB/s, every period in seconds; randomness from ``--seed``):

- ``cache``     an LRU cache of 256 KiB-1 MiB entries filled at ``--rate`` up to ``--bound-mib``, then
                evicting: rises, then a plateau (normal);
- ``gc``        a heap that grows at ``--rate`` to ``--amp-mib`` and is freed every cycle: a sawtooth
                over a flat floor (normal);
- ``diurnal``   a working set that follows ``--amp-mib * (1 - cos(2 pi t / period)) / 2`` (normal);
- ``leak``      ``--rate`` leaked for good, from ``--start-s`` on (a late start if > 0), optionally under
                a ``gc`` sawtooth (``--amp-mib``) — a leak;
- ``steps``     a leak in lumps: ``--chunk-mib`` every 5-15 s (same mean ``--rate`` if given) — a leak.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import sys
import time
from collections import OrderedDict

__all__ = ["main"]

MIB = 2**20
_TICK_S = 0.1


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _chunk(rng: random.Random, mib: float) -> bytes:
    return b"\x01" * max(256 * 1024, int(mib * MIB))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aging_services")
    ap.add_argument("kind", choices=["cache", "gc", "diurnal", "leak", "steps"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=1.0)
    ap.add_argument("--bound-mib", type=float, default=64.0)
    ap.add_argument("--amp-mib", type=float, default=0.0)
    ap.add_argument("--period", type=float, default=20.0)
    ap.add_argument("--start-s", type=float, default=0.0)
    ap.add_argument("--chunk-mib", type=float, default=8.0)
    ap.add_argument("--duration-s", type=float, default=120.0)
    ap.add_argument("--die-at-mib", type=float, default=0.0)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    stop = False

    def _term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _term)
    cache: OrderedDict[int, bytes] = OrderedDict()
    cached = 0.0
    heap: list[bytes] = []
    heap_mib = 0.0
    leaked: list[bytes] = []
    owed = 0.0
    next_step = rng.uniform(5, 15)
    key = 0
    t0 = time.monotonic()
    print("ready", flush=True)
    while not stop:
        time.sleep(_TICK_S)
        t = time.monotonic() - t0
        if t >= a.duration_s:
            break
        if a.kind == "cache":
            owed += a.rate * _TICK_S
            while owed > 0:
                size = rng.uniform(0.25, 1.0)
                owed -= size
                key += 1
                cache[key] = _chunk(rng, size)
                cached += size
                while cached > a.bound_mib:
                    _, old = cache.popitem(last=False)
                    cached -= len(old) / MIB
        if a.kind in ("gc", "leak") and a.amp_mib > 0:
            heap_mib += a.rate * _TICK_S if a.kind == "gc" else a.amp_mib / a.period * _TICK_S
            heap.append(_chunk(rng, a.amp_mib / a.period * _TICK_S if a.kind == "leak" else a.rate * _TICK_S))
            if heap_mib >= a.amp_mib:
                heap.clear()  # a full collection: the cycle's garbage goes back to the system
                heap_mib = 0.0
        if a.kind == "diurnal":
            want = a.amp_mib * (1 - math.cos(2 * math.pi * t / a.period)) / 2
            while heap_mib < want - 0.5:
                heap.append(_chunk(rng, 0.5))
                heap_mib += 0.5
            while heap_mib > want + 0.5 and heap:
                heap.pop()
                heap_mib -= 0.5
        if a.kind == "leak" and t >= a.start_s:
            owed += a.rate * _TICK_S
            while owed >= 0.25:
                leaked.append(_chunk(rng, 0.25))
                owed -= 0.25
        if a.kind == "steps" and t >= next_step:
            leaked.append(_chunk(rng, a.chunk_mib))
            next_step = t + rng.uniform(5, 15)
        if a.die_at_mib and _rss() >= a.die_at_mib * MIB:
            print(f"out of memory at {_rss() / MIB:.1f} MiB after {t:.1f} s", flush=True)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
