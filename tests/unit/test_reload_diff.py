"""The reload diff (``enmei.engine.reload.diff_configs``): added, removed, changed with dotted keys and how
each change is applied (restart or in place), and the supervisor keys that are never applied live."""

from __future__ import annotations

from pathlib import Path

from enmei.config.load import load_text
from enmei.config.model import Config
from enmei.engine.reload import ConfigDiff, UnitChange, diff_configs


def _cfg(text: str, tmp_path: Path) -> Config:
    return load_text(text, tmp_path / "enmei.toml").config


BASE = '[units.a]\ncommand = ["sleep", "1"]\n[units.b]\ncommand = ["sleep", "2"]\n'


def test_identical_configs_have_an_empty_diff(tmp_path: Path) -> None:
    d = diff_configs(_cfg(BASE, tmp_path), _cfg(BASE, tmp_path))
    assert d == ConfigDiff(unchanged=("a", "b"))
    assert d.empty and d.describe() == "=a =b"


def test_added_removed_and_changed_units(tmp_path: Path) -> None:
    new = ('[units.b]\ncommand = ["sleep", "3"]\nenv = { X = "1" }\n'
           '[units.c]\ncommand = ["sleep", "1"]\n')
    d = diff_configs(_cfg(BASE, tmp_path), _cfg(new, tmp_path))
    assert d.added == ("c",) and d.removed == ("a",) and d.unchanged == ()
    assert d.changed == (UnitChange("b", ("command", "env"), "restart"),)
    assert not d.empty
    assert d.as_dict()["changed"] == {"b": {"keys": ["command", "env"], "how": "restart"}}


def test_probe_detector_and_budget_changes_are_applied_in_place(tmp_path: Path) -> None:
    new = BASE + ('[units.a.restart]\nbudget = 9\n[[units.a.probes]]\nkind = "tcp"\nport = 9\n'
                  '[units.b.detect]\nlatency = false\n')
    d = diff_configs(_cfg(BASE, tmp_path), _cfg(new, tmp_path))
    assert d.changed == (UnitChange("a", ("probes", "restart.budget"), "in_place"),
                         UnitChange("b", ("detect.latency",), "in_place"))


def test_one_key_that_needs_a_restart_makes_the_whole_change_a_restart(tmp_path: Path) -> None:
    new = BASE.replace('command = ["sleep", "1"]', 'command = ["sleep", "1"]\nstop_signal = "INT"\n'
                       '[units.a.restart]\nbudget = 9')
    d = diff_configs(_cfg(BASE, tmp_path), _cfg(new, tmp_path))
    assert d.changed == (UnitChange("a", ("restart.budget", "stop_signal"), "restart"),)


def test_supervisor_changes_are_named_and_not_applied(tmp_path: Path) -> None:
    new = '[supervisor]\ntick_s = 0.5\njournal = "other.sqlite"\n' + BASE
    d = diff_configs(_cfg(BASE, tmp_path), _cfg(new, tmp_path))
    assert d.empty and d.supervisor == ("journal", "tick_s")
    assert d.as_dict()["not_applied"] == {"supervisor.journal": "bound at start: restart enmei to apply it",
                                          "supervisor.tick_s": "bound at start: restart enmei to apply it"}
    assert d.describe().endswith("not applied (restart enmei): supervisor.journal, supervisor.tick_s")
