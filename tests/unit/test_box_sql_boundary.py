"""The journal's SQL lives in ``enmei.box`` only (issue 10 item 6), checked statically (``ast``).

Outside ``enmei/box/`` no module may import ``sqlite3`` (at module level or inside a function) nor hold
a string that is SQL against the journal's tables (``records``, ``samples``): such a query belongs
behind a named, typed, documented function of ``enmei.box`` (its ``Reader``), which raises ``BoxError``.

The one exception is ``enmei/bench/tamper.py``: it is the *attacker* of ``enmei bench tamper``, which
edits the journal file behind the hash chain's back, so it must write raw SQL (and use ``sqlite3``
directly, bypassing box) to tamper — going through box would defeat its purpose.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import enmei

SRC = Path(enmei.__file__).parent

#: Modules outside box allowed to speak SQL to the journal, each with its reason.
ALLOWED = {
    "bench/tamper.py": "the attacker: it edits the journal's rows behind box's back to test tamper evidence",
}

# SQL keywords are upper case in this code base; prose ("records from a window") is not matched.
_SQL = re.compile(r"\b(FROM|INTO|UPDATE|JOIN|TABLE)\s+(records|samples)\b")


def violations(root: Path) -> list[str]:
    """``path:line: what`` for every sqlite3 import and journal SQL string outside ``root/box``."""
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("box/") or rel in ALLOWED:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "sqlite3":
                        out.append(f"{rel}:{node.lineno}: imports sqlite3")
            elif isinstance(node, ast.ImportFrom):
                if (node.module or "").split(".")[0] == "sqlite3":
                    out.append(f"{rel}:{node.lineno}: imports from sqlite3")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL.search(node.value):
                out.append(f"{rel}:{node.lineno}: SQL on the journal: {node.value[:60]!r}")
    return out


def test_no_journal_sql_outside_box() -> None:
    found = violations(SRC)
    assert not found, "the journal's SQL belongs in enmei.box:\n" + "\n".join(found)


def test_the_allowed_exception_is_still_needed() -> None:
    # An allowance that no longer applies is removed, so the list cannot go stale.
    for rel in ALLOWED:
        text = (SRC / rel).read_text(encoding="utf-8")
        assert "sqlite3" in text and _SQL.search(text), f"{rel} no longer needs its SQL allowance"


def test_the_check_finds_what_it_forbids(tmp_path: Path) -> None:
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "ok.py").write_text('import sqlite3\nQ = "SELECT 1 FROM records"\n')
    (tmp_path / "lazy.py").write_text("def f():\n    import sqlite3\n")
    (tmp_path / "fstr.py").write_text('def g(w):\n    return f"SELECT COUNT(*) FROM samples WHERE {w}"\n')
    (tmp_path / "prose.py").write_text('"""Reads records from the journal, samples from a window."""\n')
    found = violations(tmp_path)
    assert [f.split(":")[0] for f in found] == ["fstr.py", "lazy.py"]
