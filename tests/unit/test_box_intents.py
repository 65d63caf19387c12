"""``box.intents``: the remedies a crashed supervisor left open, read from a real SQLite journal."""

from __future__ import annotations

from pathlib import Path

from enmei.box import Journal
from enmei.box.intents import interrupted_remedies


def test_a_start_without_its_outcome_is_interrupted_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal(path) as j:
        j.append("remedy.start", "a", {"remedy_id": "a-1", "action": "restart"})
        j.append("remedy.outcome", "a", {"remedy_id": "a-1", "state": "succeeded"})
        j.append("remedy.start", "b", {"remedy_id": "b-3", "action": "rejuvenate"})
        j.append("remedy.start", "a", {"remedy_id": "a-4", "action": "restart"})
        j.append("unit.state", "a", {"to": "running"})
    found = interrupted_remedies(path)
    assert [(r["unit"], r["remedy_id"], r["action"]) for r in found] == [("b", "b-3", "rejuvenate"),
                                                                         ("a", "a-4", "restart")]
    assert found[0]["seq"] < found[1]["seq"]


def test_only_the_lookback_window_is_searched(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal(path) as j:
        j.append("remedy.start", "a", {"remedy_id": "a-1", "action": "restart"})
        for i in range(5):
            j.append("unit.event", "a", {"event": "noise", "i": i})
    assert [r["remedy_id"] for r in interrupted_remedies(path)] == ["a-1"]
    assert interrupted_remedies(path, lookback=3) == []


def test_no_journal_or_not_a_journal_has_none(tmp_path: Path) -> None:
    assert interrupted_remedies(tmp_path / "missing.sqlite") == []
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    assert interrupted_remedies(junk) == []
