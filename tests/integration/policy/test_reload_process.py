"""Hot reload with policies in sandbox processes: a new version gets a new process and the old one is
reaped; a rejected version leaves the running process untouched."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from enmei.model import UnitEvent, UnitEventKind
from enmei.policy.manager import PolicyManager
from enmei.policy.sandbox import WorkerSandbox
from unit.policy.common import view

pytestmark = pytest.mark.integration

SRC = 'load("@enmei", "restart")\ndef on_exit(event, ctx):\n    return [restart(ctx.unit, why = "{}")]\n'
EXIT = UnitEvent("api", UnitEventKind.EXITED, 1000.0, {"code": 1})


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_reload_swaps_sandbox_processes(tmp_path: Path) -> None:
    path = tmp_path / "p.star"
    path.write_text(SRC.format("v1"))
    m = PolicyManager(path)
    try:
        first = m._box
        assert isinstance(first, WorkerSandbox) and first.pid is not None
        pid1 = first.pid
        _write(path, "def on_exit(event, ctx):\n    return [\n")
        assert m.check_reload()[0]["event"] == "rejected"
        assert m._box is first and psutil.pid_exists(pid1)
        assert m.decide(EXIT, view())[0].reason == "v1"
        _write(path, SRC.format("v2"))
        assert m.check_reload()[0]["event"] == "reloaded"
        assert m.decide(EXIT, view())[0].reason == "v2"
        assert not psutil.pid_exists(pid1)
    finally:
        m.close()
