"""The fault-class data set of our own: the demo service's real log under injected faults, labelled.

``python -m enmei.bench.logfaults OUT.jsonl.gz`` (about 5 minutes) runs the demo service
(:mod:`enmei.demo.service`, a real HTTP server, as a child process on a free loopback port) ``runs``
times. In each run, three client threads send a mix of requests (``/``, ``/health``, ``/api/items``,
``/api/search``, each thread about 5 a second), and the faults are injected one after the other, in an
order shuffled per run, each for ``segment_s`` seconds after ``segment_s`` seconds of normal work:

* ``error_burst``: 30 % of requests answer 500 (``/admin/fault?error_rate=0.3``);
* ``slow_dependency``: ``/api/search`` waits 300 ms on its "backend" (``latency_ms=300``);
* ``memory_leak``: 8 MiB/s leaked (``leak_mib_s=8``);
* ``degraded``: search switched off (``/admin/degrade?on=1``);
* ``crash_loop``: the service crashes every second (``/admin/crash``) and is started again at once,
  as a supervisor would.

Every line the service writes to stderr is kept with its run, the fault active when it was read, and
its time into that segment (``t``); the admin requests' own access lines are left out (they are the
injection, not its symptom). The first ``SETTLE_S`` of a segment is the transition: the evaluation
(:func:`evaluate`) leaves those lines out.

**Evaluation, split by run and time**: a signature (:func:`enmei.logs.signatures.train`) is trained on
the windows of the first runs and tested on the last run, which comes after them in time — never a
window of a test run in training. ``fault_class_accuracy`` and ``fault_class_macro_f1`` are over the
test windows (a window labelled ``unknown`` is wrong). ``unknown_detection_rate``: each fault class in
turn is left out of training; the share of its test windows then called ``unknown``, averaged over the
classes (each class's own rate is in ``unknown_by_class``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["FAULTS", "SETTLE_S", "WINDOW", "evaluate", "generate", "load", "main"]

FAULTS = ("error_burst", "slow_dependency", "memory_leak", "degraded", "crash_loop")
SETTLE_S = 1.0
WINDOW = 40
MAX_NOVEL = 0.05
MIN_P = 0.8
_PATHS = ("/", "/health", "/api/items", "/api/search?q=item-1")
_INJECT = {
    "error_burst": ("/admin/fault?error_rate=0.3", "/admin/fault?error_rate=0"),
    "slow_dependency": ("/admin/fault?latency_ms=300&endpoint=/api/search", "/admin/fault?latency_ms=0"),
    "memory_leak": ("/admin/fault?leak_mib_s=8", "/admin/reset"),
    "degraded": ("/admin/degrade?on=1", "/admin/degrade?on=0"),
}


class _Service:
    """The demo service as a child process; its stderr lines go to ``sink`` with the current label."""

    def __init__(self, port: int, sink: list[dict[str, Any]], run: int) -> None:
        self.port = port
        self.sink = sink
        self.run = run
        self.label = "normal"
        self.since = time.monotonic()
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.readers: list[threading.Thread] = []

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "enmei.demo.service", "--port", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        reader.start()
        self.readers.append(reader)
        end = time.monotonic() + 30
        while time.monotonic() < end and self.get("/health") is None:
            time.sleep(0.05)

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if "/admin/" in line:
                    continue
                with self.lock:
                    self.sink.append({"run": self.run, "label": self.label,
                                      "t": round(time.monotonic() - self.since, 3), "line": line})

    def relabel(self, label: str) -> None:
        with self.lock:
            self.label = label
            self.since = time.monotonic()

    def get(self, path: str, timeout: float = 5.0) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
                r.read()
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for reader in self.readers:  # each ends at its process's end (the pipe's EOF)
            reader.join(10)


def _clients(svc: _Service, stop: threading.Event, seed: int) -> list[threading.Thread]:
    def work(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        while not stop.is_set():
            svc.get(rng.choice(_PATHS), timeout=2.0)
            stop.wait(rng.uniform(0.1, 0.3))
    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    return threads


def generate(out: Path, *, runs: int = 3, segment_s: float = 10.0, seed: int = 0) -> dict[str, Any]:
    """Run the service ``runs`` times under every fault and write the labelled lines to ``out``
    (gzip-compressed JSON lines: ``run``, ``label``, ``t``, ``line``). Returns line counts by label."""
    from enmei.demo.ports import free_ports

    lines: list[dict[str, Any]] = []
    rng = random.Random(seed)
    for run in range(runs):
        svc = _Service(free_ports(1)[0], lines, run)
        svc.start()
        stop = threading.Event()
        threads = _clients(svc, stop, seed + run)
        try:
            order = list(FAULTS)
            rng.shuffle(order)
            for fault in order:
                svc.relabel("normal")
                time.sleep(segment_s)
                svc.relabel(fault)
                if fault == "crash_loop":
                    end = time.monotonic() + segment_s
                    while time.monotonic() < end:
                        time.sleep(1.0)
                        svc.get("/admin/crash?how=exit", timeout=2.0)
                        if svc.proc is not None:
                            svc.proc.wait(10)
                        svc.start()
                else:
                    on, off = _INJECT[fault]
                    svc.get(on)
                    time.sleep(segment_s)
                    svc.get(off)
            svc.relabel("normal")
            time.sleep(segment_s)
        finally:
            stop.set()
            for t in threads:
                t.join(5)
            svc.stop()
    out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(out, "wt", encoding="utf-8") as f:
        for item in lines:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    return dict(Counter(x["label"] for x in lines))


def load(path: Path) -> list[dict[str, Any]]:
    """The labelled lines :func:`generate` wrote."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _segments(items: Sequence[dict[str, Any]]) -> list[tuple[int, str, list[str]]]:
    """Consecutive lines of one run and label (settled ones only), in order."""
    out: list[tuple[int, str, list[str]]] = []
    for x in items:
        if x["t"] < SETTLE_S:
            continue
        if out and out[-1][0] == x["run"] and out[-1][1] == x["label"] and not x.get("_cut"):
            out[-1][2].append(x["line"])
        else:
            out.append((x["run"], x["label"], [x["line"]]))
    return out


def _windows(segs: Sequence[tuple[int, str, list[str]]], window: int) -> list[tuple[str, list[str]]]:
    from enmei.logs.signatures import windows

    return [(label, w) for _, label, lines in segs for w in windows(lines, window) if len(w) == window]


def _macro_f1(truth: Sequence[str], pred: Sequence[str]) -> float:
    classes = sorted(set(truth))
    f1s = []
    for c in classes:
        tp = sum(1 for t, p in zip(truth, pred, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(truth, pred, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(truth, pred, strict=True) if t == c and p != c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    return sum(f1s) / len(f1s) if f1s else 0.0


def evaluate(items: Sequence[dict[str, Any]], *, window: int = WINDOW, seed: int = 0, max_novel: float = MAX_NOVEL,
             min_p: float = MIN_P) -> dict[str, Any]:
    """The figures of the module docstring, from :func:`load`'s items (the last run tests)."""
    from enmei.logs.signatures import train

    runs = sorted({x["run"] for x in items})
    if len(runs) < 2:
        raise ValueError("the data set needs two runs at least (train on the first, test on the last)")
    test_run = runs[-1]
    segs = _segments(items)
    train_w = _windows([s for s in segs if s[0] != test_run], window)
    test_w = _windows([s for s in segs if s[0] == test_run], window)

    def judge(sig_train: list[tuple[str, list[str]]]) -> list[str]:
        sig = train(sig_train, application="enmei-demo", window=window, seed=seed, max_novel=max_novel,
                    min_p=min_p)
        out = []
        for _, w in test_w:
            miner, index = sig.miner()  # each window judged on its own, from a fresh miner
            out.append(sig.predict(w, miner, index).label)
        return out

    pred = judge(train_w)
    truth = [label for label, _ in test_w]
    right = sum(1 for t, p in zip(truth, pred, strict=True) if t == p)
    unknown_by: dict[str, float] = {}
    for fault in FAULTS:
        kept = [(label, w) for label, w in train_w if label != fault]
        p_out = judge(kept)
        mine = [p for (label, _), p in zip(test_w, p_out, strict=True) if label == fault]
        unknown_by[fault] = round(sum(1 for p in mine if p == "unknown") / len(mine), 4) if mine else 0.0
    confusion: dict[str, Counter[str]] = defaultdict(Counter)
    for t, p in zip(truth, pred, strict=True):
        confusion[t][p] += 1
    return {
        "fault_class_accuracy": round(right / len(truth), 4) if truth else None,
        "fault_class_macro_f1": round(_macro_f1(truth, pred), 4),
        "unknown_detection_rate": round(sum(unknown_by.values()) / len(unknown_by), 4),
        "unknown_by_class": unknown_by,
        "fault_class_windows": {"train": len(train_w), "test": len(test_w), "window": window,
                                "train_runs": [r for r in runs if r != test_run], "test_run": test_run},
        "fault_class_confusion": {t: dict(c) for t, c in sorted(confusion.items())},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m enmei.bench.logfaults", description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--segment-s", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    counts = generate(args.out, runs=args.runs, segment_s=args.segment_s, seed=args.seed)
    print(json.dumps({"out": str(args.out), "lines": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
