"""Issue 15 item 1 end to end: a real ``enmei up`` supervising a TCG guest is asked for ``rejuvenate_vmm``
through its web API; a new QEMU runs the same guest (same boot, RAM kept); enmei killed with SIGKILL and
started again adopts the *new* QEMU; a graceful stop removes the guest's RAM file; the journal verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from enmei.demo.ports import free_ports
from enmei.visor.qemu import ImageInfo
from enmei.visor.qemu.cmdline import MachinePaths
from support.qemu import get, identity, our_qemus, records
from support.wait import scaled, until

pytestmark = [pytest.mark.e2e, pytest.mark.qemu]

PY = sys.executable


def _config(tmp_path: Path, image: str, port: int) -> Path:
    cfg = tmp_path / "enmei.toml"
    cfg.write_text(f"""
[supervisor]
state_dir = "state"
tick_s = 0.5

[units.vm]
backend = "qemu"
image = "{image}"
accel = "tcg"
forward = ["{port}:80"]
phase_standby = false
ready_timeout_s = {scaled(60):.0f}
start_s = 0.5

[[units.vm.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/version"
interval_s = 0.5
timeout_s = 2
fail_after = 5

[[units.vm.probes]]
kind = "process"
interval_s = 1
""")
    return cfg


def _state(port: int) -> dict[str, str]:
    body = until(lambda: get(f"http://127.0.0.1:{port}/cgi-bin/state"), 60, "the guest's state page")
    return dict(item.split("=", 1) for item in body.split())


def test_rejuvenate_vmm_through_the_api_then_a_killed_enmei_adopts_the_new_qemu(
        tmp_path: Path, qemu_image: ImageInfo, ups: list[subprocess.Popen[bytes]]) -> None:
    port, web = free_ports(2)
    cfg = _config(tmp_path, qemu_image.directory, port)
    state = tmp_path / "state"

    def up(log: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "wb") as out:
            p = subprocess.Popen([PY, "-m", "enmei", "up", "--plain", "--listen", f"127.0.0.1:{web}", str(cfg)],
                                 stdout=out, stderr=subprocess.STDOUT)
        ups.append(p)
        return p

    first = up("up1.log")
    before = _state(port)
    assert get(f"http://127.0.0.1:{port}/cgi-bin/state?note=kept") == "ok note\n"
    old = until(lambda: identity(state), 60, "the saved identity")
    assert old["extra"]["ram"] == "shared"
    token = (state / "web.token").read_text().strip()
    until(lambda: json.loads(get(f"http://127.0.0.1:{web}/api/units/vm") or "{}").get("state") == "running",
          120, "the unit running (its start remedy ended)")

    req = urllib.request.Request(f"http://127.0.0.1:{web}/api/units/vm/actions/rejuvenate_vmm", method="POST",
                                 data=b'{"args": {"why": "test"}}', headers={
                                     "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 202
    new = until(lambda: (i := identity(state)) is not None and i["pid"] != old["pid"] and i, 120,
                "the new QEMU's identity saved")
    assert new["extra"]["slot"] != old["extra"]["slot"]
    until(lambda: not psutil.pid_exists(old["pid"]) or psutil.Process(old["pid"]).status() == "zombie", 30,
          "the old QEMU gone")
    after = _state(port)
    assert after["boot_id"] == before["boot_id"] and after["note"] == "kept"

    # enmei dies at once: the new QEMU runs on, and the next enmei adopts it (not the old identity)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert [q.pid for q in our_qemus(str(tmp_path))] == [new["pid"]]
    second = up("up2.log")
    until(lambda: any(r.get("kind") == "unit.event" and (r.get("body") or {}).get("event") == "adopted"
                      and (r.get("body") or {}).get("pid") == new["pid"] for r in records(cfg)), 120,
          "the new QEMU adopted")
    assert _state(port)["boot_id"] == before["boot_id"]
    assert [q.pid for q in our_qemus(str(tmp_path))] == [new["pid"]]

    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=scaled(90)) == 0
    assert our_qemus(str(tmp_path)) == []
    assert not MachinePaths.for_unit(state, "vm").ram_dir.exists()  # the guest's memory went with it
    journal = records(cfg)
    outcomes = [r["body"] for r in journal if r.get("kind") == "remedy.outcome"
                and (r.get("body") or {}).get("action") == "rejuvenate_vmm"]
    assert len(outcomes) == 1 and outcomes[0]["state"] == "succeeded", outcomes
    data = outcomes[0]["data"]
    assert data["replaced_pid"] == old["pid"] and data["pid"] == new["pid"] and data["ram"] == "shared"
    assert data["transferred_bytes"] < 16 * 2**20 and data["downtime_s"] < 5
    assert not [r for r in journal if (r.get("body") or {}).get("action") in ("restart", "cold_reboot",
                                                                                "phase_reboot")]
    verify = subprocess.run([PY, "-m", "enmei", "box", "verify", "-c", str(cfg)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
