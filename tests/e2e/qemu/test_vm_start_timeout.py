"""A VM unit whose guest is slow to get ready (issue 14): its start times out, and that is a failed start.

A real engine, the shipped policy and a real TCG guest whose service starts ``enmei.ready_delay_s``
seconds late (a kernel command-line knob of the guest's init), past the unit's ``ready_timeout_s``. The
rule: a start that did not complete within its bound is a failed start — its QEMU is ended by pid, the
failure journaled, and the restart policy with its backoff applies; a guest getting ready after that is
never adopted nor left running beside the next start.

On the code before, the start remedy's deadline (``start_s + restart.deadline_s``) ended the start first
(``restart.deadline_s`` is small here; by default 60 s against ``ready_timeout_s`` = 60 s plus the start's
own work): the QEMU was left booting, the unit STARTING with nothing to finish it (the policy does
nothing for a failed repair of a unit that is alive), and the guest got ready later, unwatched.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.model import UnitState
from enmei.visor.qemu import ImageInfo
from support.qemu import EngineRig, our_qemus, running_engine
from support.wait import auntil

pytestmark = [pytest.mark.e2e, pytest.mark.qemu]

READY_S = 12.0  # the unit's ready_timeout_s (not scaled: the guest is late whatever the load)
DELAY_S = 25  # the guest's service starts this long after its network is up: always past READY_S


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
kernel_args = ["enmei.ready_delay_s={DELAY_S}"]
ready_timeout_s = {READY_S}
phase_standby = false
start_s = 0.5
stop_timeout_s = 5

[units.vm.restart]
deadline_s = 2
backoff_first_s = 1

[[units.vm.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/version"
interval_s = 0.5
timeout_s = 1
"""


def _our_qemus(marker: str) -> list[int]:
    return [p.pid for p in our_qemus(marker)]


@dataclass
class Rig(EngineRig):
    marker: str = ""
    seen: list[list[int]] = field(default_factory=list)  # the unit's QEMU processes, sampled every 0.2 s

    async def watch(self) -> None:
        while True:
            self.seen.append(await asyncio.to_thread(_our_qemus, self.marker))
            await asyncio.sleep(0.2)


@pytest.fixture
async def rig(tmp_path: Path, qemu_image: ImageInfo) -> AsyncIterator[Rig]:
    (port,) = free_ports(1)
    loaded = load_text(config(qemu_image.directory, port), tmp_path / "enmei.toml")
    async with running_engine(loaded, str(tmp_path), lambda engine: Rig(engine, marker=str(tmp_path))) as r:
        watcher = asyncio.create_task(r.watch())
        try:
            yield r
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)


async def test_a_start_that_times_out_is_a_failed_start_its_qemu_ended_and_retried(rig: Rig) -> None:
    await auntil(lambda: any(len(s) == 1 for s in rig.seen), 60, "the first QEMU (daemonized)")
    (first,) = next(s for s in rig.seen if len(s) == 1)

    def failed() -> list[dict[str, Any]]:
        return [b for b in rig.find("unit.event", event="start_failed") if "service-ready" in str(b.get("cause"))]

    # the backend's ready_timeout_s ends the start (old code: the remedy's deadline did, 2.5 s in, and then
    # nothing: the unit stayed STARTING while the guest booted on)
    try:
        await auntil(failed, READY_S + 60, "a start_failed naming the boot's timeout")
    except AssertionError:
        unit = rig.engine.units["vm"]
        raise AssertionError(f"no failed start: the unit is {unit.state}, QEMUs {rig.seen[-1]}, outcomes "
                             f"{[(b['action'], b['state']) for b in rig.find('remedy.outcome')]}") from None
    assert "no 'service-ready' within" in failed()[0]["cause"]
    assert not psutil.pid_exists(first) or first not in _our_qemus(rig.marker), "the late guest's QEMU runs on"
    # the policy retries it as a failed start: a restart decision, and a new QEMU once the first is gone
    await auntil(lambda: any(b["action"] == "restart" for b in rig.find("decision")), 30, "a restart")
    (decision,) = [b for b in rig.find("decision") if b["action"] == "restart"][:1]
    assert decision["rule"] == "retry-after-failure", decision
    await auntil(lambda: any(s and first not in s for s in rig.seen), 60, "the retry's QEMU")
    # never two QEMUs at once: no two pids live in two samples in a row (a daemonizing QEMU is two processes
    # for a moment, its parent and the daemon)
    both = [(a, b) for a, b in itertools.pairwise(rig.seen) if len(set(a) & set(b)) > 1]
    assert not both, both
    unit = rig.engine.units["vm"]
    assert unit.state is UnitState.STARTING, [(k, b.get("event") or b.get("to") or b.get("action"), b.get("cause")
                                               or b.get("detail")) for _, k, _, b in rig.records[-12:]]
    states = [b["to"] for b in rig.find("unit.state")]
    assert "running" not in states and states[:2] == ["starting", "exited"], states
    outcome = [b for b in rig.find("remedy.outcome") if b["action"] == "start"]
    assert outcome and outcome[0]["state"] == "failed" and "service-ready" in outcome[0]["detail"]
