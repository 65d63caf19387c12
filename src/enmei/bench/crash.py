"""``enmei bench crash``: kill -9 the supervisor at random instants and check what survives.

A real ``enmei up`` supervises two demo services and a unit that keeps crashing (so that remedies are
always under way). At each of ``points`` random instants — some just after a unit was killed, so the
supervisor dies in the middle of a remedy, others wherever the journal happens to be committing — the
supervisor is killed with SIGKILL and started again. Counted:

* ``lost_records``: records that were durable (committed, visible to a reader) when the supervisor died
  and are missing or different afterwards;
* ``duplicate_remedies``: remedies started twice for one decision, or two instances of one unit alive;
* ``unadopted_units``: after the restart settles, a unit instance the new supervisor does not own
  (an orphan) or a second instance of a unit;
* ``verify_failures``: journal verifications (chain, anchors, signed head) that fail after a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from enmei.box import Anchors, Reader, head_path, verify
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.errors import BoxError
from enmei.visor.process import ENV_SUPERVISOR, ENV_UNIT, ProcessBackend

__all__ = ["config_text", "run"]

_UNITS = ("web1", "web2")


def config_text(ports: list[int], vm_port: int | None = None) -> str:
    py = sys.executable
    parts = ['[supervisor]\nstate_dir = "state"\nsummary_every_s = 2\n']
    for name, port in zip(_UNITS, ports, strict=True):
        parts.append(f"""
[units.{name}]
command = ["{py}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
start_s = 0.3
stop_timeout_s = 2
[units.{name}.restart]
backoff_first_s = 0.1
backoff_max_s = 0.5
budget = 1000
window_s = 60
[[units.{name}.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval_s = 0.2
timeout_s = 0.5
[[units.{name}.probes]]
kind = "process"
interval_s = 0.2
""")
    parts.append(f"""
[units.flaky]
command = ["{py}", "-c", "import random, time; time.sleep(random.uniform(0.1, 0.8)); raise SystemExit(1)"]
start_s = 0.05
[units.flaky.restart]
backoff_first_s = 0.05
backoff_max_s = 0.3
budget = 100000
window_s = 60
""")
    if vm_port is not None:
        parts.append(f"""
[units.vm]
backend = "qemu"
forward = ["{vm_port}:80"]
[[units.vm.probes]]
kind = "http"
url = "http://127.0.0.1:{vm_port}/version"
interval_s = 0.5
timeout_s = 0.5
""")
    return "".join(parts)


class _Run:
    def __init__(self, workdir: Path, rng: random.Random, vm: bool = False) -> None:
        self.workdir = workdir
        self.rng = rng
        self.cfg = workdir / "enmei.toml"
        ports = free_ports(len(_UNITS) + 1)
        self.vm_port = ports[-1] if vm else None
        self.cfg.write_text(config_text(ports[:len(_UNITS)], self.vm_port))
        self.loaded = load_text(self.cfg.read_text(), self.cfg)
        self.journal = self.loaded.journal_path
        self.instance = ProcessBackend(clock=None, state_dir=self.loaded.state_dir, emit=None).instance
        self.proc: subprocess.Popen[bytes] | None = None
        self.durable: dict[int, bytes] = {}
        self.counts = {"lost_records": 0, "duplicate_remedies": 0, "unadopted_units": 0, "verify_failures": 0}
        self.notes: list[str] = []

    # -- the supervisor --------------------------------------------------------------------------

    def start(self) -> None:
        last = self._last_start_seq()
        log = open(self.workdir / "up.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "enmei", "up", "--plain", str(self.cfg)],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        end = time.monotonic() + 30
        while self._last_start_seq() <= last:
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError(f"enmei up did not start; see {self.workdir / 'up.log'}")
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def _last_start_seq(self) -> int:
        if not self.journal.exists():
            return 0
        try:
            with Reader(self.journal) as r:
                recs = r.tail(1, kinds=["supervisor"])
                starts = [x.seq for x in recs if x.data().get("event") == "started"]
                if starts:
                    return starts[-1]
                older = [x.seq for x in r.records(kinds=["supervisor"]) if x.data().get("event") == "started"]
                return older[-1] if older else 0
        except BoxError:
            return 0

    # -- checks ----------------------------------------------------------------------------------

    def snapshot_durable(self) -> None:
        """Everything a reader can see now is committed: remember each record's hash."""
        with Reader(self.journal) as r:
            since = max(self.durable) if self.durable else 0
            for rec in r.records(since_seq=since):
                self.durable[rec.seq] = rec.hash

    def check_durable(self) -> None:
        with Reader(self.journal) as r:
            rows = r.hashes()
        lost = sum(1 for seq, h in self.durable.items() if rows.get(seq, b"") != h)
        if lost:
            self.notes.append(f"{lost} durable records missing or changed")
        self.counts["lost_records"] += lost
        self.durable = {}  # checked: the next point checks what becomes durable after this

    def check_verify(self) -> None:
        key = self.loaded.anchor_key_path
        anchors = Anchors.from_files(key, head_path(self.journal), create=False) if key else None
        res = verify(self.journal, anchors=anchors)
        if not res.ok:
            self.counts["verify_failures"] += 1
            self.notes.append(f"verify: record {res.first_bad}: {res.reason}")

    def instances(self, unit: str) -> list[int]:
        out = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getsid(p.pid) != p.pid or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                env = p.environ()
                if env.get(ENV_UNIT) == unit and env.get(ENV_SUPERVISOR) == self.instance:
                    out.append(p.pid)
            except (psutil.Error, OSError):
                continue
        return out

    def check_adoption(self) -> None:
        try:
            owned = json.loads((self.loaded.state_dir / "units.json").read_text())["units"]
        except (OSError, ValueError, KeyError):
            owned = {}
        for unit in _UNITS:
            alive = self.instances(unit)
            if len(alive) > 1:
                self.counts["unadopted_units"] += len(alive) - 1
                self.counts["duplicate_remedies"] += 1
                self.notes.append(f"{unit}: {len(alive)} instances alive: {alive}")
            elif len(alive) == 1 and int((owned.get(unit) or {}).get("pid", -1)) != alive[0]:
                self.counts["unadopted_units"] += 1
                self.notes.append(f"{unit}: pid {alive[0]} alive but not owned by the supervisor")

    def vm_qemus(self) -> list[int]:
        """Pids of the QEMUs (the VM and its standby) started for the ``vm`` unit of this state dir."""
        mark = str(self.loaded.state_dir / "qemu" / "vm")
        out = []
        for p in psutil.process_iter(["pid", "name"]):
            try:
                if "qemu" in (p.info["name"] or "") and p.status() != psutil.STATUS_ZOMBIE and any(
                        mark in arg for arg in p.cmdline()):
                    out.append(p.pid)
            except (psutil.Error, OSError):
                continue
        return out

    def check_vm(self, settle_s: float = 60.0) -> None:
        """The VM is owned (its QEMU is the one units.json names) and at most one standby is beside it.

        A VM being booted again (after a crash in the middle of a takeover, the new supervisor starts it
        afresh rather than guess) is owned once its start is done: wait for that, up to ``settle_s``."""
        end = time.monotonic() + settle_s
        while True:
            try:
                owned = json.loads((self.loaded.state_dir / "units.json").read_text())["units"]
            except (OSError, ValueError, KeyError):
                owned = {}
            alive = self.vm_qemus()
            pid = int((owned.get("vm") or {}).get("pid", -1))
            if not alive or pid in alive or time.monotonic() > end:
                break
            time.sleep(0.5)
        if alive and pid not in alive:
            self.counts["unadopted_units"] += 1
            self.notes.append(f"vm: QEMU {alive} alive, but the supervisor owns {pid}")
        if len(alive) > 2:
            self.counts["duplicate_remedies"] += 1
            self.counts["unadopted_units"] += len(alive) - 2
            self.notes.append(f"vm: {len(alive)} QEMUs alive: {alive}")

    def panic_the_vm(self) -> None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", int(self.vm_port or 0)),
                                                                     timeout=0.5) as s:
            s.sendall(b"GET /cgi-bin/fault?panic=1 HTTP/1.0\r\n\r\n")

    def check_remedies(self) -> None:
        with Reader(self.journal) as r:
            rows = r.repeated_remedy_starts()
        for decision, n in rows:
            self.counts["duplicate_remedies"] += n - 1
            self.notes.append(f"decision {decision} started {n} remedies")

    def kill_a_unit(self) -> None:
        pids = self.instances(self.rng.choice(_UNITS))
        for pid in pids[:1]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        for unit in (*_UNITS, "flaky"):
            for pid in self.instances(unit):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
        if self.vm_port is not None:
            for pid in self.vm_qemus():  # a QEMU is daemonized: it is ours by its state dir in the command line
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def run(points: int = 200, seed: int = 0, settle_s: float = 1.0, keep: bool = False,
        vm: bool = False) -> dict[str, Any]:
    """``vm``: also a QEMU unit (needs a built image); some kills then land in the middle of its phase
    reboot, and after each restart its QEMU must be the one the supervisor owns."""
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="enmei-bench-crash-"))
    bench = _Run(tmp, rng, vm=vm)
    t0 = time.monotonic()
    mid_remedy = 0
    try:
        bench.start()
        if vm:  # the first boot, its phase snapshot and standby take a while under TCG
            end = time.monotonic() + 120
            while time.monotonic() < end and not _answers(int(bench.vm_port or 0)):
                time.sleep(0.5)
        for i in range(points):
            time.sleep(rng.uniform(0.3, 1.5))
            if vm and i % 3 == 1:  # panic the guest, then kill the supervisor during its phase reboot
                bench.panic_the_vm()
                time.sleep(rng.uniform(0.0, 0.1))
                mid_remedy += 1
            elif i % 3 == 0:  # kill a unit, then the supervisor while it repairs it
                bench.kill_a_unit()
                time.sleep(rng.uniform(0.0, 0.25))
                mid_remedy += 1
            bench.kill()
            bench.snapshot_durable()
            bench.start()
            time.sleep(settle_s)
            bench.check_durable()
            bench.check_verify()
            bench.check_adoption()
            if vm:
                bench.check_vm()
        bench.stop()
        bench.snapshot_durable()
        bench.check_durable()
        bench.check_verify()
        bench.check_remedies()
        with Reader(bench.journal) as r:
            records = r.count()
        return {"points": points, **bench.counts, "mid_remedy_points": mid_remedy, "journal_records": records,
                "vm": vm, "seconds": round(time.monotonic() - t0, 1), "notes": bench.notes[:20]}
    finally:
        bench.cleanup()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET /version HTTP/1.0\r\n\r\n")
            return b" 200 " in s.recv(64)
    except OSError:
        return False
