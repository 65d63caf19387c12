"""``enmei watch`` against real ``enmei up`` processes (issue 15 item 4): a monitor for the monitor.

Each test runs a real enmei (one unit: a sleeping process) and one or two real watchers
(``python -m enmei.watch``), kills or stops the enmei, and waits — on the state dir's lock changing
hands, never on a fixed sleep — for a new one: its units adopted (the same pid), and a journal record
saying which watcher restarted it and what it saw. Everything started is ended at teardown, by pid:
the watchers first (so nothing restarts what teardown stops), then the enmei holding the lock
(SIGTERM: it stops its unit), then any unit pid seen. Fails on the old code: there was no ``enmei watch``
and no heartbeat.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enmei.box import Reader
from enmei.watch.files import lock_holder, proc_start, read_beat

from .conftest import PY, Procs, wait_until

pytestmark = pytest.mark.integration

SLEEPER = "import time\ntime.sleep(3600)\n"


class Rig:
    """A config, its state dir, the enmei and watchers the test started (all ended at teardown)."""

    def __init__(self, tmp: Path, procs: Procs) -> None:
        self.tmp = tmp
        self.procs = procs
        self.cfg = tmp / "enmei.toml"
        self.state = tmp / "state"
        self.alerts = tmp / "alerts.jsonl"
        self.write_config()
        self.watchers: list[subprocess.Popen[bytes]] = []
        self.enmeis: set[tuple[int, int | None]] = set()
        self.units: set[int] = set()

    def write_config(self, broken: bool = False) -> None:
        alert = [PY, "-c", f"import sys; open({str(self.alerts)!r}, 'a').write(sys.stdin.read())"]
        command = "5" if broken else json.dumps([PY, "-c", SLEEPER])  # command = 5: a config error
        self.cfg.write_text(f"""
[supervisor]
state_dir = "state"
alert_command = {json.dumps(alert)}

[units.sleeper]
command = {command}
stop_timeout_s = 2
start_s = 0.2
""")

    # -- processes -------------------------------------------------------------------------------

    def up(self) -> int:
        log = open(self.tmp / "up.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.first = self.procs.popen([PY, "-m", "enmei", "up", "--plain", str(self.cfg)], stdout=log,
                                          stderr=subprocess.STDOUT, cwd=self.tmp)
        finally:
            log.close()
        return self.wait_enmei(None)

    def watch(self, name: str = "watch", *args: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            p = self.procs.popen([PY, "-m", "enmei.watch", str(self.cfg), "--name", name, *args], stdout=log,
                                 stderr=subprocess.STDOUT, cwd=self.tmp)
        finally:
            log.close()
        self.watchers.append(p)
        return p

    def holder(self) -> int | None:
        pid = lock_holder(self.state / "enmei.lock")
        if pid is not None:
            self.enmeis.add((pid, proc_start(pid)))
        return pid

    def wait_enmei(self, other_than: int | None, timeout: float = 60) -> int:
        """The pid of an enmei holding the state dir, not ``other_than``, whose units are started."""
        def ready() -> int | None:
            pid = self.holder()
            if pid is None or pid == other_than:
                return None
            unit = self.unit_pid()
            owner = (read_beat(self.state) or {}).get("pid")
            return pid if unit is not None and owner == pid else None

        got = wait_until(ready, timeout)
        assert got, f"no new enmei took {self.state}; watcher logs: {self.logs()}"
        return int(self.holder() or 0)

    def unit_pid(self) -> int | None:
        try:
            pid = int(json.loads((self.state / "units.json").read_text())["units"]["sleeper"]["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        self.units.add(pid)
        return pid

    def follows(self, name: str, pid: int) -> bool:
        try:
            reg = json.loads((self.state / "watch" / f"{name}.json").read_text())
        except (OSError, ValueError):
            return False
        return bool(reg.get("enmei_pid") == pid)

    def logs(self) -> str:
        return " || ".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.tmp.glob("*.log")))

    # -- the journal -----------------------------------------------------------------------------

    def records(self, kind: str | None = None) -> list[tuple[int, str, dict[str, Any]]]:
        with Reader(self.state / "journal.sqlite") as r:
            return [(x.seq, x.kind, x.data()) for x in r.records(kinds=[kind] if kind else None)]

    def reports(self) -> list[dict[str, Any]]:
        return [d for _, _, d in self.records("supervisor") if d.get("event") == "watch.report"]

    def starts(self) -> list[dict[str, Any]]:
        return [d for _, _, d in self.records("supervisor") if d.get("event") == "started"]

    def cleanup(self) -> None:
        for p in self.watchers:
            if p.poll() is None:
                p.terminate()
        for p in self.watchers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
        for name in ("watch", "w1", "w2"):  # a watcher an enmei restarted is not our child
            pid = lock_holder(self.state / "watch" / f"{name}.lock")
            if pid is not None and any(pid == p.pid for p in self.watchers) is False:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                wait_until(lambda n=name: lock_holder(self.state / "watch" / f"{n}.lock") is None, 30)
        pid = self.holder()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
            wait_until(lambda: self.holder() is None, 30)
        for pid, start in self.enmeis:  # a hung or killed enmei left behind: ours by pid and start time
            if proc_start(pid) == start:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid in self.units:
            self.procs.adopt_pid(pid)


@pytest.fixture
def rig(tmp_path: Path, procs: Procs) -> Iterator[Rig]:
    r = Rig(tmp_path, procs)
    try:
        yield r
    finally:
        r.cleanup()


def test_kill9_of_the_watched_enmei_is_restarted_and_its_units_adopted(rig: Rig) -> None:
    old = rig.up()
    unit = rig.unit_pid()
    rig.watch("w1")
    assert wait_until(lambda: rig.follows("w1", old)), rig.logs()
    os.kill(old, signal.SIGKILL)
    t_kill = time.time()
    new = rig.wait_enmei(old)
    assert rig.unit_pid() == unit  # adopted, not restarted
    assert wait_until(lambda: any(r.get("action") == "restarted" for r in rig.reports())), rig.logs()
    report = next(r for r in rig.reports() if r.get("action") == "restarted")
    assert report["watcher"] == "w1" and report["old_pid"] == old and report["new_pid"] == new
    assert report["saw"]["verdict"] == "dead"
    assert 0 <= report["detected_wall"] - t_kill < 30
    alerts = [d for _, _, d in rig.records("alert") if d.get("watcher") == "w1"]
    assert alerts and f"pid {old} -> {new}" in alerts[0]["message"]
    adopted = [d for _, _, d in rig.records("unit.event") if d.get("event") == "adopted"]
    assert any(d.get("pid") == unit for d in adopted)


def test_a_hung_enmei_is_detected_killed_and_restarted(rig: Rig) -> None:
    old = rig.up()
    unit = rig.unit_pid()
    rig.watch("w1", "--hang-after-s", "3", "--ctl-timeout-s", "2")
    assert wait_until(lambda: rig.follows("w1", old)), rig.logs()
    beat = (read_beat(rig.state) or {}).get("beat")
    assert wait_until(lambda: (read_beat(rig.state) or {}).get("beat") != beat)  # the heartbeat moves
    os.kill(old, signal.SIGSTOP)
    new = rig.wait_enmei(old, timeout=90)
    assert wait_until(lambda: rig.first.poll() == -signal.SIGKILL), "the hung enmei was not killed"
    assert rig.unit_pid() == unit
    assert wait_until(lambda: any(r.get("action") == "restarted" for r in rig.reports())), rig.logs()
    report = next(r for r in rig.reports() if r.get("action") == "restarted")
    assert report["saw"]["verdict"] == "hung" and report["old_pid"] == old and report["new_pid"] == new
    assert report["saw"]["heartbeat_stale_s"] >= 3


def test_two_watchers_restart_a_dead_enmei_once(rig: Rig) -> None:
    old = rig.up()
    rig.watch("w1")
    rig.watch("w2")
    assert wait_until(lambda: rig.follows("w1", old) and rig.follows("w2", old)), rig.logs()
    starts = len(rig.starts())
    os.kill(old, signal.SIGKILL)
    new = rig.wait_enmei(old)
    # Both watchers saw the death; wait until both follow the new enmei, then count.
    assert wait_until(lambda: rig.follows("w1", new) and rig.follows("w2", new)), rig.logs()
    assert wait_until(lambda: any(r.get("action") == "restarted" for r in rig.reports())), rig.logs()
    assert len(rig.starts()) == starts + 1, rig.logs()
    restarted = [r for r in rig.reports() if r.get("old_pid") == old]
    assert len(restarted) == 1, restarted
    assert rig.holder() == new
    assert not list((rig.state / "watch" / "reports").glob("*.json"))  # journaled, then removed


def test_both_watchers_starting_at_once_start_one_enmei(rig: Rig) -> None:
    rig.watch("w1")
    rig.watch("w2")
    first = rig.wait_enmei(None)
    assert wait_until(lambda: rig.follows("w1", first) and rig.follows("w2", first)), rig.logs()
    assert wait_until(lambda: len(rig.reports()) >= 1), rig.logs()
    assert len(rig.starts()) == 1
    assert len(rig.reports()) == 1 and rig.reports()[0]["saw"]["verdict"] == "dead"


def test_a_config_broken_on_disk_is_reported_and_not_restarted_in_a_loop(rig: Rig) -> None:
    old = rig.up()
    unit = rig.unit_pid()
    rig.watch("w1", "--backoff-first-s", "2")
    assert wait_until(lambda: rig.follows("w1", old)), rig.logs()
    rig.write_config(broken=True)
    os.kill(old, signal.SIGKILL)

    def failures() -> int:
        try:
            return int(json.loads((rig.state / "watch" / "w1.json").read_text()).get("failures") or 0)
        except (OSError, ValueError):
            return 0

    assert wait_until(lambda: failures() >= 2, 90), rig.logs()
    t0, n0 = time.monotonic(), failures()
    log = (rig.tmp / "w1.log").read_text()
    assert "exited with code 3 (the config is invalid)" in log and "command" in log, log
    pending = [json.loads(p.read_text()) for p in (rig.state / "watch" / "reports").glob("*.json")]
    assert len(pending) == 1 and pending[0]["action"] == "restart failed", pending  # one report per outage
    assert pending[0]["exit_code"] == 3 and str(rig.cfg) in pending[0]["problem"]
    assert wait_until(lambda: rig.alerts.exists() and "restart failed" in rig.alerts.read_text()), rig.logs()
    # Backoff: 2 s, 4 s, 8 s... at most one more attempt within the next 5 s.
    wait_until(lambda: time.monotonic() - t0 > 5, 10)
    assert failures() - n0 <= 1, rig.logs()
    assert proc_start(unit) is not None  # the unit kept running all along
    rig.write_config()  # fixed: the watcher tries again at once (the file changed), not after its backoff
    new = rig.wait_enmei(old, timeout=60)
    assert rig.unit_pid() == unit
    assert wait_until(lambda: any(r.get("action") == "restarted" for r in rig.reports())), rig.logs()
    report = next(r for r in rig.reports() if r.get("action") == "restarted")
    assert report["attempts"] >= 3 and report["new_pid"] == new


def test_an_enmei_restarts_its_mutual_watcher_and_the_watcher_it(rig: Rig) -> None:
    old = rig.up()
    w = rig.watch("w1", "--mutual")
    assert wait_until(lambda: rig.follows("w1", old)), rig.logs()
    os.kill(w.pid, signal.SIGKILL)
    w.wait()
    lock = rig.state / "watch" / "w1.lock"
    assert wait_until(lambda: lock_holder(lock) not in (None, w.pid)), rig.logs()
    again = lock_holder(lock)
    assert wait_until(lambda: any(d.get("event") == "watcher.restarted" and d.get("old_pid") == w.pid
                                  for _, _, d in rig.records("supervisor"))), rig.logs()
    assert wait_until(lambda: rig.follows("w1", old)), rig.logs()
    os.kill(old, signal.SIGKILL)  # and the restarted watcher restarts the enmei
    new = rig.wait_enmei(old)
    assert wait_until(lambda: any(r.get("watcher_pid") == again and r.get("new_pid") == new
                                  for r in rig.reports())), rig.logs()


def test_an_upgrade_is_followed_not_restarted_and_its_successor_is_watched(rig: Rig) -> None:
    old = rig.up()
    unit = rig.unit_pid()
    rig.watch("w1")
    assert wait_until(lambda: rig.follows("w1", old)), rig.logs()
    done = subprocess.run([PY, "-m", "enmei", "ctl", "upgrade", "-c", str(rig.cfg)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    successor = rig.wait_enmei(old)
    assert wait_until(lambda: rig.follows("w1", successor)), rig.logs()
    assert wait_until(lambda: rig.first.poll() is not None)  # the old enmei exited after the handover
    assert rig.unit_pid() == unit
    assert rig.reports() == [], "an upgrade was taken for a death"
    assert "starting" not in (rig.tmp / "w1.log").read_text()
    os.kill(successor, signal.SIGKILL)  # and the successor is watched like any enmei
    again = rig.wait_enmei(successor)
    assert wait_until(lambda: any(r.get("old_pid") == successor and r.get("new_pid") == again
                                  for r in rig.reports())), f"{rig.reports()} {rig.logs()}"
    assert rig.unit_pid() == unit


def test_enmei_watch_execs_the_small_watcher_and_stops_on_request(rig: Rig, procs: Procs) -> None:
    assert subprocess.run([PY, "-m", "enmei", "watch", str(rig.tmp / "missing.toml")], capture_output=True,
                          text=True, timeout=60, check=False).returncode == 3
    log = open(rig.tmp / "cli.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        w = procs.popen([PY, "-m", "enmei", "watch", str(rig.cfg), "--name", "cli", "--no-start"], stdout=log,
                        stderr=subprocess.STDOUT, cwd=rig.tmp)
    finally:
        log.close()
    reg = rig.state / "watch" / "cli.json"
    assert wait_until(lambda: reg.exists() and lock_holder(rig.state / "watch" / "cli.lock") == w.pid), rig.logs()
    cmdline = (Path("/proc") / str(w.pid) / "cmdline").read_bytes().split(b"\0")
    assert b"enmei.watch" in cmdline  # the same pid, exec'd into the small watcher
    rss_kib = int(next(x for x in (Path("/proc") / str(w.pid) / "status").read_text().splitlines()
                       if x.startswith("VmRSS:")).split()[1])
    assert rss_kib < 40 * 1024, rss_kib  # not the CLI's imports (typer, rich, pydantic)
    w.terminate()
    assert w.wait(timeout=60) == 0
    assert json.loads(reg.read_text())["state"] == "stopped"
    assert rig.holder() is None  # --no-start: nothing was started


def test_a_stop_on_request_is_not_restarted_by_either_side(rig: Rig) -> None:
    old = rig.up()
    w = rig.watch("w1", "--mutual")
    assert wait_until(lambda: rig.follows("w1", old)), rig.logs()
    w.terminate()  # the watcher stopped on request: its enmei does not start it again
    assert w.wait(timeout=60) == 0
    reg = rig.state / "watch" / "w1.json"
    assert json.loads(reg.read_text())["state"] == "stopped"
    time.sleep(3)  # three scans of the watchers' folder (one a second): a restart would have happened by now
    assert lock_holder(rig.state / "watch" / "w1.lock") is None
    assert not any(d.get("event") == "watcher.restarted" for _, _, d in rig.records("supervisor"))
    w2 = rig.watch("w2")
    assert wait_until(lambda: rig.follows("w2", old)), rig.logs()
    os.kill(old, signal.SIGTERM)  # the enmei stopped on request: its watcher does not start it again
    assert wait_until(lambda: "stopped on request: not restarted" in (rig.tmp / "w2.log").read_text(), 60), rig.logs()
    time.sleep(2)  # four times the grace a death gets
    assert rig.holder() is None and w2.poll() is None
    assert (read_beat(rig.state) or {}).get("state") == "stopped"


def test_a_lock_held_under_the_pid_of_a_gone_process_is_not_followed(tmp_path: Path, procs: Procs) -> None:
    """After an upgrade the kernel names the enmei that took the lock, gone, while its successor holds it:
    a real process takes the lock, passes it to a child and exits; the watcher neither follows the gone
    pid nor judges a death while the lock is held, and judges one once it is free."""
    from enmei.watch.watcher import Options, Target

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    ready = tmp_path / "ready"
    taker = procs.popen([PY, "-c", f"""
import fcntl, os, subprocess, sys
fd = os.open({str(state / 'enmei.lock')!r}, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.set_inheritable(fd, True)
subprocess.Popen([sys.executable, "-c", "import time; open({str(ready)!r}, 'w').close(); time.sleep(600)"],
                 pass_fds=[fd], start_new_session=True)
"""])
    assert taker.wait(timeout=60) == 0
    assert wait_until(ready.exists)
    heir: int | None = None  # the child holding the lock now: the process that has the lock file open
    for entry in os.listdir("/proc"):
        if entry.isdigit() and entry != str(os.getpid()):
            with contextlib.suppress(OSError):
                if any(os.readlink(f"/proc/{entry}/fd/{fd}") == str(state / "enmei.lock")
                       for fd in os.listdir(f"/proc/{entry}/fd")):
                    heir = int(entry)
    assert heir is not None
    procs.adopt_pid(heir)  # ended at teardown if the test fails first
    target = Target(state, None, Options(name="t", grace_s=0.1))
    target.register([PY], str(tmp_path))
    try:
        assert lock_holder(state / "enmei.lock") == taker.pid and proc_start(taker.pid) is None
        for _ in range(5):
            target.check(time.monotonic())
        kinds = [e["kind"] for e in target.events]
        assert kinds == ["unknown"], target.events
        assert target.pid is None and target.gone_since is None
        os.kill(heir, signal.SIGKILL)
        assert wait_until(lambda: lock_holder(state / "enmei.lock") is None)
        assert wait_until(lambda: (target.check(time.monotonic()), "failed" in [e["kind"] for e in target.events])[1])
        assert "command line is unknown" in target.events[-1]["message"]  # judged dead: a restart was tried
    finally:
        target.close()
