"""``enmei ctl`` against a real ``enmei up`` over its real socket (issue 12 item 7).

One supervisor per test, two units: ``web`` (runs) and ``flap`` (dies at every start while its "broken"
file exists; its breaker opens after 2 failures and would keep it down 600 s). Checked: the socket is
0600; ``status --json``; stop and start; ``reset`` of the breaker-open unit brings it back at once (not
after 600 s); unknown units are named; logs; a client sending 1 MiB without a newline, one that never
reads its answers and one that sends nothing neither stall supervision (a kill -9 of ``web`` is still
restarted at once) nor ``ctl``; the socket is removed at exit, and a stale one from a kill -9'd enmei is
reported as such and replaced by the next. Fails on the old code: there was no ``enmei ctl``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from support.wait import scaled

from .conftest import PY, Procs, enmei, wait_until

pytestmark = pytest.mark.integration

WEB = "import sys, time\nprint('hello from web', file=sys.stderr, flush=True)\ntime.sleep(600)\n"
FLAP = ("import os, sys, time\nif os.path.exists(sys.argv[1]):\n    print('broken', file=sys.stderr, flush=True)\n"
        "    sys.exit(1)\ntime.sleep(600)\n")


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "enmei.toml"
    cfg.write_text(f"""
[supervisor]
state_dir = "state"

[units.web]
command = ["{PY}", "-c", {json.dumps(WEB)}]
stop_timeout_s = 2
start_s = 0.3
[units.web.restart]
reset_after_s = 1   # killed after running longer: restarted at once

[units.flap]
command = ["{PY}", "-c", {json.dumps(FLAP)}, "{tmp_path / 'broken'}"]
stop_timeout_s = 2
start_s = 0.3
[units.flap.restart]
backoff_first_s = 0.1
[units.flap.escalate]
retry_every_s = 600
breaker_failures = 2
breaker_open_s = 600
""")
    return cfg


def _ctl(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return enmei("ctl", *args, "--state-dir", str(state), timeout=scaled(60))


def _status(state: Path) -> dict[str, dict[str, Any]]:
    r = _ctl(state, "status", "--json")
    assert r.returncode == 0, r.stderr
    return {u["name"]: u for u in json.loads(r.stdout)["units"]}


def _up(procs: Procs, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return procs.popen([PY, "-m", "enmei", "up", "--plain", str(cfg)], stdout=out, stderr=out)


def _stop(up: subprocess.Popen[bytes], log: Path) -> None:
    up.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        up.wait(scaled(60))
    assert up.returncode == 0, log.read_text()[-3000:]


def _connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


def test_ctl_controls_a_real_enmei_and_hostile_clients_stall_nothing(tmp_path: Path, procs: Procs) -> None:
    (tmp_path / "broken").touch()
    cfg, log = _config(tmp_path), tmp_path / "up.log"
    state = tmp_path / "state"
    sock = state / "ctl.sock"
    up = _up(procs, cfg, log)
    assert wait_until(sock.exists, 60), log.read_text()[-3000:]
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600

    assert wait_until(lambda: _status(state)["web"]["state"] == "running", 60)
    assert wait_until(lambda: _status(state)["flap"]["state"] == "escalated", 60), _status(state)["flap"]
    for u in _status(state).values():
        if u["pid"]:
            procs.adopt_pid(u["pid"])
    table = _ctl(state, "status")
    assert table.returncode == 0 and "escalated" in table.stdout and "web" in table.stdout, table.stderr
    flap = _status(state)["flap"]
    assert flap["breaker_failures"] == 2 and flap["breaker_open_s"] == 600 and flap["remedy"] == "escalate"

    # stop and start
    r = _ctl(state, "stop", "web")
    assert r.returncode == 0, r.stderr
    assert _status(state)["web"]["state"] == "stopped"
    r = _ctl(state, "start", "web", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["action"] == "start", r.stderr
    assert wait_until(lambda: _status(state)["web"]["state"] == "running", 30)

    # the breaker-open unit, fixed, comes back at once on reset (its next try was 600 s away)
    (tmp_path / "broken").unlink()
    t0 = time.monotonic()
    r = _ctl(state, "reset", "flap")
    assert r.returncode == 0 and "cancelled escalate" in r.stdout, (r.stdout, r.stderr)
    assert wait_until(lambda: _status(state)["flap"]["state"] == "running", 60)
    assert time.monotonic() - t0 < scaled(60)
    print(f"reset of the breaker-open unit -> running (seen by polling enmei ctl) {time.monotonic() - t0:.2f} s")
    flap = _status(state)["flap"]
    assert flap["last_reset_ago_s"] is not None and flap["restarts_in_window"] <= 1
    procs.adopt_pid(flap["pid"])

    # clear errors
    r = _ctl(state, "start", "nope")
    assert r.returncode == 1 and "no unit named 'nope' (units: flap, web)" in r.stderr, r.stderr
    r = enmei("ctl", "status", "web", "--json", "-c", str(cfg), timeout=scaled(60))  # the config finds the socket
    assert r.returncode == 0 and [u["name"] for u in json.loads(r.stdout)["units"]] == ["web"], r.stderr
    r = _ctl(state, "reload", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["reload"]["ok"] is True, (r.stdout, r.stderr)
    # a broken edit: -c still finds the socket, the running enmei refuses it and says where; exit code 3
    good = cfg.read_text()
    cfg.write_text(good.replace("stop_timeout_s = 2\n", "stop_timeout_s = 2\nstop_timout_s = 3\n", 1))
    r = enmei("ctl", "reload", "-c", str(cfg), timeout=scaled(60))
    assert r.returncode == 3 and "reload refused" in r.stderr and "stop_timout_s" in r.stdout + r.stderr, \
        (r.stdout, r.stderr)
    cfg.write_text(good)
    r = _ctl(state, "logs", "web", "-n", "5")
    assert r.returncode == 0 and "hello from web" in r.stdout, (r.stdout, r.stderr)

    # hostile clients: 1 MiB without a newline; many requests never read; one that sends nothing
    flood = _connect(sock)
    flood.settimeout(scaled(30))
    with contextlib.suppress(OSError):  # the server may close it mid-send
        flood.sendall(b"x" * (1 << 20))
    with contextlib.suppress(OSError):
        answer = flood.recv(4096)
        assert b"longer than" in answer or answer == b"", answer
    deaf = _connect(sock)
    deaf.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        for _ in range(2000):
            deaf.send(b'{"op":"logs","unit":"web","lines":10000}\n')
    idle = _connect(sock)
    try:
        old = _status(state)["web"]["pid"]
        t0 = time.monotonic()
        os.kill(old, signal.SIGKILL)
        assert wait_until(lambda: (u := _status(state)["web"])["state"] == "running" and u["pid"] != old, 30)
        back = time.monotonic() - t0
        procs.adopt_pid(_status(state)["web"]["pid"])
        assert back < scaled(10), back  # each status is a fresh enmei ctl process: seconds, not the 10 s timeouts
        t1 = time.monotonic()
        assert _ctl(state, "status", "--json").returncode == 0
        print(f"with 3 hostile clients connected: kill -9 -> running again (seen by polling enmei ctl) {back:.2f} s, "
              f"one enmei ctl status {time.monotonic() - t1:.2f} s")
        assert up.poll() is None
    finally:
        for s in (flood, deaf, idle):
            s.close()
    _stop(up, log)
    assert not sock.exists() and not sock.is_symlink()


def test_a_stale_socket_is_named_and_replaced(tmp_path: Path, procs: Procs) -> None:
    cfg, log = _config(tmp_path), tmp_path / "up.log"
    state = tmp_path / "state"
    sock = state / "ctl.sock"
    up = _up(procs, cfg, log)
    assert wait_until(sock.exists, 60), log.read_text()[-3000:]
    assert wait_until(lambda: all(u["state"] == "running" for u in _status(state).values()), 60)
    for u in _status(state).values():
        procs.adopt_pid(u["pid"])
    up.kill()  # kill -9: the socket file stays, nobody listens
    up.wait(scaled(30))
    assert sock.exists()
    r = _ctl(state, "status")
    assert r.returncode == 7, (r.returncode, r.stderr)
    assert f"no enmei is running with state dir {state}" in r.stderr and str(sock) in r.stderr
    assert "stale socket" in r.stderr
    up2 = _up(procs, cfg, log)  # adopts the units, replaces the socket
    assert wait_until(lambda: _ctl(state, "status", "--json").returncode == 0, 60), log.read_text()[-3000:]
    assert {u["state"] for u in _status(state).values()} == {"running"}
    _stop(up2, log)
    assert not sock.exists()
    r = _ctl(state, "status")
    assert r.returncode == 7 and "no socket there" in r.stderr, r.stderr
