"""``after`` / ``requires`` (issue 12 item 6): config errors at file:line:key (unknown names, a unit
naming itself, cycles) and the order's answers (``enmei.engine.order.Order``) over plain unit views."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from enmei.config.load import check, load_text
from enmei.config.model import dependency_cycle
from enmei.engine.order import Order
from enmei.model import Health, UnitState


def _unit(name: str, extra: str = "") -> str:
    return f'[units.{name}]\ncommand = ["sleep", "1"]\n{extra}'


def _problems(tmp_path: Path, text: str) -> list[str]:
    cfg = tmp_path / "enmei.toml"
    cfg.write_text(text)
    return [str(p) for p in check(cfg)]


def test_unknown_names_and_self_are_errors_at_their_key_and_line(tmp_path: Path) -> None:
    text = _unit("db") + _unit("web", 'after = ["db", "cache"]\nrequires = ["web"]\n')
    found = _problems(tmp_path, text)
    cfg = tmp_path / "enmei.toml"
    assert found == [f"{cfg}:5: units.web.after[1]: 'cache' names no unit (units: db, web)",
                     f"{cfg}:6: units.web.requires[0]: unit web cannot be require itself"]


def test_a_cycle_is_an_error_naming_it(tmp_path: Path) -> None:
    text = _unit("a", 'after = ["b"]\n') + _unit("b", 'requires = ["c"]\n') + _unit("c", 'after = ["a"]\n')
    found = _problems(tmp_path, text)
    assert found == [f"{tmp_path / 'enmei.toml'}:3: units.a.after[0]: a dependency cycle: a -> b -> c -> a"]


def test_good_dependencies_load(tmp_path: Path) -> None:
    cfg = load_text(_unit("web", 'after = ["db"]\nrequires = ["cache"]\n') + _unit("db") + _unit("cache"),
                    tmp_path / "enmei.toml").config
    order = Order.of(cfg.units)
    assert order.after["web"] == ("db", "cache") and order.requires["web"] == ("cache",)
    assert order.start_order() == ["db", "cache", "web"]
    assert order.dependents("db") == ("web",) and order.stop_after("cache") == ("web",)


@pytest.mark.parametrize(("edges", "cycle"), [
    ({"a": ["a"]}, ["a", "a"]),
    ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
    ({"x": [], "a": ["b"], "b": ["c"], "c": ["b"]}, ["b", "c", "b"]),
    ({"a": ["b", "c"], "b": ["c"], "c": []}, None),
    ({"a": ["missing"]}, None),
])
def test_dependency_cycle(edges: dict[str, list[str]], cycle: list[str] | None) -> None:
    assert dependency_cycle(edges) == cycle


@dataclass
class View:
    state: UnitState
    health: Health = Health.OK
    busy: bool = False


def test_a_start_waits_for_what_it_is_after_until_that_is_running(tmp_path: Path) -> None:
    cfg = load_text(_unit("web", 'after = ["db"]\n') + _unit("db"), tmp_path / "enmei.toml").config
    order = Order.of(cfg.units)
    units = {"web": View(UnitState.PENDING), "db": View(UnitState.STARTING, busy=True)}
    assert order.blocking_start("web", units, attempted=set()) == ["db"]
    units["db"] = View(UnitState.RUNNING)
    assert order.blocking_start("web", units, attempted={"db"}) == []
    # after orders, it does not require: a db whose first attempt failed and is not being repaired
    # does not hold web back...
    units["db"] = View(UnitState.EXITED)
    assert order.blocking_start("web", units, attempted={"db"}) == []
    # ...but one in a restart's backoff does, and so does one not attempted yet.
    units["db"] = View(UnitState.EXITED, busy=True)
    assert order.blocking_start("web", units, attempted={"db"}) == ["db"]
    assert order.blocking_start("web", {"web": units["web"], "db": View(UnitState.STOPPED)}, set()) == ["db"]


def test_requires_waits_until_running_and_says_when_a_dependency_is_down(tmp_path: Path) -> None:
    cfg = load_text(_unit("web", 'requires = ["db"]\n') + _unit("db"), tmp_path / "enmei.toml").config
    order = Order.of(cfg.units)
    down = {"web": View(UnitState.PENDING), "db": View(UnitState.EXITED)}
    assert order.blocking_start("web", down, attempted={"db"}) == ["db"]
    assert order.down_required("web", down) == ["db"]
    assert order.down_required("web", {"db": View(UnitState.RUNNING, Health.FAILING)}) == ["db"]
    assert order.down_required("web", {"db": View(UnitState.STARTING)}) == ["db"]
    # A remedy that leaves it running (a rejuvenation waiting for a quiet moment) is not "down".
    assert order.down_required("web", {"db": View(UnitState.RUNNING, Health.OK, busy=True)}) == []
    assert order.down_required("db", down) == []
