"""The manager: start-up, hot reload (validated first, the old version kept on failure), notices."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from enmei.errors import PolicyError
from enmei.model import Tick, UnitEvent, UnitEventKind
from enmei.policy.base import ReloadablePolicy
from enmei.policy.manager import PolicyManager, load_default
from enmei.policy.sandbox import InProcessSandbox
from enmei.remedy import REMEDIES, Remedy, Result, UnitControl
from enmei.visor.base import Capability

from .common import view

V1 = 'load("@enmei", "restart")\ndef on_exit(event, ctx):\n    return [restart(ctx.unit, why = "v1", rule = "r1")]\n'
V2 = 'load("@enmei", "restart")\ndef on_exit(event, ctx):\n    return [restart(ctx.unit, why = "v2", rule = "r2")]\n'
EXIT = UnitEvent("api", UnitEventKind.EXITED, 1000.0, {"code": 1})


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new mtime even on coarse clocks


def _reason(m: PolicyManager) -> str:
    return m.decide(EXIT, view())[0].reason


@pytest.fixture
def running(policy_file: Callable[..., Path]) -> tuple[PolicyManager, Path]:
    path = policy_file(V1)
    m = PolicyManager(path, sandbox=InProcessSandbox)
    return m, path


def test_loaded_notice_and_versions(running: tuple[PolicyManager, Path]) -> None:
    m, path = running
    assert isinstance(m, ReloadablePolicy)
    notices = m.drain_notices()
    assert notices == [{"event": "loaded", "policy": m.version, "file": str(path), "handlers": ["on_exit"],
                        "sandbox": "in-process"}]
    assert m.version.startswith("policy@") and len(m.version) == len("policy@") + 12
    assert m.drain_notices() == []
    d = m.decide(EXIT, view())[0]
    assert (d.policy, d.rule) == (m.version, "r1")


def test_an_unchanged_file_is_not_reloaded(running: tuple[PolicyManager, Path]) -> None:
    m, path = running
    assert m.check_reload() == []
    _write(path, V1)  # touched, same content
    assert m.check_reload() == []


def test_a_changed_file_is_reloaded(running: tuple[PolicyManager, Path]) -> None:
    m, path = running
    old = m.version
    _write(path, V2)
    [notice] = m.check_reload()
    assert notice["event"] == "reloaded" and notice["previous"] == old and notice["policy"] == m.version != old
    assert _reason(m) == "v2"


@pytest.mark.parametrize(("text", "line", "column", "kind"), [
    ("def on_exit(event, ctx:\n    return []\n", 2, 5, "syntax"),
    ('load("@enmei", "restart")\ndef on_exit(event, ctx):\n    return [restart(ctx.unit)] + 1\n', 3, 12, "runtime"),
    # a bad decision is located at the handler that returned it
    ('def on_exit(event, ctx):\n    return [{"action": "explode", "unit": ctx.unit.name}]\n', 1, 1, "decision"),
    ("X = 1\nfor i in range(1 << 30):\n    X += i\n", None, None, "steps|time"),
])
def test_a_bad_version_is_rejected_and_the_running_one_stays(running: tuple[PolicyManager, Path], text: str,
                                                             line: int | None, column: int | None, kind: str) -> None:
    m, path = running
    old = m.version
    _write(path, text)
    [notice] = m.check_reload()
    assert notice["event"] == "rejected" and notice["kind"] in kind.split("|") and notice["policy"] == old
    assert (notice["line"], notice["column"]) == (line, column)
    assert f"{old} keeps running" in notice["error"]
    assert m.version == old and _reason(m) == "v1"
    assert m.check_reload() == []  # reported once; not retried until the file changes again
    _write(path, V2)
    assert m.check_reload()[0]["event"] == "reloaded" and _reason(m) == "v2"


def test_a_deleted_file_keeps_the_running_version(running: tuple[PolicyManager, Path]) -> None:
    m, path = running
    path.unlink()
    [notice] = m.check_reload()
    assert notice["event"] == "rejected" and "gone" in notice["error"]
    assert _reason(m) == "v1" and m.check_reload() == []


def test_start_up_is_strict(policy_file: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        PolicyManager(tmp_path / "missing.star", sandbox=InProcessSandbox)
    with pytest.raises(PolicyError, match="fails on a trial on_exit event"):
        PolicyManager(policy_file('def on_exit(event, ctx):\n    fail("always")\n'), sandbox=InProcessSandbox)


def test_no_fallback_means_nothing_is_decided_on_failure(policy_file: Callable[..., Path]) -> None:
    m = PolicyManager(policy_file('def on_exit(event, ctx):\n    fail("x")\n'), sandbox=InProcessSandbox,
                      smoke=False, fallback=None)
    assert m.decide(EXIT, view()) == []
    assert m.drain_notices()[-1]["fallback"] is None


def test_handlers_it_does_not_define_decide_nothing(running: tuple[PolicyManager, Path]) -> None:
    m, _ = running
    assert m.handlers == ["on_exit"]
    assert m.decide(Tick(1000.0, 0.0), view()) == []


class _Quarantine(Remedy):
    # A name no remedy of enmei's has (``isolate`` has been a real one since issue 16).
    name: ClassVar[str] = "quarantine"
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.CLONE})

    def deadline_s(self, unit: UnitControl, args: Any) -> float:
        return 1.0

    async def run(self, unit: UnitControl, args: Any) -> Result:
        return Result.ok()


def test_remedies_registered_later_become_visible(policy_file: Callable[..., Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = ('load("@enmei", "can", "none")\ndef on_exit(event, ctx):\n'
           '    return [none(ctx.unit, str(can(ctx, ctx.unit, "quarantine")))]\n')
    from .common import unit

    m = PolicyManager(policy_file(src), sandbox=InProcessSandbox)
    vm = view(1000.0, unit(backend="qemu", capabilities=frozenset({"stats", "clone"})))
    assert m.decide(EXIT, vm)[0].reason == "False"
    monkeypatch.setitem(REMEDIES, "quarantine", _Quarantine)
    assert m.decide(EXIT, vm)[0].reason == "True"
    assert m.decide(EXIT, view())[0].reason == "False"  # not for units whose backend cannot clone


def test_the_default_library_loads_with_every_handler() -> None:
    m = load_default(sandbox=InProcessSandbox)
    assert m.version.startswith("default@")
    assert m.handlers == ["on_exit", "on_verdict", "on_outcome", "on_tick"]
    assert m.history.horizon_s == 3600.0  # its HISTORY_S
    assert m.check_reload() == []


def test_the_history_carries_over_a_reload(running: tuple[PolicyManager, Path]) -> None:
    m, path = running
    m.decide(EXIT, view())
    _write(path, 'load("@enmei", "decisions", "none")\ndef on_exit(event, ctx):\n'
                 '    return [none(ctx.unit, str(decisions(ctx, ctx.unit, rule = "r1")))]\n')
    assert m.check_reload()[0]["event"] == "reloaded"
    assert _reason(m) == "1"
