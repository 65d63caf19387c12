"""The crossing into Starlark and back."""

from __future__ import annotations

import inspect
import json
import math
from types import ModuleType

import pytest

from enmei.bench import policy as bench_policy
from enmei.model import Severity, Verdict, VerdictKind
from enmei.policy import (
    actions,
    base,
    core,
    encode,
    failure,
    history,
    manager,
    program,
    replay,
    rules,
    sandbox,
    scenario,
)
from enmei.policy.core import EvalFailure
from enmei.policy.encode import UNIT_FIELDS, decisions_from, event_row, payload, plain, unit_row

from .common import UNIT, unit, view


def test_unit_fields_are_the_views_fields_in_order() -> None:
    assert tuple(UNIT.as_dict()) == UNIT_FIELDS
    assert dict(zip(UNIT_FIELDS, unit_row(UNIT), strict=True)) == UNIT.as_dict()


def test_plain_bounds_what_a_policy_sees() -> None:
    assert plain(math.inf) == 1e308 and plain(-math.inf) == -1e308 and plain(math.nan) is None
    assert len(plain("x" * 5000)) == 512
    assert len(plain(list(range(100)))) == 32
    assert plain({"a": {"b": {"c": {"d": 1}}}}) == {"a": {"b": {"c": None}}}
    assert plain({1: object()})["1"].startswith("<object")


def test_payload_is_json_even_with_non_finite_evidence() -> None:
    v = Verdict("api", "aging", VerdictKind.AGING, Severity.WARNING, 1.0, "x", {"exhaust_in_s": math.inf})
    text = payload("on_verdict", v, view(), "{}")
    data = json.loads(text)  # strict JSON: no Infinity or NaN tokens
    assert "Infinity" not in text and data[2] == [*event_row(v)[:6], {"exhaust_in_s": 1e308}]


def test_decisions_without_unit_checks_for_trial_runs() -> None:
    text = json.dumps([{"action": "restart", "unit": "ghost", "args": {}}])
    with pytest.raises(EvalFailure, match="unknown unit 'ghost'"):
        decisions_from(text, view(), policy="p", handler="on_exit")
    [d] = decisions_from(text, view(), policy="p", handler="on_exit", check_units=False)
    assert (d.unit, d.rule, d.reason, d.policy) == ("ghost", "on_exit", "on_exit", "p")


@pytest.mark.parametrize("module", [core, encode, history, manager, program, replay, rules, sandbox, scenario,
                                    bench_policy, base, failure, actions])
def test_all_names_exactly_what_the_module_defines(module: ModuleType) -> None:
    for export in module.__all__:
        obj = getattr(module, export)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == module.__name__, export
    defined = {n for n, v in vars(module).items()
               if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v))
               and v.__module__ == module.__name__}
    assert defined <= set(module.__all__), defined - set(module.__all__)


def test_the_hand_written_unit_json_is_the_unit_row() -> None:
    from enmei.policy.encode import _unit_json

    odd = unit(name='we"ird\\name', uptime_s=math.inf, rejuvenate_every_s=None, remedy="restart",
               capabilities=frozenset({"b", "a"}))
    for u in (UNIT, odd, unit(alive=False, uptime_s=None, next_delay_s=math.nan)):
        assert json.loads(_unit_json(u)) == json.loads(json.dumps(plain(unit_row(u))))
