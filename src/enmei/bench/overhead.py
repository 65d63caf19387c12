"""``enmei bench overhead``: the supervisor's own CPU while it watches ``units`` demo services.

Each unit is a real demo service with an HTTP probe and a process-stats probe at 1 Hz. The engine runs
in this process as ``enmei up`` runs it (the shipped policy library, the latency and aging detectors, the
anchored journal); its CPU time (user + system, not the children's) is measured over ``seconds`` after
every unit is running, and reported as a percentage of one core.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.detect.wiring import judge_factory
from enmei.engine import Engine, journal_for
from enmei.model import UnitState
from enmei.policy.manager import open_policy

__all__ = ["config_text", "run"]


def config_text(ports: list[int], interval_s: float = 1.0) -> str:
    parts = ['[supervisor]\nstate_dir = "state"\n']
    for i, port in enumerate(ports):
        parts.append(f"""
[units.svc{i}]
command = ["{sys.executable}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
stop_timeout_s = 5

[[units.svc{i}.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval_s = {interval_s}

[[units.svc{i}.probes]]
kind = "process"
interval_s = {interval_s}
""")
    return "".join(parts)


async def _measure(units: int, seconds: float, workdir: Path) -> dict[str, Any]:
    loaded = load_text(config_text(free_ports(units)), workdir / "enmei.toml")
    journal = journal_for(loaded).open()
    # What `enmei up` runs: the shipped Starlark policy library, the detectors, the anchored journal.
    engine = Engine(loaded, journal=journal, policy=open_policy(None), judge_factory=judge_factory)
    task = asyncio.create_task(engine.run())
    try:
        deadline = time.monotonic() + 60
        while not all(u.state is UnitState.RUNNING for u in engine.units.values()):
            if time.monotonic() > deadline or task.done():
                raise RuntimeError("units did not all start within 60 s")
            await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # let every probe settle into its schedule
        me = psutil.Process()
        c0, t0, h0 = me.cpu_times(), time.monotonic(), engine.handled
        await asyncio.sleep(seconds)
        c1, t1, h1 = me.cpu_times(), time.monotonic(), engine.handled
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        restarts = sum(len(u.restarts) for u in engine.units.values())
        return {"units": units, "cpu_percent_of_core": round(100 * cpu / (t1 - t0), 3), "seconds": round(t1 - t0, 1),
                "cpu_seconds": round(cpu, 3), "events_handled": h1 - h0, "restarts": restarts}
    finally:
        engine.stop()
        await task
        journal.close()


def run(units: int = 10, seconds: float = 60.0) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="enmei-bench-overhead-"))
    try:
        return asyncio.run(_measure(units, seconds, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
