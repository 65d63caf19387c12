"""A VM unit under a real engine: a kernel panic in the guest is seen through QMP, the shipped policy
library answers with a phase-based reboot (the first step of its panic ladder), the warm standby takes
over, the service answers again with its data, and the journal holds the whole chain (verdict ->
decision -> remedy start -> outcome), verified."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.model import UnitState
from enmei.monitor.http import HttpError, http_get
from enmei.visor.qemu import ImageInfo, QemuBackend, build
from enmei.visor.state import StateFile
from support.qemu import EngineRig, answer, running_engine
from support.wait import auntil, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.qemu]


def config(image: str, port: int) -> str:
    return f"""
[supervisor]
state_dir = "state"
tick_s = 0.5

[units.vm]
backend = "qemu"
image = "{image}"
accel = "tcg"
forward = ["{port}:80"]
ready_timeout_s = {scaled(60):.0f}
start_s = 0.5
stop_timeout_s = 10

[[units.vm.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/version"
interval_s = 0.2
timeout_s = 0.5
fail_after = 3
"""


@dataclass
class Rig(EngineRig):
    port: int = 0

    @property
    def backend(self) -> QemuBackend:
        b = self.engine.units["vm"].backend
        assert isinstance(b, QemuBackend)
        return b


@pytest.fixture
async def rig(tmp_path: Path, qemu_image: ImageInfo) -> AsyncIterator[Rig]:
    (port,) = free_ports(1)
    loaded = load_text(config(qemu_image.directory, port), tmp_path / "enmei.toml")
    async with running_engine(loaded, str(tmp_path), lambda engine: Rig(engine, port=port)) as r:
        await r.until("the VM unit running", lambda: "vm" in r.engine.units
                      and r.engine.units["vm"].state is UnitState.RUNNING, 90)
        yield r


async def test_a_guest_panic_is_repaired_by_a_phase_reboot_through_the_engine(rig: Rig) -> None:
    port = rig.port
    assert await rig.backend.wait_standby("vm", scaled(60)), rig.backend.standby("vm")
    assert await http_get("127.0.0.1", port, "/cgi-bin/data?put=kept", timeout_s=5) == (200, b"stored\n")
    old = rig.backend.identity("vm")
    assert old is not None

    # a kernel panic inside the guest (sysrq c): its connection dies with the guest's QEMU
    with pytest.raises((OSError, TimeoutError, HttpError)):
        await http_get("127.0.0.1", port, "/cgi-bin/fault?panic=1", timeout_s=1.0)
    await rig.until("the remedy's outcome", lambda: rig.find_seq("remedy.outcome", action="phase_reboot"))

    # QMP's GUEST_PANICKED became a verdict; the policy chose a phase reboot because of it
    ((v_seq, verdict),) = rig.find_seq("verdict", kind="panic")
    assert verdict["unit"] == "vm" and verdict["detector"] == "qemu.pvpanic"
    assert "Kernel panic" in (verdict["evidence"]["panic_message"] or "")
    ((d_seq, decision),) = rig.find_seq("decision", action="phase_reboot")
    assert decision["rule"] == "panic/0" and decision["cause_seq"] == v_seq  # the ladder's first step
    ((s_seq, start),) = rig.find_seq("remedy.start", action="phase_reboot")
    assert start["decision_seq"] == d_seq and s_seq > d_seq
    ((o_seq, outcome),) = rig.find_seq("remedy.outcome", action="phase_reboot")
    assert outcome["state"] == "succeeded" and outcome["decision_seq"] == d_seq
    assert outcome["remedy_id"] == start["remedy_id"] and o_seq > s_seq
    assert outcome["data"]["via"] == "standby"  # the warm standby took over

    # the service answers again, with the data it synced before the panic
    status, body = await http_get("127.0.0.1", port, "/version", timeout_s=2)
    assert status == 200 and body.startswith(b"enmei-demo")
    await rig.until("the data disk mounted", lambda: "data-ready" in rig.backend.phases("vm"))
    assert await http_get("127.0.0.1", port, "/cgi-bin/data?get", timeout_s=5) == (200, b"kept\n")

    # a new QEMU serves the unit now: its identity is what the engine saved (for adoption)
    new = rig.backend.identity("vm")
    assert new is not None and new.pid != old.pid and new.extra["promoted"]
    assert rig.find_seq("unit.event", event="started", via="phase-standby", replaced_pid=old.pid)
    await rig.until("the identity saved", lambda: StateFile(rig.engine.state_dir / "units.json").load().get(
        "vm") == new)
    # nothing else was needed: no cold reboot, no restart; the unit stayed running
    assert not [b for _, b in rig.find_seq("decision") if b["action"] in ("cold_reboot", "restart", "escalate")]
    assert rig.engine.units["vm"].state is UnitState.RUNNING
    await rig.until("the probe passing again", lambda: any(s > o_seq for s, _ in rig.find_seq("unit.health", to="ok")),
                    10)


async def test_a_shadow_update_through_the_engine_swaps_in_the_new_guest_and_journals_each_step(
        rig: Rig) -> None:
    v2 = build("shadow-v2", service_version="2.0")  # the "update": the same kernel, another initramfs
    port = rig.port
    assert await rig.backend.wait_standby("vm", scaled(60)), rig.backend.standby("vm")
    assert await http_get("127.0.0.1", port, "/cgi-bin/data?put=kept", timeout_s=5) == (200, b"stored\n")
    old = rig.backend.identity("vm")
    assert old is not None

    reply = await wait_for(rig.engine.control("shadow_update", "vm", {"image": v2.directory},
                                                       by="test"), scaled(300))
    assert reply["outcome"]["state"] == "succeeded", reply
    ((_, outcome),) = rig.find_seq("remedy.outcome", action="shadow_update")
    assert outcome["data"]["outcome"] == "updated" and outcome["data"]["replaced_pid"] == old.pid
    # every step journaled as it ended, with its timing
    steps = [b["step"] for _, b in rig.find_seq("remedy.step", action="shadow_update")]
    assert all(b["remedy_id"] == outcome["remedy_id"] and b["took_s"] >= 0
               for _, b in rig.find_seq("remedy.step", action="shadow_update"))
    assert steps == ["clone", "boot", "snapshot", "swap", "verify"], steps
    status, body = await http_get("127.0.0.1", port, "/version", timeout_s=5)
    assert status == 200 and body.startswith(b"enmei-demo 2.0")
    await rig.until("the data disk mounted", lambda: "data-ready" in rig.backend.phases("vm"))
    assert await http_get("127.0.0.1", port, "/cgi-bin/data?get", timeout_s=5) == (200, b"kept\n")
    new = rig.backend.identity("vm")
    assert new is not None and new.pid != old.pid and new.extra["initrd"] == v2.initrd
    assert not [b for _, b in rig.find_seq("decision") if b["action"] in ("cold_reboot", "restart", "escalate")]
    assert rig.engine.units["vm"].state is UnitState.RUNNING


async def test_the_original_crashing_during_the_clones_boot_fails_the_update_clearly_and_the_unit_is_restarted(
        rig: Rig) -> None:
    v2 = build("shadow-v2", service_version="2.0")
    port = rig.port
    assert await rig.backend.wait_standby("vm", scaled(60)), rig.backend.standby("vm")
    assert await http_get("127.0.0.1", port, "/cgi-bin/data?put=kept", timeout_s=5) == (200, b"stored\n")
    old = rig.backend.identity("vm")
    assert old is not None
    killed: list[int] = []

    def crash_the_original(seq: int, kind: str, unit: str, body: Mapping[str, Any]) -> None:
        # the clone launched: the original's QEMU (this test's, through the engine) dies while the clone boots
        if kind == "remedy.step" and body.get("step") == "clone" and not killed:
            os.kill(old.pid, signal.SIGKILL)
            killed.append(seq)

    rig.engine.subscribe(crash_the_original)
    reply = await wait_for(rig.engine.control("shadow_update", "vm", {"image": v2.directory},
                                                       by="test"), scaled(300))
    assert killed and reply["outcome"]["state"] == "failed", reply
    ((o_seq, outcome),) = rig.find_seq("remedy.outcome", action="shadow_update")
    assert "the original QEMU exited during the clone's boot" in outcome["detail"], outcome
    steps = [b["step"] for _, b in rig.find_seq("remedy.step", action="shadow_update")]
    assert steps == ["clone", "rollback"], steps
    ((_, rollback),) = rig.find_seq("remedy.step", action="shadow_update", step="rollback")
    assert rollback["before"] == "swap" and rollback["original_pid"] is None
    # the policy restarts the unit at once (not a minute later as a stranded unit): the pre-update guest
    await rig.until("the unit restarted after the failed update", lambda: any(
        s > o_seq and b["action"] == "restart" for s, b in rig.find_seq("decision")), 30)
    first = next(b for s, b in rig.find_seq("decision") if s > o_seq and b["action"] == "restart")
    assert first["rule"] == "update-failed-down", first
    await rig.until("the unit's QEMU running again", lambda: rig.backend.alive("vm")
                    and rig.backend.identity("vm") is not None, 120)
    body: bytes = await auntil(lambda: answer(port, "/version"), 120, "the restarted guest's answer", every_s=0.1)
    assert body.startswith(b"enmei-demo 1.0")
    new = rig.backend.identity("vm")
    assert new is not None and new.pid != old.pid and new.extra["initrd"] == old.extra["initrd"]
    await rig.until("the data disk mounted", lambda: "data-ready" in rig.backend.phases("vm"))
    assert await http_get("127.0.0.1", port, "/cgi-bin/data?get", timeout_s=5) == (200, b"kept\n")
