"""Record the aging benchmark's labelled series from real processes (run once; the CSVs are committed).

::

    python -m enmei.bench.aging_record --out tests/data/aging        # about 4 minutes, all at once

Each recording starts one real process (tree), samples its memory every ``SAMPLE_S`` seconds — the
proportional set size (PSS) summed over the process and its children, so that PostgreSQL's shared
buffers count once, not once per backend — and ends when the process exits (a leak that "ran out":
``aging_services`` exits at its ``--die-at-mib``) or at the recording's bound. What runs:

- **normal growth**: PostgreSQL 15 filling its shared buffers (``pgbench -i`` then a select-only
  ``pgbench`` run), Redis filling to ``maxmemory`` under a paced writer and then evicting
  (``allkeys-lru``), a bounded cache filling up, a garbage-collected heap (sawtooth), a working set
  that rises and falls (a compressed day);
- **leaks**: Python services that leak fast, slowly, in lumps, late, or under a GC sawtooth, until they
  die at their limit.

Two splits made differently (other seeds, rates, sizes, bounds): ``dev`` (for choosing the detector's
defaults) and ``heldout`` (for the benchmark's figures only). The limit of a normal series is what its
operator would give it as ``memory_max``: 1.5 times its peak; that of a leak the size it dies at.

Output: one ``NAME.csv`` (``t_s,pss_bytes``) per series and ``index.json`` (per series: file, split,
label ``leak``/``normal``, kind, source ``real``, limit_bytes, leak_start_s, what ran).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = ["RECORDINGS", "Recording", "main", "record"]

MIB = 2**20
SAMPLE_S = 0.5


@dataclass(frozen=True)
class Recording:
    name: str
    split: str
    label: str  # "leak" or "normal"
    kind: str
    run: str  # "service", "postgresql" or "redis"
    args: dict[str, Any] = field(default_factory=dict)
    bound_s: float = 240.0
    leak_start_s: float | None = None
    die_at_mib: float | None = None


def _svc(name: str, split: str, label: str, kind: str, bound_s: float = 200.0, **args: Any) -> Recording:
    start = float(args.get("start_s", 0.0)) if label == "leak" else None
    return Recording(name, split, label, kind, "service", args, bound_s, start, args.get("die_at_mib"))


RECORDINGS: tuple[Recording, ...] = (
    # -- dev ---------------------------------------------------------------------------------------
    Recording("pg_fill_dev", "dev", "normal", "buffer_pool", "postgresql", {"shared_mb": 64, "scale": 6}, 200),
    Recording("redis_fill_dev", "dev", "normal", "maxmemory", "redis", {"maxmemory_mb": 32, "kib_s": 300}, 170),
    _svc("cache_dev", "dev", "normal", "cache", seed=1, rate=0.8, bound_mib=48, duration_s=150),
    _svc("gc_dev", "dev", "normal", "gc", seed=1, rate=4.0, amp_mib=40, duration_s=150),
    _svc("diurnal_dev", "dev", "normal", "diurnal", seed=1, amp_mib=40, period=60, duration_s=150),
    _svc("leak_fast_dev", "dev", "leak", "leak", seed=1, rate=2.0, die_at_mib=200, duration_s=200),
    _svc("leak_slow_dev", "dev", "leak", "leak", seed=1, rate=0.4, die_at_mib=70, duration_s=200),
    _svc("leak_steps_dev", "dev", "leak", "steps", seed=1, chunk_mib=6, die_at_mib=100, duration_s=220),
    _svc("leak_late_dev", "dev", "leak", "leak", seed=1, rate=1.0, start_s=40, die_at_mib=120, duration_s=200),
    _svc("leak_gc_dev", "dev", "leak", "leak", seed=1, rate=0.8, amp_mib=30, period=10, die_at_mib=150,
         duration_s=220),
    # -- held-out: other seeds, rates, sizes and bounds ----------------------------------------------
    Recording("pg_fill_heldout", "heldout", "normal", "buffer_pool", "postgresql", {"shared_mb": 96, "scale": 10},
              220),
    Recording("redis_fill_heldout", "heldout", "normal", "maxmemory", "redis", {"maxmemory_mb": 48, "kib_s": 400},
              190),
    _svc("cache_heldout", "heldout", "normal", "cache", seed=2, rate=1.2, bound_mib=64, duration_s=160),
    _svc("gc_heldout", "heldout", "normal", "gc", seed=2, rate=6.0, amp_mib=60, duration_s=160),
    _svc("diurnal_heldout", "heldout", "normal", "diurnal", seed=2, amp_mib=60, period=80, duration_s=170),
    _svc("leak_fast_heldout", "heldout", "leak", "leak", seed=2, rate=2.0, die_at_mib=300, duration_s=220),
    _svc("leak_slow_heldout", "heldout", "leak", "leak", seed=2, rate=0.25, die_at_mib=60, duration_s=240),
    _svc("leak_steps_heldout", "heldout", "leak", "steps", seed=2, chunk_mib=10, die_at_mib=150, duration_s=240),
    _svc("leak_late_heldout", "heldout", "leak", "leak", seed=2, rate=1.5, start_s=60, die_at_mib=200,
         duration_s=220),
    _svc("leak_gc_heldout", "heldout", "leak", "leak", seed=2, rate=1.0, amp_mib=50, period=15, die_at_mib=200,
         duration_s=240),
)


def _pss(proc: psutil.Process) -> float | None:
    total = 0.0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += float(p.memory_full_info().pss)
    return total or None


def _sample(proc: psutil.Process, bound_s: float, alive: Callable[[], bool]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    t0 = time.monotonic()
    while alive() and time.monotonic() - t0 < bound_s:
        v = _pss(proc)
        if v is not None:
            out.append((round(time.monotonic() - t0, 3), v))
        time.sleep(SAMPLE_S)
    return out


def _stop(p: subprocess.Popen[Any], sig: int = 15) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _record_service(r: Recording) -> list[tuple[float, float]]:
    argv = [sys.executable, "-m", "enmei.bench.aging_services", r.kind]
    for k, v in r.args.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        p.stdout.readline()  # "ready"
        return _sample(psutil.Process(p.pid), r.bound_s, lambda: p.poll() is None)
    finally:
        _stop(p)


@contextlib.contextmanager
def _daemon(kind: str) -> Iterator[Any]:
    from enmei import daemons
    d = daemons.prepare(kind)
    try:
        yield d
    finally:
        d.cleanup()


def _popen_as(d: Any, argv: list[str]) -> subprocess.Popen[Any]:
    kw: dict[str, Any] = {}
    if d.user is not None:
        import pwd
        pw = pwd.getpwnam(d.user)
        kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d.root, **kw)


def _wait_ready(d: Any, bound_s: float = 60.0) -> None:
    t0 = time.monotonic()
    while True:
        try:
            d.request(1.0)
            return
        except Exception:
            if time.monotonic() - t0 > bound_s:
                raise
            time.sleep(0.2)


def _record_postgresql(r: Recording) -> list[tuple[float, float]]:
    with _daemon("postgresql") as d:
        with open(d.config_file, "a") as f:
            f.write(f"shared_buffers = {r.args['shared_mb']}MB\n")
        p = _popen_as(d, d.argv)
        try:
            _wait_ready(d)
            pgbench = shutil.which("pgbench") or "pgbench"
            conn = ["-h", "127.0.0.1", "-p", str(d.port), "-U", "postgres", "postgres"]
            box: dict[str, list[tuple[float, float]]] = {}
            sampler = threading.Thread(target=lambda: box.setdefault("s", _sample(
                psutil.Process(p.pid), r.bound_s, lambda: p.poll() is None)))
            sampler.start()
            # Filling: load the tables (this touches the buffers), then a paced select-only run that
            # reads pages at random until the bound.
            subprocess.run([pgbench, "-i", "-q", "-s", str(r.args["scale"]), *conn], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=r.bound_s)
            left = max(10, int(r.bound_s - 20))
            subprocess.run([pgbench, "-S", "-c", "2", "-j", "1", "-R", "400", "-T", str(left), *conn], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=r.bound_s + 30)
            sampler.join(r.bound_s + 60)
            return box.get("s", [])
        finally:
            _stop(p, 2)  # SIGINT: PostgreSQL's fast shutdown


def _record_redis(r: Recording) -> list[tuple[float, float]]:
    with _daemon("redis") as d:
        with open(d.config_file, "a") as f:
            f.write(f"maxmemory {r.args['maxmemory_mb']}mb\nmaxmemory-policy allkeys-lru\n")
        p = _popen_as(d, d.argv)
        try:
            _wait_ready(d)
            stop = threading.Event()

            def writer() -> None:
                value = b"v" * 1024
                per_tick = max(1, int(r.args["kib_s"] * 0.1))  # 1 KiB values, every 0.1 s
                i = 0
                with socket.create_connection(("127.0.0.1", d.port), timeout=5) as s:
                    while not stop.is_set():
                        batch = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
                            len(k), k, len(value), value) for k in (b"key:%d" % (i + n) for n in range(per_tick)))
                        s.sendall(batch)
                        got = 0
                        while got < per_tick:
                            got += s.recv(65536).count(b"\r\n")
                        i += per_tick
                        time.sleep(0.1)

            w = threading.Thread(target=writer, daemon=True)
            w.start()
            try:
                return _sample(psutil.Process(p.pid), r.bound_s, lambda: p.poll() is None)
            finally:
                stop.set()
                w.join(10)
        finally:
            _stop(p)


def record(r: Recording) -> list[tuple[float, float]]:
    """Run one recording; its samples ``(t_s, pss_bytes)``."""
    run = {"service": _record_service, "postgresql": _record_postgresql, "redis": _record_redis}[r.run]
    return run(r)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aging_record")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", action="append", default=[])
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in RECORDINGS if not a.only or r.name in a.only]
    results: dict[str, list[tuple[float, float]]] = {}

    def one(r: Recording) -> None:
        results[r.name] = record(r)

    threads = [threading.Thread(target=one, args=(r,)) for r in todo]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    index_path = a.out / "index.json"
    index: dict[str, Any] = json.loads(index_path.read_text()) if index_path.exists() else {"series": {}}
    for r in todo:
        samples = results.get(r.name) or []
        if len(samples) < 20:
            print(f"{r.name}: only {len(samples)} samples, not written", file=sys.stderr)
            continue
        csv = a.out / f"{r.name}.csv"
        tmp = csv.with_suffix(".tmp")
        tmp.write_text("t_s,pss_bytes\n" + "".join(f"{t:.3f},{v:.0f}\n" for t, v in samples))
        os.replace(tmp, csv)
        peak = max(v for _, v in samples)
        limit = (r.die_at_mib * MIB) if r.die_at_mib is not None else 1.5 * peak
        index["series"][r.name] = {
            "file": csv.name, "split": r.split, "label": r.label, "kind": r.kind, "source": "real",
            "limit_bytes": limit, "leak_start_s": r.leak_start_s, "run": r.run, "args": r.args,
            "samples": len(samples), "seconds": samples[-1][0], "sample_s": SAMPLE_S,
        }
        print(f"{r.name}: {len(samples)} samples, {samples[-1][0]:.0f} s, peak {peak / MIB:.1f} MiB")
    index["about"] = ("Recorded by enmei.bench.aging_record (real processes, PSS of the process tree every "
                      f"{SAMPLE_S} s); dev for tuning, heldout for the benchmark's figures only.")
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, index_path)
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        sys.exit(main())
