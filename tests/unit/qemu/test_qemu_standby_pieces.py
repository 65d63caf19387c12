"""Pure parts of the warm standby: when a phase image may make a standby, its status, finding a slot's
QEMU (no QEMU started: the real thing is in tests/integration/qemu/test_qemu_standby.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from enmei.clock import SystemClock
from enmei.config.qemu import QemuUnit
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.host import QemuHost
from enmei.visor.qemu.machine import Machine
from enmei.visor.qemu.phase_image import image_key, image_problem
from enmei.visor.qemu.standby import Standby, StandbyState
from enmei.visor.qemu.strays import slot_qemu


def _machine(tmp_path: Path, **spec: object) -> Machine:
    unit = QemuUnit.model_validate({"backend": "qemu", **spec})
    paths = MachinePaths.for_unit(tmp_path, "vm")
    paths.dir.mkdir(parents=True, exist_ok=True)
    m = Machine(name="vm", spec=unit, kernel="/k", initrd="/i", paths=paths, accel="tcg", clock=SystemClock(),
                on_fact=lambda *a: None, on_exit=lambda m: None)
    m.phase_snapshot = "enmei-phase-service-ready"
    m.phase_image_id = "abc"
    return m


def _write_image(m: Machine, **meta: object) -> None:
    m.paths.phase_image.write_bytes(b"qcow2")
    body = {"format": 1, "id": "abc", "made_wall": 0.0, "key": image_key(m), **meta}
    m.paths.phase_image.with_suffix(".json").write_text(json.dumps(body))


async def test_a_phase_image_makes_a_standby_only_for_the_guest_and_machine_it_was_made_from(
        tmp_path: Path) -> None:
    m = _machine(tmp_path)
    assert image_problem(m) == "no phase image"
    _write_image(m)
    assert image_problem(m) is None
    _write_image(m, id="other")  # made by another first boot (an earlier start)
    assert image_problem(m) == "the phase image is not this guest's"
    _write_image(m)
    m.spec = m.spec.model_copy(update={"memory_mib": 512})  # its RAM would not fit the saved state
    assert image_problem(m) == "the phase image was made for another machine (kernel, memory...)"
    m.spec = m.spec.model_copy(update={"memory_mib": 256})
    m.phase_image_id = None  # adopted from a supervisor that did not say which image it made
    assert image_problem(m) == "the phase image is not this guest's"


def test_a_new_standby_says_what_it_is() -> None:
    sb = Standby("vm", "a")
    status = sb.status()
    assert status["state"] == str(StandbyState.PREPARING) == "preparing"
    assert (status["slot"], status["pid"], status["rss_bytes"], status["error"]) == ("a", None, None, None)
    assert status["warm_requests"] == 0 and status["attempts"] == 0


def test_a_slot_qemu_is_confirmed_by_its_command_line(tmp_path: Path) -> None:
    paths = MachinePaths.for_unit(tmp_path, "vm", "a")
    paths.dir.mkdir(parents=True)
    assert slot_qemu(QemuHost(), paths) is None  # no pid file
    paths.pidfile.write_text(f"{os.getpid()}\n")  # a live process, but not a QEMU of this slot
    assert slot_qemu(QemuHost(), paths) is None
    paths.pidfile.write_text("not a pid\n")
    assert slot_qemu(QemuHost(), paths) is None
