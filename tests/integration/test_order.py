"""Issue 12 item 6, ``after`` / ``requires``, run with a real ``enmei up``: a unit after another starts
only once that one is up (its start-up probe passed) and stops before it; a killed dependency is not
blamed on its dependent (no restart of it: the journal says it waits for the dependency). Both fail on
the old code: it started and stopped every unit at once, and judged the dependent's probe failures."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import psutil
import pytest

from .conftest import PY, Procs, wait_until

pytestmark = pytest.mark.integration


def _records(journal: Path) -> list[tuple[int, str, str | None, dict[str, object]]]:
    try:
        conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        return [(int(s), str(k), u, json.loads(b)) for s, k, u, b in
                conn.execute("SELECT seq, kind, unit, body FROM records ORDER BY seq")]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def _pids(state: Path) -> dict[str, int]:
    try:
        return {n: int(u["pid"]) for n, u in json.loads((state / "units.json").read_text())["units"].items()}
    except (OSError, ValueError, KeyError):
        return {}


def _up(procs: Procs, tmp: Path, text: str) -> subprocess.Popen[bytes]:
    cfg = tmp / "enmei.toml"
    cfg.write_text(text)
    with open(tmp / "up.log", "wb") as out:
        return procs.popen([PY, "-m", "enmei", "up", "--plain", str(cfg)], stdout=out, stderr=subprocess.STDOUT)


def _first(records: list[tuple[int, str, str | None, dict[str, object]]], unit: str, kind: str,
           **match: object) -> int:
    return next(s for s, k, u, b in records if u == unit and k == kind and all(b.get(x) == v for x, v in match.items()))


# db is up 1.5 s after its start (its marker file); its start-up probe waits for the marker.
DB = '''[units.db]
command = ["sh", "-c", "rm -f {d}/db.ready; sleep 1.5; echo $$ > {d}/db.ready; exec sleep 300"]
start_s = 0.2
stop_timeout_s = 5
startup_probe = "ready"
startup_timeout_s = 60
[[units.db.probes]]
kind = "exec"
name = "ready"
command = ["sh", "-c", "kill -0 $(cat {d}/db.ready)"]
interval_s = 0.1
timeout_s = 2
'''


def test_after_orders_the_start_and_the_stop_in_reverse(tmp_path: Path, procs: Procs) -> None:
    d = tmp_path
    # web notes at its start whether db was up; at its stop (SIGTERM) it notes whether db still runs.
    script = (f"if [ -f {d}/db.ready ]; then echo up; else echo early; fi > {d}/web.saw; "
              f"trap 'kill -0 $(cat {d}/db.ready) && echo db-running > {d}/web.stop; exit 0' TERM; "
              "while :; do sleep 0.1; done")
    web = f'''[units.web]
after = ["db"]
command = ["sh", "-c", {json.dumps(script)}]
start_s = 0.2
stop_timeout_s = 5
'''
    up = _up(procs, d, web + DB.format(d=d))  # web first in the file: the order is not the file's
    journal = d / ".enmei" / "journal.sqlite"
    assert wait_until(lambda: (d / "web.saw").exists() or up.poll() is not None, 60), (d / "up.log").read_text()
    pids = _pids(d / ".enmei")
    for pid in pids.values():
        procs.adopt_pid(pid)
    assert (d / "web.saw").read_text().strip() == "up", "web started before db was up"
    recs = _records(journal)
    waiting = [b for _, k, u, b in recs if u == "web" and k == "unit.event" and b.get("event") == "waiting"]
    assert waiting and waiting[0]["for"] == ["db"], waiting
    assert _first(recs, "db", "unit.event", event="ready") < _first(recs, "web", "decision", action="start")
    up.send_signal(signal.SIGTERM)
    assert up.wait(60) == 0, (d / "up.log").read_text()
    assert (d / "web.stop").read_text().strip() == "db-running", "db was stopped before web"
    recs = _records(journal)
    assert _first(recs, "web", "unit.state", to="stopped") < _first(recs, "db", "unit.state", to="stopping")


def test_a_killed_dependency_is_not_blamed_on_its_dependent(tmp_path: Path, procs: Procs) -> None:
    d = tmp_path
    # app's liveness probe fails whenever db is gone: 3 failures at 0.1 s — well within db's 1.5 s start.
    app = f'''[units.app]
requires = ["db"]
command = ["sleep", "300"]
start_s = 0.2
stop_timeout_s = 2
[[units.app.probes]]
kind = "exec"
name = "db"
command = ["sh", "-c", "kill -0 $(cat {d}/db.ready)"]
interval_s = 0.1
timeout_s = 2
fail_after = 3
'''
    up = _up(procs, d, DB.format(d=d) + app)
    journal = d / ".enmei" / "journal.sqlite"
    state = d / ".enmei"

    def app_running() -> bool:
        return any(u == "app" and k == "unit.state" and b.get("to") == "running" for _, k, u, b in _records(journal))

    assert wait_until(lambda: app_running() or up.poll() is not None, 60), (d / "up.log").read_text()
    assert up.poll() is None
    pids = _pids(state)
    for pid in pids.values():
        procs.adopt_pid(pid)
    before = len(_records(journal))
    os.kill(pids["db"], signal.SIGKILL)

    def db_back() -> bool:
        now = _pids(state)
        recs = _records(journal)[before:]
        return now.get("db") not in (None, pids["db"]) and any(
            u == "db" and k == "unit.event" and b.get("event") == "ready" for _, k, u, b in recs) and any(
            u == "app" and k == "unit.event" and b.get("event") == "resumed" for _, k, u, b in recs)

    assert wait_until(db_back, 60), (d / "up.log").read_text()
    recs = _records(journal)[before:]
    waiting = [b for _, k, u, b in recs if u == "app" and k == "unit.event" and b.get("event") == "waiting"]
    assert waiting and waiting[0]["for"] == ["db"] and "waiting for db" in str(waiting[0]["cause"]), waiting
    assert _pids(state)["app"] == pids["app"] and psutil.pid_exists(pids["app"])
    restarts = [b for _, k, u, b in recs if u == "app" and k in ("decision", "verdict")]
    assert restarts == [], restarts
    procs.adopt_pid(_pids(state)["db"])
    up.send_signal(signal.SIGTERM)
    assert up.wait(60) == 0, (d / "up.log").read_text()


def test_a_dependent_that_exits_while_its_dependency_is_down_is_started_once_it_is_back(
        tmp_path: Path, procs: Procs) -> None:
    d = tmp_path
    # app ends (code 3) as soon as db is gone, as a client of a dead server might.
    script = f"while kill -0 $(cat {d}/db.ready) 2>/dev/null; do sleep 0.05; done; exit 3"
    app = f'[units.app]\nrequires = ["db"]\ncommand = ["sh", "-c", {json.dumps(script)}]\nstart_s = 0.2\n'
    up = _up(procs, d, DB.format(d=d) + app)
    journal, state = d / ".enmei" / "journal.sqlite", d / ".enmei"
    assert wait_until(lambda: up.poll() is not None or any(
        u == "app" and k == "unit.state" and b.get("to") == "running" for _, k, u, b in _records(journal)), 60), \
        (d / "up.log").read_text()
    pids = _pids(state)
    for pid in pids.values():
        procs.adopt_pid(pid)
    before = len(_records(journal))
    os.kill(pids["db"], signal.SIGKILL)

    def app_again() -> bool:
        now = _pids(state)
        return now.get("app") not in (None, pids["app"]) and now.get("db") not in (None, pids["db"])

    assert wait_until(app_again, 60), (d / "up.log").read_text()
    for pid in _pids(state).values():
        procs.adopt_pid(pid)
    recs = _records(journal)[before:]
    decisions = [b for _, k, u, b in recs if u == "app" and k == "decision"]
    assert [(b["action"], b["rule"]) for b in decisions] == [("start", "requires")], decisions
    waiting = [b for _, k, u, b in recs if u == "app" and k == "unit.event" and b.get("event") == "waiting"]
    assert waiting and "its exit is not held against app" in str(waiting[0]["cause"]), waiting
    # It was started once db was up again, not before.
    ready = _first(recs, "db", "unit.event", event="ready")
    assert ready < _first(recs, "app", "decision", action="start")
    up.send_signal(signal.SIGTERM)
    assert up.wait(60) == 0, (d / "up.log").read_text()
