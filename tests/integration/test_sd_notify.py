"""Issue 12 item 9: enmei as a systemd ``Type=notify`` service. A real datagram socket bound by the test
is the ``NOTIFY_SOCKET`` of a real ``enmei up`` (a path, and an abstract ``@`` name): READY=1 once the
units had their first start, WATCHDOG=1 pings every WATCHDOG_USEC/2, RELOADING=1/READY=1 around a
reload, STOPPING=1 at SIGTERM; no unit inherits the variables. The shipped unit file is verified with
``systemd-analyze verify``. On the old code enmei sent nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from enmei.engine.notify import ServiceNotifier, notify_address, watchdog_interval_s

from .conftest import PY, Procs, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNIT_FILE = REPO / "packaging" / "systemd" / "enmei.service"


class Listener:
    """The service manager's end: every datagram received, in order."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(notify_address(address))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return self.messages

    def has(self, field: str) -> bool:
        return any(field in m.split("\n") for m in self.poll())

    def index(self, field: str) -> int:
        return next(i for i, m in enumerate(self.messages) if field in m.split("\n"))

    def close(self) -> None:
        self.sock.close()


def _unit_pid(state: Path, name: str) -> int | None:
    try:
        return int(json.loads((state / "units.json").read_text())["units"][name]["pid"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_enmei_up_tells_its_service_manager(tmp_path: Path, procs: Procs, abstract: bool) -> None:
    address = f"@enmei-test-{os.getpid()}-{time.monotonic_ns()}" if abstract else str(tmp_path / "notify")
    listener = Listener(address)
    try:
        cfg = tmp_path / "enmei.toml"
        unit = '[units.{n}]\ncommand = ["sleep", "{arg}"]\nstart_s = 0.5\nstop_timeout_s = 2\n'
        cfg.write_text(unit.format(n="a", arg="300"))
        env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
        log = tmp_path / "up.log"
        with open(log, "wb") as out:
            up = procs.popen([PY, "-m", "enmei", "up", "--plain", str(cfg)], stdout=out, stderr=subprocess.STDOUT,
                             env=env)
        assert wait_until(lambda: listener.has("READY=1") or up.poll() is not None, 60), log.read_text()
        assert up.poll() is None, log.read_text()
        pid = _unit_pid(tmp_path / ".enmei", "a")
        assert pid is not None, "READY=1 came before the unit's first start attempt"
        procs.adopt_pid(pid)
        ready = listener.messages[listener.index("READY=1")]
        assert "STATUS=supervising 1 unit: 1 running" in ready.split("\n"), ready
        env_of_unit = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not any(v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_")) for v in env_of_unit)
        # Watchdog pings, every 0.2 s: wait for three more after READY.
        seen = listener.index("READY=1")
        assert wait_until(lambda: sum(m == "WATCHDOG=1" for m in listener.poll()[seen:]) >= 3, 30), \
            listener.messages
        # A reload that adds a unit: RELOADING=1, then READY=1 again.
        cfg.write_text(unit.format(n="a", arg="300") + unit.format(n="b", arg="301"))
        mark = len(listener.poll())
        up.send_signal(signal.SIGHUP)
        assert wait_until(lambda: any(m.startswith("READY=1") for m in listener.poll()[mark:]), 60), \
            (listener.messages, log.read_text())
        after = listener.messages[mark:]
        reloading = next(i for i, m in enumerate(after) if m.startswith("RELOADING=1"))
        assert reloading < next(i for i, m in enumerate(after) if m.startswith("READY=1"))
        assert any(f.startswith("MONOTONIC_USEC=") for f in after[reloading].split("\n"))
        mark = len(listener.poll())
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0, log.read_text()
        assert any(m.startswith("STOPPING=1") for m in listener.poll()[mark:]), listener.messages
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        listener.close()


def test_no_watchdog_pings_for_another_pid_and_nothing_without_a_socket(tmp_path: Path) -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "2"}, pid=2) == 0.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "x"}, pid=2) is None
    env = {"WATCHDOG_USEC": "1000000"}
    assert ServiceNotifier.from_env(env) is None and env == {}  # removed even when unused
    # A socket nobody listens on: the send fails quietly (enmei goes on), and says so by its result.
    n = ServiceNotifier(str(tmp_path / "nobody"))
    try:
        assert n.send("READY=1") is False
    finally:
        n.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed here")
def test_the_shipped_unit_file_verifies(tmp_path: Path) -> None:
    # verify resolves ExecStart; point it at this venv's enmei (the shipped file names /usr/local/bin).
    enmei = Path(PY).parent / "enmei"
    text = UNIT_FILE.read_text().replace("/usr/local/bin/enmei", str(enmei))
    copy = tmp_path / "enmei.service"
    copy.write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "enmei.service" not in r.stderr, r.stderr  # no warning about our unit
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed", "Delegate=yes",
                 "NotifyAccess=main"):
        assert line in text.splitlines(), line
    assert any(line.startswith("WatchdogSec=") for line in text.splitlines())
