"""Hostile and broken policies: each fails with a clear, located error, is journaled as a notice, and the
running policy (or the fallback for that event) goes on. Memory bombs need the sandbox process: see
tests/integration/policy/test_sandbox_process.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from enmei.errors import PolicyError
from enmei.model import UnitEvent, UnitEventKind
from enmei.policy.core import Limits
from enmei.policy.manager import PolicyManager
from enmei.policy.sandbox import InProcessSandbox

from .common import view

EXIT = UnitEvent("api", UnitEventKind.EXITED, 1000.0, {"code": 1})
OK = 'load("@enmei", "restart")\ndef on_exit(event, ctx):\n    return [restart(ctx.unit, why = "ok")]\n'


def _fails_on_exit(make: Callable[..., PolicyManager], body: str, **kw: object) -> dict[str, object]:
    """Run a policy whose on_exit does ``body``; return its error notice (and check the fallback acted)."""
    m = make(f'load("@enmei", "restart", "remedy", "alert")\ndef on_exit(event, ctx):\n{body}\n', smoke=False, **kw)
    m.drain_notices()
    decided = m.decide(EXIT, view())
    assert [(d.action, d.policy) for d in decided] == [("restart", "builtin-1")]  # the fallback
    notices = m.drain_notices()
    assert len(notices) == 1 and notices[0]["event"] == "error", notices
    assert notices[0]["handler"] == "on_exit" and notices[0]["unit"] == "api"
    assert notices[0]["fallback"] == "builtin-1" and notices[0]["fallback_decisions"] == ["restart"]
    return notices[0]


def test_syntax_error_names_line_and_column(policy_file: Callable[..., Path]) -> None:
    path = policy_file("def on_exit(event, ctx):\n    return [1 +]\n")
    with pytest.raises(PolicyError) as err:
        PolicyManager(path, sandbox=InProcessSandbox)
    assert (err.value.file, err.value.line, err.value.column) == (str(path), 2, 16)
    assert str(err.value).startswith(f"{path}:2:16: Parse error")


def test_unknown_name_is_found_at_load(policy_file: Callable[..., Path]) -> None:
    path = policy_file("def on_exit(event, ctx):\n    return [restrat(ctx.unit)]\n")
    with pytest.raises(PolicyError) as err:
        PolicyManager(path, sandbox=InProcessSandbox, smoke=False)
    assert err.value.line == 2 and "restrat" in str(err.value)


@pytest.mark.parametrize(("source", "needle"), [
    ('load("os", "system")\n', "only enmei's modules"),
    ('load("@enmei", "_name")\n', "private symbol"),
    ('load("@enmei", "nope")\n', "no symbol"),
    ("HISTORY_S = -1\n", "HISTORY_S must be a positive number"),
])
def test_bad_loads_and_settings_are_rejected(policy_file: Callable[..., Path], source: str, needle: str) -> None:
    with pytest.raises(PolicyError) as err:
        PolicyManager(policy_file(source), sandbox=InProcessSandbox, smoke=False)
    assert needle in str(err.value)


def test_runtime_error_is_located_and_the_fallback_acts(manager: Callable[..., PolicyManager]) -> None:
    notice = _fails_on_exit(manager, '    return [restart(ctx.unit, delay_s = 1 / 0)]')
    assert notice["kind"] == "runtime" and notice["line"] == 3 and notice["column"] == 41
    assert "division by zero" in str(notice["error"])


def test_endless_loop_is_stopped_by_the_step_limit(manager: Callable[..., PolicyManager]) -> None:
    t0 = time.monotonic()
    notice = _fails_on_exit(manager, "    n = 0\n    for i in range(1 << 30):\n        n += i\n    return []",
                            limits=Limits(max_steps=200_000, time_s=5.0))
    assert notice["kind"] == "steps" and "200,000 steps" in str(notice["error"])
    assert time.monotonic() - t0 < 2.0


def test_slow_evaluation_is_stopped_by_the_time_limit(manager: Callable[..., PolicyManager]) -> None:
    t0 = time.monotonic()
    notice = _fails_on_exit(manager, "    n = 0\n    for i in range(1 << 30):\n        n += i\n    return []",
                            limits=Limits(max_steps=10**12, time_s=0.05))
    assert notice["kind"] == "time" and "0.05s" in str(notice["error"])
    assert time.monotonic() - t0 < 1.0


def test_endless_loop_at_top_level_is_stopped_at_load(policy_file: Callable[..., Path]) -> None:
    path = policy_file("N = 0\nfor i in range(1 << 30):\n    N += i\n")
    with pytest.raises(PolicyError) as err:
        PolicyManager(path, sandbox=InProcessSandbox, limits=Limits(max_steps=100_000))
    assert getattr(err.value, "kind", None) == "steps"


def test_deep_recursion_is_stopped(manager: Callable[..., PolicyManager]) -> None:
    m = manager("def f(n):\n    return f(n + 1)\ndef on_exit(event, ctx):\n    return f(0)\n", smoke=False)
    m.decide(EXIT, view())
    notice = m.drain_notices()[-1]
    assert notice["event"] == "error" and "stack overflow" in str(notice["error"]) and notice["line"] == 2


@pytest.mark.parametrize(("body", "needle"), [
    ('    return [remedy("reboot_universe", ctx.unit)]', "no action or remedy named 'reboot_universe'"),
    ('    return [restart("nobody")]', "restart for unknown unit 'nobody'"),
    ('    return [restart(ctx.unit, delay_s = "soon")]', "'delay_s' must be int or float"),
    ('    return [alert(ctx.unit, "x", severity = "apocalyptic")]', "alert takes only severity"),
    ('    return [{"action": "restart", "unit": "api", "when": 3}]', "unknown key 'when'"),
    ("    return 42", "must return a list of decisions"),
    ("    return [ctx.unit]", "not a decision"),
    ('    return [restart(ctx.unit)] * 40', "at most 32"),
    ('    return [remedy("restart", ctx.unit, at = "now")]', "at must be a time"),
    ("    return [struct(x = on_exit)]", "not data"),
])
def test_malformed_decisions_are_rejected(manager: Callable[..., PolicyManager], body: str, needle: str) -> None:
    notice = _fails_on_exit(manager, body)
    assert needle in str(notice["error"]), notice["error"]


def test_a_result_past_the_size_limit_is_rejected(manager: Callable[..., PolicyManager]) -> None:
    notice = _fails_on_exit(manager, '    return [alert(ctx.unit, "x" * 100000)]')
    assert notice["kind"] == "result" and "limit" in str(notice["error"])


def test_policies_cannot_keep_state_in_globals(manager: Callable[..., PolicyManager]) -> None:
    m = manager("SEEN = []\ndef on_exit(event, ctx):\n    SEEN.append(1)\n    return []\n", smoke=False)
    m.decide(EXIT, view())
    notice = m.drain_notices()[-1]
    assert notice["event"] == "error" and "Immutable" in str(notice["error"])


def test_repeated_failures_are_noticed_once_a_minute_with_a_count(manager: Callable[..., PolicyManager]) -> None:
    m = manager('def on_exit(event, ctx):\n    fail("broken")\n', smoke=False)
    m.drain_notices()
    for t in range(0, 70, 10):
        m.decide(EXIT, view(1000.0 + t))
    notices = m.drain_notices()
    assert len(notices) == 2 and notices[1]["repeated"] == 5
    assert "broken" in str(notices[0]["error"])


def test_the_running_policy_is_unchanged_after_failures(manager: Callable[..., PolicyManager]) -> None:
    m = manager(OK + 'def on_verdict(v, ctx):\n    fail("nope")\n', smoke=False)
    version = m.version
    from enmei.model import Severity, Verdict, VerdictKind

    m.decide(Verdict("api", "t", VerdictKind.ANOMALY, Severity.WARNING, 1000.0, "slow", {}), view())
    assert m.version == version
    assert [(d.action, d.reason, d.policy) for d in m.decide(EXIT, view())] == [("restart", "ok", version)]
