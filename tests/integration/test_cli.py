"""The enmei command as a user runs it: exit codes, messages, box tools."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from enmei.box import Journal

from .conftest import enmei

pytestmark = pytest.mark.integration


def test_check_reports_problems_with_exit_code_3(tmp_path: Path) -> None:
    cfg = tmp_path / "enmei.toml"
    cfg.write_text('[units.a]\ncommand = ["no-such-cmd-enmei"]\n')
    r = enmei("check", str(cfg))
    assert r.returncode == 3
    assert f"{cfg}:2: units.a.command: command 'no-such-cmd-enmei' is not on PATH" in r.stderr.replace("\n", "")


def test_check_ok(tmp_path: Path) -> None:
    cfg = tmp_path / "enmei.toml"
    cfg.write_text('[units.a]\ncommand = ["/bin/sleep", "1"]\n')
    r = enmei("check", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout and "1 unit" in r.stdout


def test_up_with_a_bad_config_exits_3_without_starting_anything(tmp_path: Path) -> None:
    cfg = tmp_path / "enmei.toml"
    cfg.write_text("[units.a\n")
    r = enmei("up", str(cfg))
    assert r.returncode == 3 and "not valid TOML" in r.stderr
    assert not (tmp_path / ".enmei").exists()


def test_usage_error_exits_2() -> None:
    assert enmei("no-such-command").returncode == 2


def _journal(tmp_path: Path, n: int = 30) -> Path:
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        for i in range(n):
            j.append("unit.state", "web", {"i": i})
        j.flush()
    return path


def test_box_verify_names_the_record_after_a_byte_changes(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    ok = enmei("box", "verify", "-j", str(path), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["records"] == 30
    conn = sqlite3.connect(path)
    conn.execute("UPDATE records SET body = replace(body, '12', '13') WHERE seq = 13")
    conn.commit()
    conn.close()
    bad = enmei("box", "verify", "-j", str(path))
    assert bad.returncode == 4
    assert "BROKEN at record 13" in bad.stdout


def test_box_tail_show_export(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    tail = enmei("box", "tail", "-j", str(path), "-n", "3")
    assert tail.returncode == 0 and tail.stdout.count("unit.state") == 3
    show = enmei("box", "show", "5", "-j", str(path))
    assert show.returncode == 0 and json.loads(show.stdout)["body"] == {"i": 4}
    out = tmp_path / "x.jsonl"
    exp = enmei("box", "export", "--jsonl", "-o", str(out), "-j", str(path))
    assert exp.returncode == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, 31)) and len(lines[0]["hash"]) == 64
    missing = enmei("box", "show", "99", "-j", str(path))
    assert missing.returncode == 1 and "no record 99" in missing.stderr


def test_box_stats_counts_records_by_kind_and_unit(tmp_path: Path) -> None:
    path = _journal(tmp_path)
    with Journal(path) as j:
        j.append("alert", None, {"message": "x"})
        j.flush()
    r = enmei("box", "stats", "-j", str(path))
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if "alert" in line or "unit.state" in line]
    assert [[c for c in row if c not in "│┃|"] for row in rows] == [["alert", "-", "1"], ["unit.state", "web", "30"]]


def test_box_on_a_missing_journal_is_a_clear_error(tmp_path: Path) -> None:
    r = enmei("box", "verify", "-j", str(tmp_path / "none.sqlite"))
    assert r.returncode == 5 and "no journal here" in r.stderr


def test_bench_box_prints_its_figures(tmp_path: Path) -> None:
    r = enmei("bench", "box", "--json", "--records", "20000")
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    assert figures["records"] == 20000 and figures["append_per_s"] > 0 and figures["verify_per_s"] > 0
