"""``enmei bench abuse``: how fast a crashed unit comes back while enmei is under attack (issue 11).

For each attack a real supervisor (``enmei up --listen``, a subprocess, with a fresh state dir) runs
demo services ``web0``, ``web1``...; while the attack goes on, one of them (in turn) is killed with
SIGKILL, ``runs`` times, and the time from the kill until a *new* pid answers ``GET /`` on its port is
measured (the median is the attack's figure). The units' restart backoff is 0 s, so the figure is the
supervisor's own reaction (seeing the exit, deciding, starting) plus the service's start, not a
configured delay; and no unit is killed more than ``KILLS_PER_UNIT`` times, so the shipped policy's
flapping breaker (4 failures in 120 s) never trips: the bench measures restarts, not the breaker.
Attacks:

* ``baseline``: none.
* ``d1_big_body``: two clients POST 100 MiB JSON bodies without a token to ``web0``'s restart action,
  one after the other (50 ms apart), for the whole measurement.
* ``d2_log_flood``: a unit ``flood`` writes 64 KiB chunks to stdout as fast as it can, with
  ``log.max_bytes = "1MiB"``, ``keep = 2``. Its log files are sampled every 20 ms for the peak disk use
  (apparent size), compared with 3 × max_bytes × (keep + 1). Safety: past 1 GiB the flood is paused (a
  stop file the unit checks) and ``capped`` says so — this bench never fills the disk.
* ``d5_slow_policy``: the policy file's ``on_tick`` does ``len(("x"*(1<<26)).replace("x","y"))`` on each
  real tick (not on the trial tick enmei runs when it loads a policy; the shipped library does the
  rest). If enmei refuses the policy at start, ``refused_at_start`` says why and the attack has no
  figure (a refusal is a defence too).
* ``d11_idle_connections``: 64 connections to the web server that never send a request, re-opened as
  soon as the server closes one; after each kill an authenticated action (restart of a spare unit) is
  sent and whether it was accepted (202) is reported.

Each attack also reports the supervisor's peak resident memory (``supervisor_peak_rss_mib``).
Summary: ``max_restart_s_during_attack``, the worst attack's median; goal ≤ ``GOAL_S`` (1 s). A restart
not seen within ``WAIT_S`` counts as ``WAIT_S``. Every supervisor, unit, socket and temp dir is removed
at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from enmei.demo.ports import free_ports
from enmei.visor.process import ENV_SUPERVISOR, ENV_UNIT, ProcessBackend

__all__ = ["ATTACKS", "GOAL_S", "run"]

ATTACKS = ("baseline", "d1_big_body", "d2_log_flood", "d5_slow_policy", "d11_idle_connections")
GOAL_S = 1.0
WAIT_S = 60.0
MIB = 1 << 20
LOG_MAX_BYTES = 1 * MIB
LOG_KEEP = 2
FLOOD_CAP_BYTES = 1 << 30
IDLE_CONNECTIONS = 64
KILLS_PER_UNIT = 3

_SLOW_POLICY = """\
load("@enmei/default", "on_exit", "on_outcome", "on_verdict", default_on_tick = "on_tick")

def on_tick(tick, ctx):
    if tick.wall > 0:  # real ticks only: the trial tick enmei runs at load has wall 0
        n = len(("x" * (1 << 26)).replace("x", "y"))
    return default_on_tick(tick, ctx)
"""

_FLOOD = """\
import os, sys, time
stop, out, chunk = sys.argv[1], sys.stdout.buffer, b"x" * 65535 + b"\\n"
while True:
    if os.path.exists(stop):
        time.sleep(0.1)
        continue
    for _ in range(16):
        out.write(chunk)
    out.flush()
"""


def config_text(attack: str, ports: list[int], workdir: Path) -> str:
    py = sys.executable
    parts = ['[supervisor]\nstate_dir = "state"\n']
    if attack == "d5_slow_policy":
        parts.append('policy = "slow.star"\n')
    for i, port in enumerate(ports):
        parts.append(f"""
[units.web{i}]
command = ["{py}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
start_s = 0.2
stop_timeout_s = 2
[units.web{i}.restart]
backoff_first_s = 0
backoff_max_s = 0
budget = 1000
window_s = 60
""")
    if attack == "d2_log_flood":
        parts.append(f"""
[units.flood]
command = ["{py}", "-c", {json.dumps(_FLOOD)}, "{workdir / 'flood.stop'}"]
stop_timeout_s = 2
[units.flood.log]
max_bytes = "1MiB"
keep = {LOG_KEEP}
""")
    if attack == "d11_idle_connections":
        parts.append(f"""
[units.spare]
command = ["{py}", "-c", "import time; time.sleep(1e6)"]
stop_timeout_s = 2
[units.spare.restart]
backoff_first_s = 0
budget = 1000
window_s = 60
""")
    return "".join(parts)


def _get(url: str, timeout: float = 0.5, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback URLs we made
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), b""


def _pid(port: int) -> int | None:
    try:
        status, body = _get(f"http://127.0.0.1:{port}/", 0.5)
        return int(json.loads(body)["pid"]) if status == 200 else None
    except (OSError, ValueError, KeyError):
        return None


class _Supervisor:
    """One ``enmei up`` with its own state dir; ``close()`` stops it and whatever it started."""

    def __init__(self, attack: str, workdir: Path, units: int = 1) -> None:
        self.attack = attack
        self.workdir = workdir
        workdir.mkdir(parents=True)
        *self.ports, self.web_port = free_ports(units + 1)
        self.cfg = workdir / "enmei.toml"
        if attack == "d5_slow_policy":
            (workdir / "slow.star").write_text(_SLOW_POLICY)
        self.cfg.write_text(config_text(attack, self.ports, workdir))
        self.state = workdir / "state"
        self.instance = ProcessBackend(clock=None, state_dir=self.state, emit=None).instance
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.workdir / "up.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "enmei", "up", "--plain", "--listen", f"127.0.0.1:{self.web_port}",
                 str(self.cfg)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + timeout_s
        while any(_pid(p) is None for p in self.ports) or not self._api_up():
            if time.monotonic() > end or self.proc.poll() is not None:
                tail = (self.workdir / "up.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"enmei up ({self.attack}) did not start within {timeout_s:g} s:\n{tail}")
            time.sleep(0.1)

    def _api_up(self) -> bool:
        with contextlib.suppress(OSError):
            return _get(self.api + "/api/units", 1.0)[0] == 200
        return False

    def token(self) -> str:
        return (self.state / "web.token").read_text().strip()

    def units_alive(self) -> list[int]:
        out = []
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if p.environ().get(ENV_SUPERVISOR) == self.instance and p.environ().get(ENV_UNIT):
                    out.append(p.pid)
        return out

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in self.units_alive():  # what a supervisor that had to be killed left behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def restart_time(port: int, wait_s: float = WAIT_S) -> float:
    """Kill -9 the service on ``port``; seconds until a new pid answers there (``wait_s`` if none does)."""
    end = time.monotonic() + 30
    old = _pid(port)
    while old is None and time.monotonic() < end:
        time.sleep(0.05)
        old = _pid(port)
    if old is None:
        return wait_s
    t0 = time.monotonic()
    os.kill(old, signal.SIGKILL)
    while time.monotonic() - t0 < wait_s:
        pid = _pid(port)
        if pid is not None and pid != old:
            return time.monotonic() - t0
        time.sleep(0.01)
    return wait_s


# -- the attacks -----------------------------------------------------------------------------------

class _Attack:
    """A thread per attacker until ``stop()``; ``figures()`` says what they did."""

    def __init__(self) -> None:
        self.halt = threading.Event()
        self.threads: list[threading.Thread] = []
        self.tally: Counter[str] = Counter()
        self.lock = threading.Lock()

    def spawn(self, fn: Callable[[], None], n: int = 1) -> None:
        for i in range(n):
            t = threading.Thread(target=fn, name=f"enmei-abuse-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.tally[key] += n

    def stop(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(timeout=30)

    def figures(self) -> dict[str, Any]:
        return dict(self.tally)

    def after_kill(self) -> None:
        """Called after each measured restart (the D11 attack sends its authenticated action here)."""


class _BigBody(_Attack):
    BODY = 100 * MIB

    def __init__(self, sup: _Supervisor) -> None:
        super().__init__()
        self.port = sup.web_port
        self.spawn(self._one, 2)

    def _one(self) -> None:
        chunk = b"[" + b"1," * 32_766 + b"1"
        head = (f"POST /api/units/web0/actions/restart HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {self.BODY}\r\n\r\n").encode()
        while not self.halt.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
                    sock.sendall(head)
                    sent = 0
                    while sent < self.BODY and not self.halt.is_set():
                        r, w, _ = select.select([sock], [sock], [], 1.0)
                        if r:
                            break
                        if w:
                            try:
                                sent += sock.send(chunk[:self.BODY - sent])
                            except OSError:  # closed by the server: its answer may be waiting
                                break
                    sock.settimeout(60)
                    answer = b""
                    with contextlib.suppress(OSError):
                        answer = sock.recv(64)
                    self.count("answer_" + (answer[9:12].decode(errors="replace") if answer else "none"))
                    self.count("body_mib_sent", sent // MIB)
            except OSError as exc:
                self.count(f"error_{type(exc).__name__}")
            self.count("requests")
            self.halt.wait(0.05)


class _LogFlood(_Attack):
    def __init__(self, sup: _Supervisor) -> None:
        super().__init__()
        self.logs = sup.state / "logs"
        self.stop_file = sup.workdir / "flood.stop"
        self.peak = 0
        self.capped = False
        self.spawn(self._watch)

    def _size(self) -> int:
        total = 0
        with contextlib.suppress(OSError):
            for p in self.logs.iterdir():
                if p.name.startswith("flood."):
                    with contextlib.suppress(OSError):
                        total += p.stat().st_size
        return total

    def _watch(self) -> None:
        while not self.halt.is_set():
            size = self._size()
            self.peak = max(self.peak, size)
            if size > FLOOD_CAP_BYTES and not self.capped:
                self.stop_file.touch()  # the flood pauses: this bench must not fill the disk
                self.capped = True
            self.halt.wait(0.02)

    def figures(self) -> dict[str, Any]:
        bound = 3 * LOG_MAX_BYTES * (LOG_KEEP + 1)
        return {"peak_log_bytes": self.peak, "bound_bytes": bound, "within_bound": self.peak <= bound,
                "capped_at_bytes": FLOOD_CAP_BYTES if self.capped else None}


class _IdleConnections(_Attack):
    def __init__(self, sup: _Supervisor) -> None:
        super().__init__()
        self.sup = sup
        self.token = sup.token()
        self.actions: list[tuple[int, float]] = []
        self.spawn(self._hold)

    def _hold(self) -> None:
        held: list[socket.socket] = []
        try:
            while not self.halt.is_set():
                while len(held) < IDLE_CONNECTIONS and not self.halt.is_set():
                    try:
                        held.append(socket.create_connection(("127.0.0.1", self.sup.web_port), timeout=5))
                        self.count("connections_opened")
                    except OSError:
                        self.count("connect_failed")
                        break
                r, _, _ = select.select(held, [], [], 0.2) if held else ([], [], [])
                for sock in r:  # readable: the server closed it (it never answers a request not sent)
                    held.remove(sock)
                    sock.close()
                    self.count("closed_by_server")
                if r:
                    self.halt.wait(0.05)
        finally:
            for sock in held:
                sock.close()

    def after_kill(self) -> None:
        t0 = time.monotonic()
        try:
            status, _ = _get(self.sup.api + "/api/units/spare/actions/restart", timeout=10, data=b"{}",
                             headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        except OSError:
            status = 0
        self.actions.append((status, time.monotonic() - t0))

    def figures(self) -> dict[str, Any]:
        return {**dict(self.tally), "idle_connections": IDLE_CONNECTIONS,
                "authenticated_action_statuses": [s for s, _ in self.actions],
                "authenticated_action_ok": bool(self.actions) and all(s == 202 for s, _ in self.actions),
                "authenticated_action_max_s": round(max((t for _, t in self.actions), default=0.0), 3)}


class _PeakRss:
    """The peak resident memory of process ``pid``, sampled every 50 ms until ``halt``."""

    def __init__(self, pid: int, halt: threading.Event) -> None:
        self.pid = pid
        self.halt = halt
        self.peak = 0
        self.thread = threading.Thread(target=self._watch, name="enmei-abuse-rss", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(self.pid)
            while not self.halt.is_set():
                self.peak = max(self.peak, proc.memory_info().rss)
                self.halt.wait(0.05)


def _attack(name: str, sup: _Supervisor) -> _Attack:
    if name == "d1_big_body":
        return _BigBody(sup)
    if name == "d2_log_flood":
        return _LogFlood(sup)
    if name == "d11_idle_connections":
        return _IdleConnections(sup)
    return _Attack()  # baseline, and d5 (the policy file is the attack)


def measure(name: str, runs: int, workdir: Path) -> dict[str, Any]:
    """``runs`` kill -9 -> restarted times of ``web`` during attack ``name`` (see the module docstring)."""
    sup = _Supervisor(name, workdir / name, units=-(-runs // KILLS_PER_UNIT))
    attack: _Attack | None = None
    try:
        try:
            sup.start()
        except RuntimeError as exc:
            if name != "d5_slow_policy" or sup.proc is None or sup.proc.poll() is None:
                raise
            return {"restart_s": [], "median_restart_s": None, "refused_at_start": str(exc)[-600:]}
        attack = _attack(name, sup)
        rss = _PeakRss(sup.proc.pid if sup.proc is not None else os.getpid(), attack.halt)
        attack.threads.append(rss.thread)
        time.sleep(1.0)  # the attack takes hold (the flood fills its pipe, the connections are accepted)
        times = []
        for i in range(runs):
            times.append(round(restart_time(sup.ports[i % len(sup.ports)]), 3))
            attack.after_kill()
            time.sleep(0.3)
        attack.stop()
        return {"restart_s": times, "median_restart_s": round(statistics.median(times), 3),
                "restarts_not_seen": sum(1 for t in times if t >= WAIT_S),
                "supervisor_peak_rss_mib": round(rss.peak / MIB, 1), **attack.figures()}
    finally:
        if attack is not None:
            attack.stop()
        sup.close()


def run(runs: int = 5, attacks: tuple[str, ...] = ATTACKS, keep: bool = False) -> dict[str, Any]:
    """Every attack of ``attacks`` (with ``baseline`` first), ``runs`` restarts each; the summary."""
    if runs < 1:
        raise ValueError(f"--runs must be at least 1, not {runs}")
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise ValueError(f"unknown attacks {sorted(unknown)}; known: {', '.join(ATTACKS)}")
    tmp = Path(tempfile.mkdtemp(prefix="enmei-bench-abuse-"))
    t0 = time.monotonic()
    try:
        results = {name: measure(name, runs, tmp) for name in ATTACKS if name in attacks}
        during = [r["median_restart_s"] for n, r in results.items()
                  if n != "baseline" and r["median_restart_s"] is not None]
        worst = max(during) if during else None
        return {"runs": runs, "attacks": results, "max_restart_s_during_attack": worst,
                "goal": f"max_restart_s_during_attack <= {GOAL_S:g} s",
                "goal_met": worst is not None and worst <= GOAL_S,
                "seconds": round(time.monotonic() - t0, 1)}
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
