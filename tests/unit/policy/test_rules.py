"""Declarative rules: compiled to the same decisions; mistakes named by line."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from enmei.errors import PolicyError
from enmei.model import Outcome, RemedyState, Severity, UnitEvent, UnitEventKind, Verdict, VerdictKind
from enmei.policy.manager import PolicyManager
from enmei.policy.rules import compile_rules

from .common import unit, view

Make = Callable[..., PolicyManager]

SLOW = """
[policy]
otherwise = "default"

[[rules]]
id = "api-slow"
on = "verdict"
kind = "anomaly"
unit = "api"
times = 3
within_s = 600
do = "restart"
args = { delay_s = 0 }
max = 2
per_s = 3600
then = "escalate"
then_args = { retry_in_s = 900 }
"""


def _anomaly(t: float, name: str = "api") -> Verdict:
    return Verdict(name, "charts", VerdictKind.ANOMALY, Severity.WARNING, t, "slow", {"probe": "http"})


def test_n_times_in_w_then_at_most_k_then_escalate(manager: Make) -> None:
    m = manager(SLOW, name="rules.toml")
    assert m.version.startswith("rules@")
    got = []
    for i in range(9):
        t = 1000.0 + 60 * i
        got.append([(d.action, d.rule) for d in m.decide(_anomaly(t), view(t))])
    assert got[:2] == [[], []]  # below 3 in 600 s
    assert got[2] == [("restart", "api-slow")]
    assert got[3] == [("restart", "api-slow")]
    assert got[4] == [("escalate", "api-slow/then")]
    assert m.decide(_anomaly(1000.0), view(1000.0))  # sanity: still deciding


def test_what_no_rule_matches_goes_to_the_default_library(manager: Make) -> None:
    m = manager(SLOW, name="rules.toml")
    other = unit(name="db")
    d = m.decide(_anomaly(1000.0, "db"), view(1000.0, other))
    assert [(x.action, x.rule) for x in d] == [("monitor", "anomaly-watch")]
    exit_ = UnitEvent("api", UnitEventKind.EXITED, 1000.0, {"code": 1})
    assert m.decide(exit_, view(1000.0))[0].rule == "exit-restart"


def test_fallthrough_adds_to_the_default_and_limits_alert_when_spent(manager: Make) -> None:
    m = manager("""
[policy]
otherwise = "default"
[[rules]]
id = "page-on-crash"
on = "exit"
do = "alert"
args = { severity = "critical" }
why = "crashed"
max = 1
per_s = 3600
fallthrough = true
""", name="r.toml")
    down = unit(alive=False)
    first = m.decide(UnitEvent("api", UnitEventKind.EXITED, 1000.0, {"code": 1}), view(1000.0, down))
    assert [(d.action, d.rule) for d in first] == [("alert", "page-on-crash"), ("restart", "exit-restart")]
    assert first[0].reason.startswith("crashed: exited with code 1")
    second = m.decide(UnitEvent("api", UnitEventKind.EXITED, 1100.0, {"code": 1}), view(1100.0, down))
    assert [(d.action, d.rule) for d in second] == [("alert", "page-on-crash/spent"), ("restart", "exit-restart")]


def test_outcome_rules_and_otherwise_none(manager: Make) -> None:
    m = manager("""
[policy]
otherwise = "none"
[[rules]]
id = "stuck"
on = "outcome"
remedy = ["restart", "start"]
state = "timed_out"
do = "stop"
""", name="r.toml")
    assert m.handlers == ["on_outcome"]
    timed = Outcome("api-1", "api", "restart", RemedyState.TIMED_OUT, 990.0, 1000.0, "slow", {})
    assert [(d.action, d.rule) for d in m.decide(timed, view())] == [("stop", "stuck")]
    failed = Outcome("api-2", "api", "restart", RemedyState.FAILED, 990.0, 1000.0, "no", {})
    assert m.decide(failed, view()) == []


@pytest.mark.parametrize(("text", "line", "needle"), [
    ("[[rules]]\nid = 'x'\non = 'verdict'\ndo = 'restart'\nargs = { delay_s = \n", 5, "TOML"),
    ("[[rules]]\nid = 'x'\non = 'verdict'\ndo = 'reboot_everything'\n", 4, "no such action"),
    ("[[rules]]\nid = 'x'\non = 'verdict'\ndo = 'restart'\nargs = { delay = 1 }\n", 5, "takes no argument 'delay'"),
    ("[[rules]]\nid = 'x'\non = 'sometimes'\ndo = 'restart'\n", 3, "on must be"),
    ("[[rules]]\nid = 'x'\non = 'verdict'\ndo = 'restart'\ncolour = 'red'\n", 5, "unknown key 'colour'"),
    ("[[rules]]\nid = 'x'\non = 'verdict'\ntimes = 3\ndo = 'restart'\n", 4, "needs within_s"),
    ("[[rules]]\nid = 'x'\non = 'verdict'\ndo = 'restart'\nmax = 100\n", 5, "from 1 to 16"),
    ("[[rules]]\nid = 'x'\non = 'exit'\ndo = 'alert'\n\n[[rules]]\nid = 'x'\non = 'exit'\ndo = 'alert'\n", 7,
     "used twice"),
    ("[[rules]]\nid = 'x'\non = 'exit'\nseverity = 'critical'\ndo = 'alert'\n", 4, "verdict rules only"),
    ("[[rules]]\nid = 'x'\non = 'exit'\ndo = 'alert'\nargs = { severity = 'loud' }\n", 5, "only severity"),
])
def test_mistakes_name_their_line(text: str, line: int, needle: str) -> None:
    with pytest.raises(PolicyError) as err:
        compile_rules(text, "r.toml")
    assert err.value.line == line, str(err.value)
    assert needle in str(err.value) and str(err.value).startswith(f"r.toml:{line}")


def test_otherwise_takes_only_default_or_none() -> None:
    with pytest.raises(PolicyError, match="otherwise"):
        compile_rules('[policy]\notherwise = "restart"\n', "r.toml")
