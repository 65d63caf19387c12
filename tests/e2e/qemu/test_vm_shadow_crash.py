"""Issue 14, bad input: a real ``enmei up`` is killed with SIGKILL at every named step of a shadow update
(``enmei.visor.qemu.shadow.POINTS``, through the ``ENMEI_CRASH_AT`` test hook) while a writer stores
synced lines on the guest's data disk; the next ``enmei up`` finds the service running (the original or
the updated guest, never neither, never two), every acknowledged write on the disk, the update record
naming the guest that runs, the interrupted update journaled, and the journal verified."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from enmei.crashpoint import ENV
from enmei.demo.ports import free_ports
from enmei.visor.qemu import ImageInfo, build
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.shadow import POINTS, read_record
from support.qemu import get, identity, our_qemus, records, require_qemu
from support.wait import scaled, until

pytestmark = [pytest.mark.e2e, pytest.mark.qemu]

PY = sys.executable
# the steps an update journals, in order; a supervisor killed in it journaled a prefix of them
STEPS = ["clone", "boot", "snapshot", "swap", "verify"]
# where the successor finds the original guest (adopted) or the updated one: before the clone holds the
# unit's ports the original; from then on the clone, which runs the update — adopted by its saved identity
# after the swap, and in between (the clone resumed, not yet the unit's; the original running, paused or
# gone) through the takeover record (``enmei.visor.qemu.handoff``: the original ended first; the code
# before it cold-started the unit, killing the clone)
BEFORE_SWAP = {"shadow.clone-started", "shadow.clone-booting", "shadow.clone-ready"}
TAKING_OVER = {"takeover.resumed", "takeover.gate-closed", "takeover.old-ended"}
AFTER_SWAP = {"shadow.swap", "shadow.verify", "shadow.verified"}


@pytest.fixture(scope="module")
def images() -> tuple[ImageInfo, ImageInfo]:
    require_qemu()
    return build(), build("shadow-v2", service_version="2.0")


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
phase_standby = true
ready_timeout_s = {max(180.0, scaled(120)):.0f}
start_s = 0.5

[[units.vm.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/version"
interval_s = 0.5
timeout_s = 2
fail_after = 10
""")
    return cfg


class Writer:
    """Stores ``wN`` lines (synced by the guest before it answers ``stored``) every 50 ms; bounded."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.acked: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        end = time.monotonic() + scaled(1200)
        for n in range(1, 50_000):
            if self.stop.is_set() or time.monotonic() > end:
                return
            if get(f"http://127.0.0.1:{self.port}/cgi-bin/data?put=w{n}", 2.0) == "stored\n":
                self.acked.append(f"w{n}")
            self.stop.wait(0.05)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("point", POINTS)
def test_enmei_killed_at_each_step_of_a_shadow_update_leaves_one_guest_serving_with_every_write(
        tmp_path: Path, images: tuple[ImageInfo, ImageInfo], ups: list[subprocess.Popen[bytes]],
        point: str) -> None:
    v1, v2 = images
    port, web = free_ports(2)
    cfg = _config(tmp_path, v1.directory, port)
    state = tmp_path / "state"

    def up(log: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(tmp_path / log, "wb") as out:
            p = subprocess.Popen([PY, "-m", "enmei", "up", "--plain", "--listen", f"127.0.0.1:{web}", str(cfg)],
                                 stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        ups.append(p)
        return p

    def unit_running() -> bool:
        return json.loads(get(f"http://127.0.0.1:{web}/api/units/vm") or "{}").get("state") == "running"

    first = up("up1.log", {ENV: point})
    until(unit_running, 180, "the unit running under the first enmei")
    assert until(lambda: get(f"http://127.0.0.1:{port}/version"), 60, "the guest's answer").startswith(
        "enmei-demo 1.0")
    writer = Writer(port)
    writer.thread.start()
    try:
        until(lambda: len(writer.acked) >= 3, 60, "a few acknowledged writes")
        asked = subprocess.Popen([PY, "-m", "enmei", "update", "vm", "--image", v2.directory, "-c", str(cfg)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # the first enmei dies at the point, by the hook in the real code path: SIGKILL, nothing cleaned up
        # (an update that ended while it lives never reached the point: that fails at once)
        until(lambda: first.poll() is not None or asked.poll() is not None, 400, "the update or the enmei ending",
              every_s=0.2)
        out, _ = asked.communicate(timeout=scaled(60))
        try:
            rc = first.wait(timeout=scaled(30))
        except subprocess.TimeoutExpired:
            pytest.fail(f"the update ended without reaching {point}; enmei lives: {out.decode()[-2000:]}")
        log1 = (tmp_path / "up1.log").read_text(errors="replace")
        assert rc == -signal.SIGKILL, log1[-3000:]
        assert f"enmei: crash point {point}" in log1
        left = [q.pid for q in our_qemus(str(tmp_path))]
        assert left, "no QEMU outlived the supervisor"

        second = up("up2.log")
        until(unit_running, 240, "the unit running under the second enmei")
        ident = until(lambda: identity(state), 60, "the saved identity")
        body = until(lambda: get(f"http://127.0.0.1:{port}/version"), 120, "the guest's answer")
        # one guest of the unit runs: the saved one; at most one other QEMU (the new standby, paused behind
        # its closed gate); every QEMU the dead supervisor left but the adopted one is gone
        until(lambda: ident["pid"] in (now := [q.pid for q in our_qemus(str(tmp_path))]) and len(now) <= 2
              and not (set(left) - {ident["pid"]}) & set(now), 60, "one guest (and a standby) left")
        until(lambda: get(f"http://127.0.0.1:{port}/cgi-bin/data?put=after", 2.0) == "stored\n", 120,
              "a write to the successor's guest (its data disk mounted)")
        n = len(writer.acked)
        until(lambda: len(writer.acked) >= n + 3, 60, "the writer acknowledged again")
    finally:
        writer.stop.set()
        writer.thread.join(timeout=10)
    stored = until(lambda: get(f"http://127.0.0.1:{port}/cgi-bin/data"), 60, "the stored lines").split()
    missing = [w for w in writer.acked if w not in stored]
    assert missing == [], f"acknowledged writes lost: {missing}"
    assert "after" in stored

    # original or updated, as the step says; and a later cold start boots the guest that runs
    version = "2.0" if "enmei-demo 2.0" in body else "1.0"
    assert body.startswith(f"enmei-demo {version}"), body
    if point in BEFORE_SWAP:
        assert version == "1.0"
    if point in AFTER_SWAP | TAKING_OVER:
        assert version == "2.0"
    rec = read_record(MachinePaths.for_unit(state, "vm"), v1.directory)
    assert (rec is not None and rec["initrd"] == v2.initrd) if version == "2.0" else rec is None, rec
    assert ident["extra"]["initrd"] == (v2 if version == "2.0" else v1).initrd
    unit_dir = MachinePaths.for_unit(state, "vm").dir
    assert not (unit_dir / "pre-update-sys.qcow2").exists()  # settled: put back or dropped

    journal = records(cfg)
    steps = [r["body"]["step"] for r in journal if r.get("kind") == "remedy.step"
             and r["body"].get("action") == "shadow_update"]
    assert steps == STEPS[:len(steps)], steps
    (outcome,) = [r["body"] for r in journal if r.get("kind") == "remedy.outcome"
                  and r["body"].get("action") == "shadow_update"]
    assert outcome["state"] == "cancelled" and "interrupted" in outcome["detail"], outcome
    found = [r["body"] for r in journal if r.get("kind") == "unit.event"
             and r["body"].get("event") in ("adopted", "started")]
    assert found, "the successor neither adopted nor started the unit"
    if point in AFTER_SWAP | TAKING_OVER:
        # the clone itself serves: the QEMU the update launched, adopted, with no cold boot of the unit
        (clone,) = [r["body"] for r in journal if r.get("kind") == "remedy.step" and r["body"].get("step") == "clone"]
        assert ident["pid"] == clone["pid"], (ident, clone)
        assert [b for b in found if b["event"] == "adopted" and b.get("pid") == clone["pid"]], found
        if point in TAKING_OVER:
            assert [b for b in found if b["event"] == "adopted" and b.get("took_over")], found
        cold = [b for b in found if b["event"] == "started" and not b.get("via")]
        assert len(cold) == 1, cold  # the first enmei's first boot, nothing after it

    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=scaled(90)) == 0
    assert our_qemus(str(tmp_path)) == []
    verify = subprocess.run([PY, "-m", "enmei", "box", "verify", "-c", str(cfg)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
