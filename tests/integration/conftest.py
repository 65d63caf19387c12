"""Integration fixtures: real processes (always reaped), real sockets on 127.0.0.1, real SQLite."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support.wait import until

PY = sys.executable


class Procs:
    """Processes a test started; all of them (and their groups) are ended at teardown, by pid."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []
        self.pids: list[tuple[int, float]] = []

    def popen(self, args: list[str], **kw: object) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(args, start_new_session=True, **kw)  # type: ignore[call-overload]
        self.started.append(p)
        return p

    def adopt_pid(self, pid: int) -> None:
        """Also end this pid (a unit enmei started) at teardown, if it is still the same process."""
        with contextlib.suppress(psutil.Error):
            self.pids.append((pid, psutil.Process(pid).create_time()))

    def cleanup(self) -> None:
        for p in self.started:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.started:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for pid, ctime in self.pids:
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if psutil.Process(pid).create_time() == ctime:
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


def enmei(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "enmei", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          check=False)


def wait_until(pred, timeout: float = 10.0, step: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``pred`` until it holds; say if it did (``support.wait.until``). Event-driven, so the bound is
    generous: at least 30 s, stretched by the machine's measured slowness."""
    return bool(until(pred, max(timeout, 30.0), every_s=step, fail=False))
