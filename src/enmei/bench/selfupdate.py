"""``enmei bench selfupdate``: ``enmei ctl upgrade`` again and again under a real ``enmei up``.

A real ``enmei up --listen`` supervises ``units`` small HTTP services on loopback (``enmei.demo.service``),
each probed over HTTP every ``probe_period_s``; a client hammers the web API (a new connection per request)
the whole time. Each of ``runs`` upgrades hands supervision to a new enmei process (``python -m enmei``,
this venv). Measured per run, and reported as medians (with the worst beside them):

* ``stopped_units``: units whose pid changed or that were not running after the upgrade (goal 0);
* ``max_probe_gap_s``: the longest time between two probe results of any unit around the upgrade, from the
  journal's samples (goal ``<= 2 * probe_period_s``: no interval missed by more than one period);
* ``takeover_s``: the old enmei's stop to the new one supervising (``handed_over`` in the journal);
* ``refused_connections``: web connections refused during the whole bench (goal 0), beside the requests
  served and other errors.

Everything started is ended by pid afterwards (the last enmei by SIGTERM, which stops the units), also on
failure; the temp dir is removed.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from enmei.box import Reader
from enmei.ctl.client import request
from enmei.ctl.protocol import CtlError
from enmei.demo.ports import free_ports

__all__ = ["Hammer", "Rig", "probe_gap", "run"]


def config_text(ports: list[int], period_s: float) -> str:
    py = sys.executable
    parts = ['[supervisor]\nstate_dir = "state"\n']
    for i, port in enumerate(ports):
        parts.append(f"""
[units.s{i}]
command = ["{py}", "-m", "enmei.demo.service", "--port", "{port}"]
start_s = 0.3
stop_timeout_s = 3
[[units.s{i}.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval_s = {period_s}
timeout_s = {min(2.0, period_s)}
""")
    return "".join(parts)


class Hammer:
    """A client that opens a new connection for each ``GET path`` on the web port, as fast as it gets
    answers (at most ``max_requests``), counting what happened, until ``stop``."""

    def __init__(self, port: int, path: str = "/api/units", max_requests: int = 1_000_000) -> None:
        self.port = port
        self.path = path
        self.max_requests = max_requests
        self.ok = 0
        self.refused = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hammer", daemon=True)

    def start(self) -> Hammer:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(30)
        return {"web_requests": self.ok, "refused_connections": self.refused, "web_errors": self.errors,
                "web_error_kinds": dict(self.error_kinds)}

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set() and n < self.max_requests:
            n += 1
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    self.ok += 1
                else:
                    self._error(f"HTTP {resp.status}")
            except ConnectionRefusedError:
                self.refused += 1
            except (OSError, http.client.HTTPException) as exc:
                self._error(type(exc).__name__)
            finally:
                conn.close()
            self._stop.wait(0.02)

    def _error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


def probe_gap(journal: Path, units: list[str], since: float, until: float) -> tuple[float, str]:
    """The longest time between two consecutive probe results of one unit with ``since <= wall <= until``
    (the ``http.ok`` samples), and the unit it was seen on."""
    worst, where = 0.0, ""
    with Reader(journal) as r:
        for unit in units:
            walls = [w for w, _ in r.samples_between(unit, "http.ok", since, until)]
            for a, b in itertools.pairwise(walls):
                if b - a > worst:
                    worst, where = b - a, unit
    return worst, where


class Rig:
    """One ``enmei up --listen`` over ``units`` HTTP services in ``workdir`` (see the module docstring)."""

    def __init__(self, workdir: Path, units: int = 10, period_s: float = 1.0) -> None:
        self.workdir = workdir
        ports = free_ports(units + 1)
        self.web_port = ports[-1]
        self.ports = ports[:-1]  # the services', in unit order
        self.period_s = period_s
        self.units = [f"s{i}" for i in range(units)]
        self.cfg = workdir / "enmei.toml"
        self.cfg.write_text(config_text(ports[:-1], period_s))
        self.state = workdir / "state"
        self.journal = self.state / "journal.sqlite"
        self.log = workdir / "up.log"
        self.first: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, float] = {}  # every pid (enmei or unit) seen, with its create time: ended at close

    def start(self, timeout_s: float = 120.0, env: dict[str, str] | None = None) -> None:
        with open(self.log, "ab") as out:
            self.first = subprocess.Popen([sys.executable, "-m", "enmei", "up", "--plain", str(self.cfg), "--listen",
                                           f"127.0.0.1:{self.web_port}"], stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        self._remember(self.first.pid)
        self.wait_healthy(timeout_s)

    def status(self) -> dict[str, Any] | None:
        try:
            answer = request(self.state, {"op": "status"}, timeout_s=10.0)
        except CtlError:
            return None
        for u in answer.get("units", []):
            if u.get("pid"):
                self._remember(int(u["pid"]))
        if answer.get("pid"):
            self._remember(int(answer["pid"]))
        return answer

    def pids(self) -> dict[str, int | None]:
        st = self.status() or {}
        return {u["name"]: (u["pid"] if u["state"] == "running" else None) for u in st.get("units", [])}

    def wait_healthy(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            st = self.status()
            if st and len(st["units"]) == len(self.units) and all(
                    u["state"] == "running" and u["health"] == "ok" for u in st["units"]):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the units did not all run healthy within {timeout_s:g}s; log: {self._log_tail()}")

    def upgrade(self, timeout_s: float = 180.0, **req: Any) -> dict[str, Any]:
        """One ``upgrade`` over ctl, then wait until the successor (or the old enmei, fallen back) says how it
        ended. Returns ``{"answer", "end", "pid"}``."""
        answer = request(self.state, {"op": "upgrade", **req}, timeout_s=timeout_s)
        result = answer.get("upgrade") or {}
        if result.get("state") != "handing_over":
            return {"answer": answer, "end": result, "pid": answer.get("pid")}
        want = (result.get("successor_pid"), answer.get("pid"))
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            st = self.status()
            if st and st.get("pid") in want and st.get("upgrade"):
                return {"answer": answer, "end": st["upgrade"], "pid": st["pid"]}
            time.sleep(0.1)
        raise RuntimeError(f"no enmei answered after the upgrade within {timeout_s:g}s; log: {self._log_tail()}")

    def supervisor_pid(self) -> int | None:
        st = self.status()
        return int(st["pid"]) if st and st.get("pid") else None

    def _remember(self, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self.seen.setdefault(pid, psutil.Process(pid).create_time())

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return ""

    def close(self) -> None:
        """SIGTERM the supervising enmei (it stops the units) and wait; then end, by pid, anything left."""
        pid = self.supervisor_pid()
        if pid is not None and self._same(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(60)
        if self.first is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.first.wait(10)
        for pid in list(self.seen):
            if self._same(pid):
                with contextlib.suppress(ProcessLookupError, psutil.Error):
                    os.kill(pid, signal.SIGKILL)
                    psutil.Process(pid).wait(10)
        if self.first is not None and self.first.poll() is None:
            self.first.kill()
            self.first.wait()

    def _same(self, pid: int) -> bool:
        try:
            return psutil.Process(pid).create_time() == self.seen.get(pid)
        except psutil.Error:
            return False


def run(runs: int = 5, units: int = 10, period_s: float = 1.0, settle_s: float = 3.0,
        say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The figures of the module docstring, over ``runs`` upgrades."""
    workdir = Path(tempfile.mkdtemp(prefix="enmei-bench-selfupdate-"))
    rig = Rig(workdir, units, period_s)
    per_run: list[dict[str, Any]] = []
    web: dict[str, Any] = {}
    try:
        rig.start()
        hammer = Hammer(rig.web_port).start()
        try:
            time.sleep(settle_s)
            for i in range(runs):
                before = rig.pids()
                t0 = time.time()
                out = rig.upgrade()
                end = out["end"]
                time.sleep(settle_s)  # the probes of the new enmei run for a few periods
                after = rig.pids()
                stopped = sorted(n for n in rig.units if before.get(n) is None or after.get(n) != before.get(n))
                gap, where = probe_gap(rig.journal, rig.units, t0 - 2 * period_s, time.time())
                row = {"run": i + 1, "state": end.get("state"), "takeover_s": end.get("takeover_s"),
                       "let_go_s": end.get("let_go_s"), "take_s": end.get("take_s"),
                       "stopped_units": len(stopped), "stopped": stopped, "max_probe_gap_s": round(gap, 3),
                       "gap_unit": where, "from_pid": end.get("from_pid"), "pid": out.get("pid"),
                       "reason": end.get("reason")}
                per_run.append(row)
                if say is not None:
                    say(json.dumps(row))
        finally:
            web = hammer.stop()
    finally:
        rig.close()
        shutil.rmtree(workdir, ignore_errors=True)
    done = [r for r in per_run if r["state"] == "handed_over"]
    takeovers = [float(r["takeover_s"]) for r in done if r["takeover_s"] is not None]
    gaps = [float(r["max_probe_gap_s"]) for r in per_run]
    return {
        "units": units, "runs": runs, "upgraded": len(done),
        "stopped_units": sum(r["stopped_units"] for r in per_run),
        "max_probe_gap_s": round(statistics.median(gaps), 3) if gaps else None,
        "max_probe_gap_worst_s": round(max(gaps), 3) if gaps else None,
        "probe_period_s": period_s,
        "takeover_s": round(statistics.median(takeovers), 3) if takeovers else None,
        "takeover_max_s": round(max(takeovers), 3) if takeovers else None,
        **web,
        "per_run": per_run,
    }
