"""``enmei bench deploy``: a process unit under constant load, restarted plainly versus updated by socket
handover, side by side in one run of one enmei.

A real ``enmei up`` (a subprocess) supervises two units running the same small HTTP server
(``enmei.demo.handover_service``):

* ``plain`` binds its port itself, as a server does without socket activation; it is restarted with
  ``enmei ctl restart`` (SIGTERM, the server drains, then a fresh start binds the port again);
* ``held`` gets its port from enmei (``[[sockets]]``, ``LISTEN_FDS``); it is updated with ``enmei update
  held --command ...`` (a new version beside the old one, the old one stopped once the new one is ready).
  ``enmei ctl restart held`` — a plain restart, but on a held socket — is measured too
  (``*_restart_held``): the held socket alone turns refused connections into queued ones.

A load generator (``Load``: threads, each opening a new connection per request, on a fixed schedule)
sends at least ``rate`` requests per second to each port for the whole run. Each trial is measured over
a window from ``margin_s`` before the command to ``margin_s`` after its answer: ``failed_requests_*``
(refused, reset, timed out after ``timeout_s`` or a wrong answer) and ``max_gap_s_*``, the longest time
between two successive successful answers in the window. ``baseline_max_gap_s`` is the same figure
over a window of the same load in which nothing was done (what the loaded machine itself costs).
Medians over ``runs`` trials of each kind, and every trial's figures.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.demo.ports import free_ports

__all__ = ["Load", "Sample", "run", "window_figures"]


@dataclass(frozen=True)
class Sample:
    """One request: when it was sent and answered (monotonic), whether it succeeded, and how."""

    sent: float
    done: float
    ok: bool
    error: str = ""  # "refused", "reset", "timeout", "status", ... when not ok
    pid: int | None = None
    version: str | None = None


def request(port: int, timeout_s: float, path: str = "/") -> Sample:
    """``GET path`` on a new connection to 127.0.0.1:``port``; never raises."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except ConnectionRefusedError:
        return Sample(t0, time.monotonic(), False, "refused")
    except ConnectionResetError:
        return Sample(t0, time.monotonic(), False, "reset")
    except TimeoutError:
        return Sample(t0, time.monotonic(), False, "timeout")
    except OSError as exc:
        return Sample(t0, time.monotonic(), False, type(exc).__name__)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        return Sample(t0, time.monotonic(), False, "status" if head else "empty")
    try:
        doc = json.loads(body)
        return Sample(t0, time.monotonic(), True, pid=int(doc["pid"]), version=str(doc["version"]))
    except (ValueError, KeyError, TypeError):
        return Sample(t0, time.monotonic(), False, "body")


@dataclass
class Load:
    """``rate`` requests per second to ``port`` from ``threads`` threads, each on a fixed schedule (a late
    request is sent at once, not skipped), until ``stop()``, ``max_requests`` or ``max_s``."""

    port: int
    rate: float = 250.0
    threads: int = 5
    timeout_s: float = 2.0
    max_requests: int = 1_000_000
    max_s: float = 3600.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        period = self.threads / self.rate
        t0 = time.monotonic()
        for i in range(self.threads):
            th = threading.Thread(target=self._work, args=(t0 + i * period / self.threads, period),
                                  name=f"load-{self.port}-{i}", daemon=True)
            self._workers.append(th)
            th.start()
        return self

    def _work(self, first: float, period: float) -> None:
        due = first
        end = first + self.max_s
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= end:
                return
            if due > now:
                self._stop.wait(due - now)
                continue
            sample = request(self.port, self.timeout_s)
            with self._lock:
                if len(self.samples) >= self.max_requests:
                    return
                self.samples.append(sample)
            due += period

    def stop(self) -> None:
        self._stop.set()
        for th in self._workers:
            th.join(timeout=self.timeout_s + 5)

    def between(self, t0: float, t1: float) -> list[Sample]:
        """The samples sent from ``t0`` to ``t1``, in order of their answers."""
        with self._lock:
            return sorted((s for s in self.samples if t0 <= s.sent <= t1), key=lambda s: s.done)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def window_figures(samples: list[Sample]) -> dict[str, Any]:
    """Failed requests (by kind), the longest time between two successive successful answers, the rate.

    >>> s = [Sample(0.0, 0.01, True), Sample(0.005, 0.02, False, "refused"), Sample(0.01, 0.05, True)]
    >>> window_figures(s)["max_gap_s"], window_figures(s)["failed"]
    (0.04, 1)
    """
    ok = [s.done for s in samples if s.ok]
    gaps = [b - a for a, b in itertools.pairwise(ok)]
    kinds: dict[str, int] = {}
    for s in samples:
        if not s.ok:
            kinds[s.error] = kinds.get(s.error, 0) + 1
    span = (samples[-1].sent - samples[0].sent) if len(samples) > 1 else 0.0
    return {"requests": len(samples), "failed": sum(kinds.values()), "errors": kinds,
            "max_gap_s": round(max(gaps), 4) if gaps else None,
            "rate_per_s": round(len(samples) / span, 1) if span > 0 else None}


def _config(state: Path, plain_port: int, held_port: int, py: str) -> str:
    def cmd(version: str, port: int | None) -> str:
        argv = [py, "-m", "enmei.demo.handover_service", "--version", version]
        if port is not None:
            argv += ["--port", str(port)]
        return json.dumps(argv)

    return f"""
[supervisor]
state_dir = "{state}"

[units.plain]
command = {cmd("1", plain_port)}
listen = ["127.0.0.1:{plain_port}"]
startup_notify = true
start_s = 0.3
stop_timeout_s = 10

[units.held]
command = {cmd("1", None)}
startup_notify = true
start_s = 0.3
stop_timeout_s = 10
[[units.held.sockets]]
address = "127.0.0.1:{held_port}"
name = "http"
backlog = 4096
"""


def _ctl(state: Path, req: dict[str, Any]) -> dict[str, Any]:
    from enmei.ctl.client import request as ctl_request

    answer = ctl_request(state, req, timeout_s=120.0)
    if not answer.get("ok"):
        raise RuntimeError(f"{req}: {answer.get('error')}")
    return answer


def _wait(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench deploy: {what} within {timeout_s:g}s")
        time.sleep(0.05)


@contextlib.contextmanager
def _enmei(cfg: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "enmei", "up", "--plain", str(cfg)], stdout=out,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield up
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()


def _median(xs: list[Any]) -> Any:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 4) if vals else None


def run(runs: int = 5, rate: float = 250.0, margin_s: float = 0.5, workdir: Path | None = None) -> dict[str, Any]:
    """The benchmark (see the module docstring); ``runs`` trials of each kind, interleaved. ``workdir``:
    where enmei's state and the units' logs are kept (default: a temporary directory, removed)."""
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="enmei-bench-deploy-") as tmp:
        root = Path(tmp) if workdir is None else workdir
        root.mkdir(parents=True, exist_ok=True)
        state = root / "state"
        plain_port, held_port = free_ports(2)
        cfg = root / "enmei.toml"
        cfg.write_text(_config(state, plain_port, held_port, py))
        with _enmei(cfg, root / "up.log") as up:
            def answers(port: int) -> bool:
                if up.poll() is not None:
                    raise RuntimeError(f"enmei up ended: {(root / 'up.log').read_text()[-2000:]}")
                return request(port, 1.0).ok

            _wait(lambda: answers(plain_port) and answers(held_port), 120, "the units did not answer")
            loads = {p: Load(p, rate=rate).start() for p in (plain_port, held_port)}
            try:
                time.sleep(2 * margin_s + 1.0)
                t_quiet = time.monotonic()
                time.sleep(2 * margin_s + 0.5)
                baseline = window_figures(loads[held_port].between(t_quiet, t_quiet + 2 * margin_s + 0.5))
                trials: dict[str, list[dict[str, Any]]] = {"restart": [], "restart_held": [], "handover": []}
                for i in range(runs):
                    for kind, port, req in (
                        ("restart", plain_port, {"op": "restart", "unit": "plain"}),
                        ("restart_held", held_port, {"op": "restart", "unit": "held"}),
                        ("handover", held_port, {"op": "update", "unit": "held", "command": [
                            py, "-m", "enmei.demo.handover_service", "--version", f"{i + 2}"]}),
                    ):
                        t0 = time.monotonic()
                        time.sleep(margin_s)
                        t_cmd = time.monotonic()
                        answer = _ctl(state, req)
                        t_done = time.monotonic()
                        time.sleep(margin_s)
                        figs = window_figures(loads[port].between(t0, time.monotonic()))
                        outcome = answer.get("outcome") or {}
                        figs.update({"run": i, "command_s": round(t_done - t_cmd, 3),
                                     "outcome": outcome.get("state")})
                        trials[kind].append(figs)
                rates = [window_figures(ld.samples)["rate_per_s"] for ld in loads.values()]
            finally:
                for ld in loads.values():
                    ld.stop()
    out: dict[str, Any] = {}
    for kind in ("restart", "handover", "restart_held"):
        out[f"failed_requests_{kind}"] = _median([t["failed"] for t in trials[kind]])
        out[f"max_gap_s_{kind}"] = _median([t["max_gap_s"] for t in trials[kind]])
    out.update({
        "runs": runs, "rate_per_s_target": rate, "rate_per_s_measured": rates,
        "baseline_max_gap_s": baseline["max_gap_s"],
        "goal_met": bool(all(t["failed"] == 0 for t in trials["handover"])
                         and all((t["max_gap_s"] or 0) <= 0.010 for t in trials["handover"])),
        "trials": trials,
    })
    return out
