"""A supervisor dies; its VM keeps running; a new backend adopts it and controls it fully."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path

import psutil
import pytest

from enmei.clock import wait_for
from enmei.model import UnitEventKind, VerdictKind
from enmei.visor.base import Identity

from .conftest import VmHarness, http_get, until_answer

pytestmark = [pytest.mark.integration, pytest.mark.qemu]

_SUPERVISOR = """
import asyncio, json, os, sys
from pathlib import Path
from enmei.clock import SystemClock
from enmei.config.qemu import QemuUnit
from enmei.visor.qemu import QemuBackend

async def main():
    b = QemuBackend(clock=SystemClock(), state_dir=Path(sys.argv[1]), emit=lambda e: None)
    ident = await b.start("vm", QemuUnit.model_validate_json(sys.argv[2]))
    print(json.dumps(ident.to_json()), flush=True)
    os._exit(0)  # the supervisor dies without stopping or closing anything

asyncio.run(main())
"""


async def test_adoption_after_the_supervisor_process_died(vmh: VmHarness, tmp_path: Path) -> None:
    spec = vmh.spec()
    port = int(spec.forward[0].split(":")[0])
    script = tmp_path / "supervisor.py"
    script.write_text(_SUPERVISOR)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), str(vmh.state_dir),
                                                spec.model_dump_json(), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-2000:]
    identity = Identity.from_json(json.loads(out.decode().strip().splitlines()[-1]))
    assert psutil.Process(identity.pid).is_running()  # QEMU outlived its supervisor
    assert (await until_answer(port)).startswith("enmei-demo")

    b = vmh.backend()
    # not ours: a recycled pid (other create time), or another backend's identity
    assert not await b.adopt("vm", spec, dataclasses.replace(identity, create_time=identity.create_time - 5))
    assert not await b.adopt("vm", spec, dataclasses.replace(identity, backend="process"))
    assert not await b.adopt("vm", spec, dataclasses.replace(identity, extra={**identity.extra,
                                                                              "qmp": "/tmp/other.sock"}))
    assert vmh.events == []

    assert await b.adopt("vm", spec, identity)
    assert vmh.kinds("vm") == [UnitEventKind.ADOPTED]
    assert vmh.events[0].detail["phase_snapshot"] == "enmei-phase-service-ready"
    assert b.alive("vm") and b.identity("vm") is not None
    assert "data-ready" in b.phases("vm")
    assert (await b.stats("vm"))["vcpu_seconds"] > 0
    assert await http_get(port, "/cgi-bin/data?put=adopted") == (200, "stored\n")

    # the adopted VM is watched like a started one: a panic becomes a verdict, phase reboot works
    with pytest.raises((OSError, TimeoutError)):
        await http_get(port, "/cgi-bin/fault?panic=1", 1.0)
    await vmh.wait_for("a panic verdict", lambda: vmh.verdicts)
    assert vmh.verdicts[0].kind == VerdictKind.PANIC
    await b.phase_reboot("vm", wait_data=True)
    assert (await until_answer(port)).startswith("enmei-demo")
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "adopted\n"

    await b.stop("vm", timeout_s=20)
    assert vmh.kinds("vm")[-1] == UnitEventKind.STOPPED
    assert vmh.our_qemus() == []


async def test_adopting_a_gone_vm_is_false(vmh: VmHarness) -> None:
    b = vmh.backend()
    gone = Identity(unit="vm", backend="qemu", pid=2**22 + 12345, create_time=1.0, started_wall=1.0,
                    extra={"qmp": "/nonexistent/qmp.sock", "dir": "/nonexistent"})
    assert not await b.adopt("vm", vmh.spec(), gone)
    assert not b.alive("vm") and vmh.events == []
