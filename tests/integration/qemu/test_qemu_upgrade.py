"""``enmei ctl upgrade`` with a real VM unit (QEMU, TCG) beside a process unit: the successor adopts the
running QEMU (same pid, same QMP socket) and the guest's service answers throughout the handover."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path

import pytest

from enmei.bench.selfupdate import Rig
from enmei.demo.ports import free_ports
from enmei.visor.qemu import ImageInfo
from support.wait import scaled

from ..conftest import PY, enmei, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.qemu, pytest.mark.timeout(900)]


def test_upgrade_adopts_a_running_vm_and_its_guest_serves_on(tmp_path: Path, qemu_image: ImageInfo) -> None:
    rig = Rig(tmp_path, units=1)
    svc, vm = free_ports(2)
    rig.cfg.write_text(f"""
[supervisor]
state_dir = "state"

[units.s0]
command = ["{PY}", "-m", "enmei.demo.service", "--port", "{svc}"]
[[units.s0.probes]]
kind = "http"
url = "http://127.0.0.1:{svc}/health"
interval_s = 1

[units.vm]
backend = "qemu"
forward = ["{vm}:80"]
[[units.vm.probes]]
kind = "http"
url = "http://127.0.0.1:{vm}/version"
interval_s = 1
timeout_s = 2
""")
    rig.units = ["s0", "vm"]
    failed: list[str] = []
    answered = 0
    stop = threading.Event()

    def ask_guest() -> None:  # the guest's service, every 0.2 s, throughout
        nonlocal answered
        while not stop.wait(0.2):
            conn = http.client.HTTPConnection("127.0.0.1", vm, timeout=5)
            try:
                conn.request("GET", "/version")
                if conn.getresponse().status == 200:
                    answered += 1
                else:
                    failed.append("status")
            except (OSError, http.client.HTTPException) as exc:
                failed.append(type(exc).__name__)
            finally:
                conn.close()

    asker = threading.Thread(target=ask_guest, daemon=True)
    try:
        rig.start(timeout_s=scaled(180))
        before = rig.pids()
        old = rig.supervisor_pid()
        asker.start()
        r = enmei("ctl", "upgrade", "--state-dir", str(rig.state), timeout=scaled(300))
        assert r.returncode == 0, r.stdout + r.stderr
        assert wait_until(lambda: rig.supervisor_pid() not in (None, old), 60)
        time.sleep(2)
        assert rig.pids() == before  # the QEMU process and the service: adopted, not restarted
        st = rig.status() or {}
        assert {u["name"]: u["health"] for u in st["units"]}.get("vm") in ("ok", "unknown")
        assert wait_until(lambda: {u["name"]: u["health"] for u in (rig.status() or {}).get("units", [])}
                          .get("vm") == "ok", 60)
    finally:
        stop.set()
        if asker.is_alive():
            asker.join(30)
        rig.close()
    print(f"guest answered {answered} times during the test, failed {len(failed)}: {failed[:5]}")
    assert answered > 0 and failed == []
