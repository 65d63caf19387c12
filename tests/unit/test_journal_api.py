"""Both journals keep to ``enmei.box.api``'s protocols (checked at run time here, and statically by mypy
through the annotated assignments), and a DSN is told from a file name."""

from __future__ import annotations

from pathlib import Path

import pytest

from enmei.box.api import JournalReader, JournalWriter, is_dsn
from enmei.box.pgdb import check_dsn, redact
from enmei.box.pgread import PgReader
from enmei.box.pgstore import PgJournal, lock_key
from enmei.box.query import Reader
from enmei.box.store import Journal


def test_sqlite_journal_and_reader_keep_to_the_protocols(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        w: JournalWriter = j
        assert isinstance(w, JournalWriter)
        w.append("k", "u", {"a": 1})
        assert w.flush(10)
    with Reader(tmp_path / "j.sqlite") as r:
        reader: JournalReader = r
        assert isinstance(reader, JournalReader) and reader.count() == 1


def test_postgres_journal_and_reader_have_every_method_of_the_protocols() -> None:
    # Without a server: the classes themselves (an instance needs a connection, see tests/integration/fleet).
    for proto, cls in ((JournalWriter, PgJournal), (JournalReader, PgReader)):
        missing = [name for name in vars(proto) if not name.startswith("_") and not hasattr(cls, name)]
        assert not missing, (cls, missing)


def test_dsn_checks() -> None:
    assert is_dsn("postgresql://u@h/db") and is_dsn("postgres://h") and not is_dsn("journal.sqlite")
    assert check_dsn("postgresql://enmei@127.0.0.1:5432/enmei")
    for bad, why in (("postgresql://h:99999/x", "out of range"), ("postgresql:///x", "names no host"),
                     ("postgresql://h:port/x", "not a PostgreSQL URL")):
        with pytest.raises(ValueError, match=why):
            check_dsn(bad)
    assert redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert lock_key("a") != lock_key("b") and 0 < lock_key("a") < 1 << 63


def test_a_bad_journal_url_is_a_config_error_naming_the_key_and_line(tmp_path: Path) -> None:
    from enmei.config.load import load_text
    from enmei.errors import ConfigError

    text = '[supervisor]\nstate_dir = "s"\njournal = "postgresql://db.example:70000/enmei"\n'
    with pytest.raises(ConfigError) as info:
        load_text(text, tmp_path / "enmei.toml")
    err = info.value
    assert err.key == "supervisor.journal" and err.line == 3 and "out of range" in str(err)
    ok = load_text('[supervisor]\njournal = "postgresql://enmei@127.0.0.1:5432/enmei"\nhost = "h1"\n',
                   tmp_path / "enmei.toml")
    assert ok.journal_dsn is not None and ok.host_name == "h1" and ok.journal_path.name == "journal.spool"
    plain = load_text("[supervisor]\n", tmp_path / "enmei.toml")
    assert plain.journal_dsn is None and plain.journal_path.name == "journal.sqlite"
