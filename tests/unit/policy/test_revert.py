"""D5's last step in the manager: a policy too slow for the engine is reverted to the version before it,
or, with none, suspended (the fallback decides) until its file changes; the slow content is not loaded
again meanwhile."""

from __future__ import annotations

import os
from pathlib import Path

from enmei.model import UnitEvent, UnitEventKind
from enmei.policy.manager import PolicyManager
from enmei.policy.sandbox import InProcessSandbox

from .common import view

V1 = 'load("@enmei", "restart")\ndef on_exit(event, ctx):\n    return [restart(ctx.unit, why = "v1", rule = "r1")]\n'
V2 = 'load("@enmei", "restart")\ndef on_exit(event, ctx):\n    return [restart(ctx.unit, why = "v2", rule = "r2")]\n'
V3 = 'load("@enmei", "restart")\ndef on_exit(event, ctx):\n    return [restart(ctx.unit, why = "v3", rule = "r3")]\n'
EXIT = UnitEvent("api", UnitEventKind.EXITED, 1000.0, {"code": 1})


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _rule(m: PolicyManager) -> str:
    return m.decide(EXIT, view())[0].rule


def test_revert_goes_back_to_the_version_before(tmp_path: Path) -> None:
    path = tmp_path / "p.star"
    path.write_text(V1)
    m = PolicyManager(path, sandbox=InProcessSandbox)
    v1 = m.version
    _write(path, V2)
    assert m.check_reload()[0]["event"] == "reloaded"
    v2 = m.version
    assert _rule(m) == "r2"
    [notice] = m.revert("3 events in a row were not decided within 0.4s")
    assert notice["event"] == "reverted" and notice["policy"] == v1 and notice["from"] == v2
    assert m.version == v1 and _rule(m) == "r1" and not m.suspended
    _write(path, V2)  # touched, the same slow content: not loaded again
    assert m.check_reload() == [] and m.version == v1
    _write(path, V3)
    assert m.check_reload()[0]["event"] == "reloaded" and _rule(m) == "r3"


def test_revert_without_a_version_before_suspends_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "p.star"
    path.write_text(V1)
    m = PolicyManager(path, sandbox=InProcessSandbox)
    [notice] = m.revert("too slow")
    assert notice["event"] == "suspended" and notice["fallback"] == "builtin-1" and m.suspended
    d = m.decide(EXIT, view())[0]
    assert (d.policy, d.rule) == ("builtin-1", "exit-restart")  # the fallback decides, history kept
    assert "exit-restart" in m.history.payload(["api"], 1000.0)
    _write(path, V2)
    [reloaded] = m.check_reload()
    assert reloaded["event"] == "reloaded" and not m.suspended and _rule(m) == "r2"
