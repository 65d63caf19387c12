"""A real daemon of the kit as a unit of a real ``enmei up`` (its dashboard API on a loopback port).

``running(kind, tmp_path, ...)`` prepares the daemon (``enmei.daemons``), writes ``enmei.toml`` with its
unit, starts ``enmei up --plain --listen`` and waits until the unit is RUNNING and answers a client
request. The rig remembers every pid it ever saw in the unit's cgroup; ``shutdown()`` SIGTERMs enmei and
then asserts that none of them is left and that the unit's cgroup is gone. At teardown, whatever a failed
test left is ended by pid (only pids the rig saw, each re-checked by its start time), then the dir removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from enmei import daemons
from enmei.box.query import Reader
from enmei.daemons.base import Daemon
from enmei.visor.cgroup import parse_cgroup2_mount, parse_own_cgroup
from support.wait import scaled, until

T = TypeVar("T")
PY = sys.executable

# Quick enough to watch in a test, as an operator impatient with a cache might set them.
FAST = ("[units.{unit}.restart]\nbackoff_first_s = 0.2\nbackoff_max_s = 2\n"
        "[units.{unit}.escalate]\nretry_every_s = 600\n")


def _cgroup_root() -> Path:
    mount = parse_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
    assert mount is not None, "no cgroup v2 mount: the daemon e2e tests check the unit's cgroup"
    return Path(mount)


@dataclass
class Rig:
    daemon: Daemon
    unit: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    web: str = ""
    token: str = ""
    seen: dict[int, float] = field(default_factory=dict)  # pid -> create time, of the unit's processes
    cgroups: set[Path] = field(default_factory=set)  # the unit's cgroup dirs seen
    journal: Path = field(init=False)

    def __post_init__(self) -> None:
        self.journal = self.dir / "state" / "journal.sqlite"

    # -- the API -------------------------------------------------------------------------------------

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.web + path, timeout=scaled(10)) as r:
            return json.loads(r.read())

    def action(self, action: str) -> Any:
        req = urllib.request.Request(self.web + f"/api/units/{self.unit}/actions/{action}", data=b"{}",
                                     method="POST", headers={"Authorization": f"Bearer {self.token}",
                                                             "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=scaled(10)) as r:
            return json.loads(r.read())

    def view(self) -> dict[str, Any]:
        v: dict[str, Any] = self.get(f"/api/units/{self.unit}")
        return v

    def state(self) -> str:
        return str(self.view()["state"])

    def pid(self) -> int | None:
        pid = self.view().get("pid")
        return int(pid) if pid is not None else None

    # -- the journal ---------------------------------------------------------------------------------

    def records(self, kind: str | None = None, **match: Any) -> list[tuple[int, str, dict[str, Any]]]:
        """(seq, kind, body) of the unit's records, oldest first, of ``kind`` and with body fields ``match``."""
        with Reader(self.journal) as r:
            recs = list(r.records(unit=self.unit, kinds=[kind] if kind else None, limit=100_000))
        out = [(x.seq, x.kind, x.data()) for x in recs]
        return [o for o in out if all(o[2].get(k) == v for k, v in match.items())]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [b for _, _, b in self.records("unit.event", event=event)]

    def last_seq(self) -> int:
        with Reader(self.journal) as r:
            tail = r.tail(1)
        return tail[-1].seq if tail else 0

    # -- processes -----------------------------------------------------------------------------------

    def unit_pids(self) -> list[int]:
        """Every pid in the unit's cgroup now (remembered for the leftover check)."""
        pid = self.pid()
        if pid is None:
            return []
        try:
            rel = parse_own_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
        except OSError:
            return []
        assert rel is not None and f"unit-{self.unit}" in rel, f"pid {pid} is not in a cgroup of the unit: {rel}"
        cg = _cgroup_root() / rel.lstrip("/")
        self.cgroups.add(cg)
        try:
            pids = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
        except OSError:
            return []
        for p in pids:
            with contextlib.suppress(psutil.Error):
                self.seen.setdefault(p, psutil.Process(p).create_time())
        return pids

    def children(self, name_has: str) -> list[psutil.Process]:
        """The unit's processes (other than its main) whose command line contains ``name_has``."""
        main = self.pid()
        out = []
        for p in self.unit_pids():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(p)
                if p != main and name_has in " ".join(proc.cmdline()):
                    out.append(proc)
        return out

    def stopped(self) -> list[int]:
        """The unit's pids that are stopped (state T) now."""
        out = []
        for p in self.unit_pids():
            with contextlib.suppress(psutil.Error):
                if psutil.Process(p).status() == psutil.STATUS_STOPPED:
                    out.append(p)
        return out

    def signal_all(self, sig: signal.Signals) -> list[int]:
        """``sig`` to every pid of the unit's cgroup; the pids signalled."""
        pids = self.unit_pids()
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        return pids

    # -- waiting ---------------------------------------------------------------------------------------

    def until(self, pred: Callable[[], T], timeout_s: float, what: str) -> T:
        return until(pred, timeout_s, what, every_s=0.05)

    def answers(self) -> bool:
        try:
            self.daemon.request(timeout_s=1.0)
        except daemons.RequestFailed:
            return False
        return True

    def until_back(self, old_pid: int | None, timeout_s: float = 60) -> int:
        """Until the unit runs a main process other than ``old_pid`` and answers; its pid."""
        def back() -> int | None:
            pid = self.pid() if self.state() == "running" else None
            return pid if pid is not None and pid != old_pid and self.answers() else None
        pid = self.until(back, timeout_s, f"{self.unit} back with a new pid and answering")
        self.unit_pids()
        return pid

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, extra: str = "", **overrides: Any) -> None:
        wport = daemons.free_port()
        cfg = self.dir / "enmei.toml"
        cfg.write_text('[supervisor]\nstate_dir = "state"\ntick_s = 0.5\n\n'
                       + self.daemon.unit_toml(self.unit, **overrides) + "\n"
                       + FAST.format(unit=self.unit) + extra)
        with open(self.dir / "up.log", "ab") as out:
            self.proc = subprocess.Popen([PY, "-m", "enmei", "up", "--plain", "--listen", f"127.0.0.1:{wport}",
                                          str(cfg)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.web = f"http://127.0.0.1:{wport}"
        token = self.dir / "state" / "web.token"

        def serving() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                self.get("/api/units")
            except (OSError, urllib.error.URLError):
                return False
            return token.exists()
        self.until(serving, 60, "enmei up serving its API")
        self.token = token.read_text().strip()

    def until_running(self, timeout_s: float = 90) -> int:
        def up() -> int | None:
            return self.pid() if self.state() == "running" and self.answers() else None
        pid = self.until(up, timeout_s, f"{self.unit} running and answering")
        self.unit_pids()
        return pid

    def log(self) -> str:
        try:
            return (self.dir / "up.log").read_text()[-4000:]
        except OSError:
            return ""

    def unit_log(self, stream: str = "stderr") -> str:
        try:
            return (self.dir / "state" / "logs" / f"{self.unit}.{stream}.log").read_text()
        except OSError:
            return ""

    def shutdown(self) -> None:
        """SIGTERM enmei (it stops the unit gracefully), then assert nothing of the unit is left."""
        self.unit_pids()
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=scaled(90)) == 0, self.log()
        left = self.leftovers()
        assert not left, f"processes of {self.unit} left after enmei stopped: {left}"
        for cg in self.cgroups:
            assert not cg.exists(), f"the unit's cgroup {cg} is still there"

    def leftovers(self) -> list[int]:
        out = []
        for pid, ctime in self.seen.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == ctime and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
        return out

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=scaled(60))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.leftovers():  # only what a failed test left: pids the rig saw, same start time
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + scaled(10)
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.daemon.cleanup()


@contextlib.contextmanager
def running(kind: str, tmp_path: Path, *, unit: str | None = None, extra: str = "", wait: bool = True,
            prefix: list[str] | None = None, **overrides: Any) -> Iterator[Rig]:
    """The rig of module docstring, started (and, with ``wait``, RUNNING and answering); ``prefix`` goes
    before the daemon's argv (a wrapper that delays it, say); ``overrides`` replace keys of its unit."""
    rig = Rig(daemons.prepare(kind), unit or kind, tmp_path)
    try:
        if prefix:
            overrides["command"] = [*prefix, *rig.daemon.argv]
        rig.start(extra, **overrides)
        if wait:
            rig.until_running()
        yield rig
    finally:
        rig.cleanup()
