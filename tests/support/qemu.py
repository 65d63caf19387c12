"""What the QEMU end-to-end tests share: the check that QEMU is installed, finding and ending the QEMUs a
test started (by a marker in their command line: the test's temp dir), the guest's answers, and the two
ways a test runs enmei over real guests:

- in process: :func:`running_engine` runs a real :class:`~enmei.engine.Engine` with its journal and
  yields an :class:`EngineRig` (every record the engine writes, ``find``, ``until``); on the way out, also
  on failure, the engine is stopped, every QEMU of the test ended, and the journal verified;
- as ``enmei up`` subprocesses: :func:`end_ups` ends them (SIGTERM, then SIGKILL), every QEMU of the test
  and the guests' RAM files; :func:`records`, :func:`identity` and :func:`get` read what they left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from enmei.box import verify
from enmei.clock import wait_for
from enmei.config.load import LoadedConfig
from enmei.engine import Engine, journal_for
from enmei.monitor.http import HttpError, http_get
from enmei.visor.qemu.cmdline import MachinePaths
from support.wait import auntil, scaled

__all__ = ["EngineRig", "answer", "end_qemus", "end_ups", "get", "identity", "our_qemus", "records",
           "require_qemu", "running_engine"]

PY = sys.executable
Record = tuple[int, str, str, dict[str, Any]]


def require_qemu() -> None:
    """Fail (never skip) with the command that installs QEMU when it is missing."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.fail("QEMU is not installed; run: apt-get install -y qemu-system-x86 qemu-utils")


def our_qemus(marker: str) -> list[psutil.Process]:
    """The live (not zombie) QEMU processes with ``marker`` in an argument of their command line."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            cmd = p.info["cmdline"] or []
            if cmd and "qemu-system" in cmd[0] and any(marker in a for a in cmd) \
                    and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def end_qemus(marker: str) -> None:
    """End every QEMU of :func:`our_qemus` by pid (SIGCONT first: a paused guest's QEMU is stopped too)."""
    for p in our_qemus(marker):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            os.kill(p.pid, signal.SIGCONT)
            os.kill(p.pid, signal.SIGKILL)


async def answer(port: int, path: str, timeout_s: float = 5.0) -> bytes | None:
    """The body of a 200 answer from the guest's forwarded ``port`` at ``path``, or None (no answer)."""
    try:
        status, body = await http_get("127.0.0.1", port, path, timeout_s=timeout_s)
    except (HttpError, OSError, TimeoutError):
        return None
    return body if status == 200 else None


def get(url: str, timeout_s: float = 3.0) -> str | None:
    """The body of ``url`` (blocking, for the subprocess tests), or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return str(r.read().decode())
    except (OSError, urllib.error.URLError):
        return None


def records(cfg: Path) -> list[dict[str, Any]]:
    """Every journal record of the enmei configured by ``cfg`` (``enmei box export --jsonl``)."""
    out = subprocess.run([PY, "-m", "enmei", "box", "export", "--jsonl", "-c", str(cfg)], capture_output=True,
                         text=True, timeout=120, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def identity(state: Path, unit: str = "vm") -> dict[str, Any] | None:
    """The unit's saved identity in ``state/units.json`` (its QEMU's pid and extras), or None."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return dict(json.loads((state / "units.json").read_text())["units"][unit])
    return None


def end_ups(started: Iterable[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """End the ``enmei up`` processes a test started (SIGTERM, SIGKILL after a scaled minute), then every
    QEMU of the test and the guests' RAM files (they live outside ``tmp_path``)."""
    for p in started:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=scaled(60))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    end_qemus(str(tmp_path))
    for unit_dir in (tmp_path / "state" / "qemu").glob("*"):
        shutil.rmtree(MachinePaths(unit_dir.absolute(), unit_dir).ram_dir, ignore_errors=True)


@dataclass
class EngineRig:
    """A running engine and every record it wrote, in order: ``(seq, kind, unit, body)``."""

    engine: Engine
    records: list[Record] = field(default_factory=list)

    def find(self, record_kind: str, unit: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """The bodies of the records of ``record_kind`` (of ``unit``, if given) whose body has every ``match``."""
        return [body for _, k, u, body in self.records if k == record_kind and (unit is None or u == unit)
                and all(body.get(key) == value for key, value in match.items())]

    def find_seq(self, record_kind: str, **match: Any) -> list[tuple[int, dict[str, Any]]]:
        """As :meth:`find`, each body with its seq."""
        return [(seq, body) for seq, k, _, body in self.records
                if k == record_kind and all(body.get(key) == value for key, value in match.items())]

    async def until(self, what: str, pred: Callable[[], Any], timeout_s: float = 30.0) -> Any:
        """Wait for ``pred``; event-driven, so the bound is generous (>= 30 s, scaled to the machine). On
        failure the message ends with the last records."""
        try:
            return await auntil(pred, max(timeout_s, 30.0), what)
        except AssertionError as exc:
            tail = [(s, k, u, b.get("event") or b.get("action") or b.get("kind")) for s, k, u, b in self.records[-15:]]
            raise AssertionError(f"{exc}; last records: {tail}") from None


R = TypeVar("R", bound=EngineRig)


@contextlib.asynccontextmanager
async def running_engine(loaded: LoadedConfig, marker: str, make: Callable[[Engine], R]) -> AsyncIterator[R]:
    """Run a real engine over ``loaded`` (its journal opened) and yield ``make(engine)``, subscribed to every
    record. On the way out, also on failure: the engine stopped (a scaled minute at most), the journal
    closed, every QEMU with ``marker`` ended; then it asserts that none had outlived the engine's stop and
    that the journal verifies."""
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    rig = make(engine)
    engine.subscribe(lambda seq, kind, unit, body: rig.records.append((seq, kind, unit, dict(body))))
    task = asyncio.create_task(engine.run())
    survived: list[int] = []
    stopped = "stopped"
    try:
        yield rig
    finally:
        engine.stop()
        try:
            await wait_for(task, scaled(60))
        except TimeoutError:
            stopped = "still stopping after a scaled minute"
        except Exception as exc:  # the test's own failure matters more; this one is said below
            stopped = f"ended by {exc!r}"
        journal.close()
        # a QEMU the stop ended may take a moment to be gone from the process table
        await auntil(lambda: not our_qemus(marker), 10, fail=False)
        survived = [p.pid for p in our_qemus(marker)]
        end_qemus(marker)
    tail = [(s, k, u, b.get("event") or b.get("action") or b.get("to"), b.get("cause") or b.get("detail"))
            for s, k, u, b in rig.records[-12:]]
    assert survived == [], f"QEMUs {survived} survived the engine's stop (the engine {stopped}); last records {tail}"
    assert verify(loaded.journal_path).ok
