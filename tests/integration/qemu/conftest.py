"""Fixtures for tests that boot real guests under TCG.

``qemu_image`` builds the demo image once per session into the user's cache (a rebuild happens only
when its inputs change). ``vmh`` gives a test backends on a temporary state dir and, at teardown,
stops every VM they run, closes them, and kills (by pid) any QEMU still running on that state dir —
also when the test failed or a supervisor subprocess died.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from enmei.clock import SystemClock, wait_for
from enmei.config.qemu import QemuUnit
from enmei.model import UnitEvent, UnitEventKind, Verdict
from enmei.visor.qemu import ImageInfo, QemuBackend, build
from enmei.visor.qemu.cmdline import MachinePaths
from support.qemu import our_qemus
from support.wait import auntil, scaled


@pytest.fixture(scope="session")
def qemu_image() -> ImageInfo:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.fail("QEMU is not installed; run: apt-get install -y qemu-system-x86 qemu-utils")
    return build()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """(status, body) of one HTTP/1.0 GET on 127.0.0.1; raises OSError or TimeoutError."""

    async def go() -> tuple[int, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: t\r\n\r\n".encode())
            data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/"):
            raise OSError(f"not HTTP: {data[:40]!r}")
        return int(head.split()[1]), body.decode(errors="replace")

    return await wait_for(go(), timeout_s)


async def until_answer(port: int, path: str = "/cgi-bin/app", timeout_s: float = 30.0) -> str:
    """The body of the first 200 answer from ``path`` within ``scaled(timeout_s)`` (``support.wait.auntil``);
    on timeout an ``AssertionError`` naming the last status or error."""
    last: list[object] = [None]

    async def answer() -> tuple[str] | None:
        try:
            status, body = await http_get(port, path, 2.0)
        except (OSError, TimeoutError) as exc:
            last[0] = exc
            return None
        if status == 200:
            return (body,)  # a tuple: an empty body is an answer too
        last[0] = status
        return None

    try:
        (body,) = await auntil(answer, timeout_s, f"an answer from {path}", every_s=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last: {last[0]!r})") from None
    return body


class VmHarness:
    def __init__(self, state_dir: Path, image: ImageInfo) -> None:
        self.state_dir = state_dir
        self.image = image
        self.events: list[UnitEvent] = []
        self.verdicts: list[Verdict] = []
        self.backends: list[QemuBackend] = []

    def backend(self, **kw: Any) -> QemuBackend:
        b = QemuBackend(clock=SystemClock(), state_dir=self.state_dir, emit=self.events.append,
                        verdict=self.verdicts.append, **kw)
        self.backends.append(b)
        return b

    def spec(self, **kw: Any) -> QemuUnit:
        """A unit spec; without a warm standby unless asked (``phase_standby=True``): one QEMU per unit
        keeps the other tests light on two cores."""
        # (the boot bound scaled: a TCG boot on a loaded 2-core host took more than 60 s)
        data: dict[str, Any] = {"backend": "qemu", "image": self.image.directory, "accel": "tcg",
                                "forward": [f"{free_port()}:80"], "ready_timeout_s": scaled(60.0),
                                "phase_standby": False}
        data.update(kw)
        return QemuUnit.model_validate(data)

    def kinds(self, unit: str) -> list[UnitEventKind]:
        return [e.kind for e in self.events if e.unit == unit]

    async def wait_for(self, what: str, pred: Any, timeout_s: float = 15.0) -> None:
        """Wait until ``pred()`` holds, for ``scaled(timeout_s)`` (``support.wait.auntil``); on timeout an
        ``AssertionError`` naming ``what`` and the events seen."""
        try:
            await auntil(pred, timeout_s, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; events: {self.events}") from None

    def our_qemus(self) -> list[psutil.Process]:
        """QEMU processes running on this harness's state dir (found by their command line)."""
        return our_qemus(str(self.state_dir))

    async def cleanup(self) -> None:
        for b in self.backends:
            for name in list(b._vms):
                with contextlib.suppress(Exception):
                    await b.stop(name, timeout_s=3.0)
            with contextlib.suppress(Exception):
                await b.close()
        for p in self.our_qemus():
            with contextlib.suppress(psutil.Error):
                os.kill(p.pid, signal.SIGCONT)
                os.kill(p.pid, signal.SIGKILL)
        # shared guest RAM files of the units (in /dev/shm) left by a killed QEMU
        for unit_dir in (self.state_dir / "qemu").glob("*"):
            shutil.rmtree(MachinePaths(unit_dir.absolute(), unit_dir).ram_dir, ignore_errors=True)


@pytest.fixture
async def vmh(tmp_path: Path, qemu_image: ImageInfo) -> AsyncIterator[VmHarness]:
    h = VmHarness(tmp_path / "state", qemu_image)
    try:
        yield h
    finally:
        await h.cleanup()
        assert h.our_qemus() == [], "a QEMU survived the test"
