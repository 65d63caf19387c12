"""Anchors catch what a chain alone cannot: a cut tail and a tail rewritten with recomputed hashes."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from enmei.box import GENESIS, Anchors, Journal, chain_hash, head_path, verify
from enmei.errors import BoxError


def _journal(tmp_path: Path, n: int = 40, anchor_every_s: float = 0.0) -> tuple[Path, Anchors]:
    path = tmp_path / "j.sqlite"
    anchors = Anchors.from_files(tmp_path / "anchor.key", head_path(path))
    with Journal(path, anchors=anchors, anchor_every_s=anchor_every_s, head_every_s=0.0) as j:
        for i in range(n):
            j.append("unit.state", "web", {"i": i})
            if i % 10 == 9:
                assert j.flush(5)
    return path, anchors


def test_key_is_private_and_reused(tmp_path: Path) -> None:
    a = Anchors.from_files(tmp_path / "k", tmp_path / "h")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    b = Anchors.from_files(tmp_path / "k", tmp_path / "h")
    assert a.sign(1, b"x" * 32) == b.sign(1, b"x" * 32)
    with pytest.raises(BoxError, match="no anchor key"):
        Anchors.from_files(tmp_path / "missing", tmp_path / "h", create=False)


def test_clean_journal_verifies_with_anchors(tmp_path: Path) -> None:
    path, anchors = _journal(tmp_path)
    res = verify(path, anchors=anchors)
    assert res.ok, res.reason
    conn = sqlite3.connect(path)
    n_anchor = conn.execute("SELECT COUNT(*) FROM records WHERE kind='anchor'").fetchone()[0]
    conn.close()
    assert n_anchor >= 2  # periodic ones and the one at close
    head = anchors.read_head()
    assert head is not None and head.seq == res.last_seq


def test_cut_tail_is_caught_only_with_anchors(tmp_path: Path) -> None:
    path, anchors = _journal(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM records WHERE seq > 30")
    conn.commit()
    conn.close()
    assert verify(path).ok  # the chain alone cannot see it
    res = verify(path, anchors=anchors)
    assert not res.ok and res.first_bad == 31 and "the journal was cut" in res.reason


def _rewrite_from(path: Path, start: int, keep_anchors: bool = True) -> None:
    """What an attacker with write access but no key can do: change a record and recompute the chain."""
    conn = sqlite3.connect(path)
    if not keep_anchors:
        conn.execute("DELETE FROM records WHERE kind='anchor' AND seq >= ?", (start,))
        rows = conn.execute("SELECT seq FROM records WHERE seq >= ? ORDER BY seq", (start,)).fetchall()
        for new, (old,) in enumerate(rows, start=start):
            conn.execute("UPDATE records SET seq = ? WHERE seq = ?", (new, old))
    prev = bytes(conn.execute("SELECT hash FROM records WHERE seq = ?", (start - 1,)).fetchone()[0]) \
        if start > 1 else GENESIS
    rows = conn.execute("SELECT seq, wall_ns, mono_ns, kind, unit, body FROM records WHERE seq >= ? ORDER BY seq",
                        (start,)).fetchall()
    for seq, wall, mono, kind, unit, old_body in rows:
        body = json.dumps({"i": 999}) if seq == start else old_body
        h = chain_hash(prev, seq, wall, mono, kind, unit, body)
        conn.execute("UPDATE records SET body=?, prev=?, hash=? WHERE seq=?", (body, prev, h, seq))
        prev = h
    conn.commit()
    conn.close()


@pytest.mark.parametrize("keep_anchors", [True, False])
def test_rewritten_tail_with_recomputed_hashes_is_caught(tmp_path: Path, keep_anchors: bool) -> None:
    path, anchors = _journal(tmp_path)
    _rewrite_from(path, 25, keep_anchors)
    assert verify(path).ok  # consistent chain
    res = verify(path, anchors=anchors)
    assert not res.ok
    if keep_anchors:
        assert "rewritten" in res.reason and res.first_bad is not None and res.first_bad <= 25
    else:  # the anchors after the change were removed too: the journal is shorter than its signed head
        assert "was cut" in res.reason and "the last one an anchor still signs" in res.reason
        m = re.search(r"records after (\d+)", res.reason)
        assert m is not None and int(m.group(1)) < 25


def test_missing_or_forged_head_is_caught(tmp_path: Path) -> None:
    path, anchors = _journal(tmp_path)
    hp = head_path(path)
    data = json.loads(hp.read_text())
    data["seq"] -= 1
    hp.write_text(json.dumps(data))
    assert "invalid signature" in verify(path, anchors=anchors).reason
    hp.unlink()
    assert "head file" in verify(path, anchors=anchors).reason
