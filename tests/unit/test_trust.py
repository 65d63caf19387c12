"""Continuity of the journal: a cut, rolled-back, replaced journal or a deleted key is never continued;
``seal`` starts a new, linked segment and the break stays visible (issue 11 D3, D10, D12)."""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from enmei.box import Anchors, Journal, head_path, verify
from enmei.box.anchor import key_witness_path
from enmei.box.continuity import check_start
from enmei.box.seal import seal
from enmei.errors import IntegrityError


def _anchors(tmp_path: Path, journal: Path, witness: Path | None = None) -> Anchors:
    return Anchors.for_journal(tmp_path / "keys" / "anchor.key", journal, [witness] if witness else [])


def _write(journal: Path, anchors: Anchors, n: int) -> int:
    with Journal(journal, anchors=anchors, anchor_every_s=0.0, head_every_s=0.0) as j:
        for i in range(n):
            j.append("unit.state", "web", {"i": i})
            if i % 5 == 4:
                assert j.flush(10)
    return _last(journal)


def _last(journal: Path) -> int:
    conn = sqlite3.connect(journal)
    try:
        return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0])
    finally:
        conn.close()


def _sql(journal: Path, stmt: str) -> None:
    conn = sqlite3.connect(journal)
    conn.execute(stmt)
    conn.commit()
    conn.close()


def test_a_clean_journal_is_continued(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "journal.sqlite"
    first = _write(journal, _anchors(tmp_path, journal), 12)
    second = _write(journal, _anchors(tmp_path, journal), 12)
    assert second > first
    assert verify(journal, anchors=_anchors(tmp_path, journal)).ok


def test_a_new_journal_gets_a_signed_head_at_once(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "journal.sqlite"
    anchors = _anchors(tmp_path, journal)
    with Journal(journal, anchors=anchors):
        head = anchors.read_head()
        assert head is not None and head.seq == 0  # a crash before the first head no longer looks like a cut


def test_a_cut_journal_is_not_continued_and_stays_cut(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "journal.sqlite"
    _write(journal, _anchors(tmp_path, journal), 30)
    _sql(journal, "DELETE FROM records WHERE seq > 10")
    with pytest.raises(IntegrityError, match=r"records 11 to \d+ are missing.*box seal") as err:
        Journal(journal, anchors=_anchors(tmp_path, journal)).open()
    assert err.value.seq == 11
    assert _last(journal) == 10  # nothing was appended: seq 11 is not reused, the head not re-signed
    res = verify(journal, anchors=_anchors(tmp_path, journal))
    assert not res.ok and res.first_bad == 11


def test_a_journal_whose_wal_was_lost_is_not_continued(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "journal.sqlite"
    anchors = _anchors(tmp_path, journal)
    j = Journal(journal, anchors=anchors, anchor_every_s=0.0, head_every_s=0.0).open()
    try:
        for i in range(20):
            j.append("unit.state", "web", {"i": i})
        assert j.flush(10)
        j.append("unit.state", "web", {"i": 99})  # one more commit: the head now names a record in the WAL
        assert j.flush(10)
        # what a kill -9 then an emptied -wal leaves: the main file as it was before the WAL's records
        copy = tmp_path / "copy"
        copy.mkdir()
        shutil.copyfile(journal, copy / journal.name)
        shutil.copyfile(head_path(journal), head_path(copy / journal.name))
    finally:
        j.close()
    moved = copy / journal.name
    with pytest.raises(IntegrityError, match="missing"):
        Journal(moved, anchors=anchors.for_head(head_path(moved))).open()


def test_a_replaced_journal_is_not_continued(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "journal.sqlite"
    _write(journal, _anchors(tmp_path, journal), 20)
    other = tmp_path / "other" / "journal.sqlite"
    _write(other, _anchors(tmp_path, other), 40)  # same key, another journal: a valid chain of its own
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(other, journal)
    with pytest.raises(IntegrityError, match="rewritten or replaced"):
        check_start(journal, _anchors(tmp_path, journal))


def test_a_journal_and_head_rolled_back_together_are_caught_only_by_a_witness(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "journal.sqlite"
    witness = tmp_path / "elsewhere" / "enmei.witness"
    witness.parent.mkdir()
    _write(journal, _anchors(tmp_path, journal, witness), 14)
    old = tmp_path / "old"
    old.mkdir()
    for f in (journal, head_path(journal)):
        shutil.copyfile(f, old / f.name)
    _write(journal, _anchors(tmp_path, journal, witness), 14)
    for f in (journal, head_path(journal)):
        shutil.copyfile(old / f.name, f)
    Path(f"{journal}-wal").unlink(missing_ok=True)
    Path(f"{journal}-shm").unlink(missing_ok=True)
    # head and anchors alone: consistent, as the issue found
    assert verify(journal, anchors=Anchors.from_files(tmp_path / "keys" / "anchor.key", head_path(journal))).ok
    for w in ([witness], [key_witness_path(tmp_path / "keys" / "anchor.key", journal)]):
        anchors = Anchors.from_files(tmp_path / "keys" / "anchor.key", head_path(journal), witnesses=w)
        res = verify(journal, anchors=anchors)
        assert not res.ok and "witness" in res.reason and "rolled back" in res.reason, res.reason
        with pytest.raises(IntegrityError, match="rolled back"):
            Journal(journal, anchors=anchors).open()


def test_journal_and_head_deleted_are_caught_by_the_witness(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "journal.sqlite"
    _write(journal, _anchors(tmp_path, journal), 10)
    for suffix in ("", "-wal", "-shm", ".head"):
        Path(f"{journal}{suffix}").unlink(missing_ok=True)
    with pytest.raises(IntegrityError, match=r"witness.*ends at 0"):
        Journal(journal, anchors=_anchors(tmp_path, journal)).open()
    assert not journal.exists()


def test_a_deleted_key_is_not_regenerated_for_an_existing_journal(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "journal.sqlite"
    _write(journal, _anchors(tmp_path, journal), 10)
    key = tmp_path / "keys" / "anchor.key"
    key.unlink()
    with pytest.raises(IntegrityError, match=r"anchor key .* is missing"):
        _anchors(tmp_path, journal)
    assert not key.exists()


def test_seal_keeps_the_evidence_and_starts_a_linked_segment(tmp_path: Path) -> None:
    journal = tmp_path / "state" / "journal.sqlite"
    _write(journal, _anchors(tmp_path, journal), 30)
    _sql(journal, "DELETE FROM records WHERE seq > 10")
    res = seal(journal, _anchors(tmp_path, journal), "disk restored from backup")
    assert res.sealed_as is not None and _last(res.sealed_as) == 10
    assert res.body["previous"]["last_seq"] == 10 and res.body["previous"]["verify"]["first_bad"] == 11
    # the evidence verifies as before: still cut
    old = verify(res.sealed_as, anchors=_anchors(tmp_path, journal).for_head(head_path(res.sealed_as)))
    assert not old.ok and old.first_bad == 11
    # the new segment is continued, and reports its seal for as long as it exists
    _write(journal, _anchors(tmp_path, journal), 5)
    new = verify(journal, anchors=_anchors(tmp_path, journal))
    assert new.ok and len(new.sealed) == 1
    assert "disk restored from backup" in new.sealed[0] and "broken at record 11" in new.sealed[0]


def test_a_lagging_head_catches_up_without_another_commit(tmp_path: Path) -> None:
    """The head is rewritten at most every ``head_every_s``; records committed just after it must not
    stay unsigned until some later commit (an idle supervisor may not commit for a long time)."""
    journal = tmp_path / "state" / "journal.sqlite"
    anchors = _anchors(tmp_path, journal)
    with Journal(journal, anchors=anchors, head_every_s=0.3, anchor_every_s=3600.0) as j:
        j.append("unit.state", "web", {"i": 0})
        assert j.flush(10)
        j.append("unit.state", "web", {"i": 1})  # committed while the head is not due yet
        assert j.flush(10)
        target = j.durable_seq
        end = time.monotonic() + 30
        while time.monotonic() < end:
            head = anchors.read_head()
            if head is not None and head.seq == target:
                break
            time.sleep(0.05)
        head = anchors.read_head()
        assert head is not None and head.seq == target


def test_verify_with_witnesses_while_the_journal_is_written(tmp_path: Path) -> None:
    """Witnesses are read before the records (as the head): a journal growing meanwhile is no rollback."""
    journal = tmp_path / "state" / "journal.sqlite"
    anchors = _anchors(tmp_path, journal)
    with Journal(journal, anchors=anchors, head_every_s=0.0, anchor_every_s=0.0) as j:
        for round_ in range(30):
            for i in range(20):
                j.append("unit.state", "web", {"round": round_, "i": i})
            res = verify(journal, workers=1, anchors=anchors)
            assert res.ok, res.reason
