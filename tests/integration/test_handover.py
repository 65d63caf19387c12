"""Issue 14 item 2: zero-downtime update of a process unit by socket handover, with a real ``enmei up``, the
real demo server (``enmei.demo.handover_service``, which takes its socket by ``LISTEN_FDS`` and drains on
SIGTERM) and a real load loop on loopback (bounded in count and time). On the old code there was no
``[[sockets]]`` key and no ``update``: every test here failed at its config."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from enmei.bench.deploy import Load, request
from enmei.ctl.client import request as ctl_request
from enmei.demo.ports import free_ports
from enmei.visor.handover import record_path

from .conftest import PY, Procs, wait_until

pytestmark = pytest.mark.integration

SERVICE = [PY, "-m", "enmei.demo.handover_service"]


@dataclass
class Up:
    tmp: Path
    cfg: Path
    state: Path
    port: int
    procs: Procs
    up: subprocess.Popen[bytes] | None = None
    generation: int = 0

    def start(self) -> None:
        self.generation += 1
        log = self.tmp / f"up{self.generation}.log"
        with open(log, "wb") as out:
            self.up = self.procs.popen([PY, "-m", "enmei", "up", "--plain", str(self.cfg)], stdout=out,
                                       stderr=subprocess.STDOUT)
        assert wait_until(lambda: self.serving() or self.up is None or self.up.poll() is not None, 60), self.log()
        assert self.up.poll() is None, self.log()
        assert wait_until(self.settled, 60), self.log()

    def settled(self) -> bool:
        """Running, with no remedy under way (a command now is carried out, not refused as busy)."""
        with contextlib.suppress(Exception):
            (unit,) = self.ctl({"op": "status", "unit": "web"})["units"]
            return bool(unit["state"] == "running" and not unit["remedy"])
        return False

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("up*.log")))

    def serving(self) -> bool:
        return request(self.port, 2.0).ok

    def ctl(self, req: dict[str, Any]) -> dict[str, Any]:
        return ctl_request(self.state, req, timeout_s=120)

    def update(self, *args: str) -> dict[str, Any]:
        return self.ctl({"op": "update", "unit": "web", "command": [*SERVICE, *args]})

    def update_in_background(self, *args: str) -> tuple[threading.Thread, list[Any]]:
        """``update(*args)`` in a thread; its answer, or the exception of an enmei killed meanwhile, lands
        in the list."""
        answers: list[Any] = []

        def run() -> None:
            try:
                answers.append(self.update(*args))
            except Exception as exc:
                answers.append(exc)

        th = threading.Thread(target=run, daemon=True)
        th.start()
        return th, answers

    def handover(self) -> dict[str, Any]:
        """The unit's handover record as enmei last wrote it ({} while there is none or it is half written)."""
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(record_path(self.state, "web").read_text()))
        return {}

    @property
    def instance(self) -> str:
        return hashlib.sha256(str(self.state.resolve()).encode()).hexdigest()[:16]

    def instances(self) -> list[int]:
        """Main processes of unit ``web`` (its marks, ENMEI_MAIN_PID = own pid), each also ended at teardown."""
        out = []
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                env = proc.environ()
                if env.get("ENMEI_UNIT") == "web" and env.get("ENMEI_MAIN_PID") == str(proc.pid) and \
                        env.get("ENMEI_SUPERVISOR") == self.instance and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append(proc.pid)
                    self.procs.adopt_pid(proc.pid)
        return sorted(out)

    def kill9(self) -> None:
        assert self.up is not None
        self.up.kill()
        self.up.wait()


def _config(tmp: Path, port: int, *, restart_mode: str = "plain", startup_timeout_s: float = 60,
            limits: str = "") -> str:
    return f"""
[supervisor]
state_dir = "{tmp / 'state'}"

[units.web]
command = {json.dumps([*SERVICE, "--version", "1"])}
startup_notify = true
startup_timeout_s = {startup_timeout_s}
start_s = 0.3
stop_timeout_s = 15
restart_mode = "{restart_mode}"
{limits}
[[units.web.sockets]]
address = "127.0.0.1:{port}"
name = "http"
"""


@pytest.fixture
def opts() -> dict[str, Any]:
    return {}


@pytest.fixture
def web(tmp_path: Path, procs: Procs, opts: dict[str, Any]) -> Iterator[Up]:
    (port,) = free_ports(1)
    cfg = tmp_path / "enmei.toml"
    cfg.write_text(_config(tmp_path, port, **opts))
    rig = Up(tmp_path, cfg, tmp_path / "state", port, procs)
    try:
        rig.start()
        yield rig
    finally:
        rig.instances()  # every instance still there is ended by pid at teardown (procs)
        if rig.up is not None and rig.up.poll() is None:
            rig.up.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                rig.up.wait(timeout=60)


def _version(port: int) -> tuple[str | None, int | None]:
    s = request(port, 5.0)
    return s.version, s.pid


def test_handover_under_load_refuses_no_request(web: Up) -> None:
    (old,) = web.instances()
    with Load(web.port, rate=200, threads=4, max_requests=20_000, max_s=120) as load:
        assert wait_until(lambda: len(load.samples) >= 100, 30)
        for v in ("2", "3"):
            answer = web.update("--version", v)
            assert answer["ok"] and answer["outcome"]["state"] == "succeeded", answer
            assert wait_until(lambda v=v: any(s.version == v for s in load.samples[-50:]), 30)
        n = len(load.samples)
        assert wait_until(lambda: len(load.samples) >= n + 100, 30)
    failed = [s for s in load.samples if not s.ok]
    assert failed == [], f"{len(failed)} of {len(load.samples)} failed: {failed[:5]}"
    seen = [s.version for s in sorted(load.samples, key=lambda s: s.sent)]
    assert seen[0] == "1" and seen[-1] == "3"
    assert len(seen) - 1 - seen[::-1].index("1") < seen.index("3")  # version 1 was gone before 3 came
    (now,) = web.instances()  # exactly one instance: the old ones drained and stopped
    assert now != old and _version(web.port) == ("3", now)
    log = web.log()
    for step in ("new_started", "new_ready", "swapped", "old_stopped"):
        assert f"handover {step}" in log, log
    # The unit's command is the new one: a plain restart starts version 3 again (until enmei reads its config).
    assert web.ctl({"op": "restart", "unit": "web"})["ok"]
    assert _version(web.port)[0] == "3"


@pytest.mark.parametrize("opts", [{"startup_timeout_s": 3}])
def test_a_broken_new_version_is_rolled_back_and_the_old_serves_on(web: Up) -> None:
    (old,) = web.instances()
    with Load(web.port, rate=200, threads=4, max_requests=20_000, max_s=120) as load:
        assert wait_until(lambda: len(load.samples) >= 100, 30)
        crashing = web.update("--fail-start")
        never_ready = web.update("--ready-delay-s", "60")
        n = len(load.samples)
        assert wait_until(lambda: len(load.samples) >= n + 100, 30)
    for answer, why in ((crashing, "ended before it was ready (exit code 3)"),
                        (never_ready, "no READY=1 from the new instance within 3s")):
        assert not answer["ok"], answer
        assert "update rolled back" in answer["error"] and why in answer["error"], answer
    assert [s for s in load.samples if not s.ok] == []
    assert {s.pid for s in load.samples} == {old}  # nothing but the old one ever answered
    assert web.instances() == [old]
    assert "handover rolled_back" in web.log()


def test_held_socket_survives_a_crash_of_the_unit(web: Up) -> None:
    (old,) = web.instances()
    with Load(web.port, rate=200, threads=4, max_requests=20_000, max_s=120) as load:
        assert wait_until(lambda: len(load.samples) >= 100, 30)
        os.kill(old, signal.SIGKILL)
        # Sent while no instance runs: it waits in the held socket's backlog and the next instance answers.
        after = request(web.port, 30.0)
        assert after.ok and after.pid != old, after
        n = len(load.samples)
        assert wait_until(lambda: len(load.samples) >= n + 100, 30)
    refused = [s for s in load.samples if s.error == "refused"]
    assert refused == []
    # A request the killed instance had accepted dies with it (reset or empty answer): a few, never many.
    assert sum(not s.ok for s in load.samples) <= 8, [s for s in load.samples if not s.ok]
    assert web.instances() == [after.pid]


def test_kill9_of_enmei_before_the_swap_keeps_the_old_instance(web: Up) -> None:
    (old,) = web.instances()
    th, _ = web.update_in_background("--version", "2", "--ready-delay-s", "60")
    assert wait_until(lambda: web.handover().get("new") is not None, 60), web.log()
    new = web.handover()["new"]["pid"]
    web.instances()
    web.kill9()
    th.join(timeout=130)
    assert len(web.instances()) == 2  # both instances outlived enmei
    web.start()
    assert wait_until(lambda: web.instances() == [old], 60), (web.instances(), web.log())
    assert not psutil.pid_exists(new) or psutil.Process(new).status() == psutil.STATUS_ZOMBIE
    assert _version(web.port) == ("1", old)
    assert not record_path(web.state, "web").exists()
    # Its socket was taken back from the adopted instance: a handover works again.
    answer = web.update("--version", "3")
    assert answer["ok"], answer
    assert _version(web.port)[0] == "3" and len(web.instances()) == 1


def test_kill9_of_enmei_after_the_swap_keeps_the_new_instance(web: Up) -> None:
    (old,) = web.instances()
    slow: list[Any] = []
    th = threading.Thread(target=lambda: slow.append(request(web.port, 60.0, "/slow?ms=4000")), daemon=True)
    th.start()  # a request in flight on the old instance: it drains it after the swap
    assert wait_until(lambda: any(c.status == psutil.CONN_ESTABLISHED
                                  for c in psutil.Process(old).net_connections()), 30)
    up, _ = web.update_in_background("--version", "2")
    assert wait_until(lambda: web.handover().get("phase") == "swapped", 60), web.log()
    new = web.handover()["new"]["pid"]
    web.instances()
    web.kill9()
    up.join(timeout=130)
    web.start()
    th.join(timeout=60)
    assert slow and slow[0].ok and slow[0].pid == old, slow  # the old one finished its request
    assert wait_until(lambda: web.instances() == [new], 60), (web.instances(), web.log())
    assert _version(web.port) == ("2", new)
    assert "handover_record" in web.log() or "adopted" in web.log()


@pytest.mark.parametrize("opts", [{"restart_mode": "handover"}])
def test_restart_mode_handover_restarts_with_no_failed_request(web: Up) -> None:
    (old,) = web.instances()
    with Load(web.port, rate=200, threads=4, max_requests=20_000, max_s=120) as load:
        assert wait_until(lambda: len(load.samples) >= 100, 30)
        answer = web.ctl({"op": "restart", "unit": "web"})
        assert answer["ok"] and "handed over" in answer["outcome"]["detail"], answer
        n = len(load.samples)
        assert wait_until(lambda: len(load.samples) >= n + 100, 30)
    assert [s for s in load.samples if not s.ok] == []
    (now,) = web.instances()
    assert now != old and _version(web.port) == ("1", now)


def test_a_unit_removed_by_a_reload_releases_its_socket(web: Up) -> None:
    web.cfg.write_text(f'[supervisor]\nstate_dir = "{web.state}"\n\n[units.other]\ncommand = ["sleep", "300"]\n')
    answer = web.ctl({"op": "reload"})
    assert answer["ok"] and answer["reload"].get("ok", True) is not False, answer

    def bindable() -> bool:
        with socket.socket() as s:
            # (SO_REUSEADDR: the connections the test made leave TIME_WAIT entries; a listener still fails)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", web.port))
            except OSError:
                return False
            return True

    assert wait_until(bindable, 30), "enmei still holds the socket of a unit no longer in its config"
    assert web.instances() == []


def test_the_updated_command_outlives_enmei_until_the_config_names_another(web: Up) -> None:
    assert web.update("--version", "2")["ok"]
    assert web.up is not None
    web.up.send_signal(signal.SIGTERM)  # a graceful stop of enmei stops the unit too
    web.up.wait(timeout=60)
    assert web.instances() == []
    web.start()  # a fresh start from the config (version 1) runs the updated command
    assert _version(web.port)[0] == "2"
    text = web.cfg.read_text().replace('"--version", "1"', '"--version", "5"')
    web.cfg.write_text(text)
    answer = web.ctl({"op": "reload"})
    assert answer["ok"], answer
    assert wait_until(lambda: _version(web.port)[0] == "5", 60), web.log()  # the config is the truth again
    assert not (web.state / "handover" / "web.command.json").exists()


def test_an_operator_stop_during_an_update_leaves_no_instance_behind(web: Up) -> None:
    th, answers = web.update_in_background("--version", "2", "--ready-delay-s", "60")
    rec = record_path(web.state, "web")
    assert wait_until(lambda: web.handover().get("new") is not None, 60), web.log()
    assert len(web.instances()) == 2
    stop = web.ctl({"op": "stop", "unit": "web"})
    assert stop["ok"] and stop["preempted"]["action"] == "handover", stop
    th.join(timeout=130)
    assert answers and not answers[0]["ok"] and "cancelled" in answers[0]["error"], answers
    assert wait_until(lambda: web.instances() == [], 60), web.instances()
    assert not rec.exists()
    assert "handover rolled_back" in web.log()


def _limit_groups(pid: int) -> dict[str, str]:
    """Controller -> the v1 cgroup path of ``pid`` for the limits' controllers."""
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(","):
            if c in ("cpu", "memory", "pids"):
                out[c] = path
    return out


@pytest.mark.parametrize("opts", [{"limits": 'cpu_max = "0.8"\nmemory_max = "256MiB"\npids_max = 64'}])
def test_a_unit_with_limits_is_handed_over_each_instance_in_its_own_limits(web: Up) -> None:
    """Before, an update of a unit with cpu_max, memory_max or pids_max was refused. Now the new instance
    runs in limit groups of its own (``unit-web@b``) beside the old one's, with the same limits, and the old
    one's groups go with it."""
    (old,) = web.instances()
    before = _limit_groups(old)
    with Load(web.port, rate=100, threads=2, max_requests=5_000, max_s=60) as load:
        assert wait_until(lambda: len(load.samples) >= 50, 30)
        answer = web.update("--version", "2")
        assert answer["ok"] and answer["outcome"]["state"] == "succeeded", answer
        n = len(load.samples)
        assert wait_until(lambda: len(load.samples) >= n + 50, 30)
    assert [s for s in load.samples if not s.ok] == []
    (new,) = web.instances()
    after = _limit_groups(new)
    limited = [c for c in ("cpu", "memory", "pids") if before.get(c, "").endswith("/unit-web")]
    assert limited, f"no limit group on this host: {before}"  # the cage test says why, if so
    for c in limited:
        assert after[c].endswith("/unit-web@b"), (c, before, after)
    if "pids" in limited:
        mount = Path("/sys/fs/cgroup/pids")
        assert (mount / after["pids"].lstrip("/") / "pids.max").read_text().strip() == "64"
        old_group = mount / before["pids"].lstrip("/")
        assert wait_until(lambda: not old_group.exists(), 30), f"{old_group} left behind"
    # And back: the next handover goes to the unit's first groups again.
    answer = web.update("--version", "3")
    assert answer["ok"], answer
    (third,) = web.instances()
    for c in limited:
        assert _limit_groups(third)[c].endswith("/unit-web"), (c, _limit_groups(third))
