"""A real ``enmei up`` whose journal is PostgreSQL: it supervises on while the server is killed (a unit
killed meanwhile is restarted, journaled into the spool), and ``enmei box tail/verify`` read the chain
from PostgreSQL after; ``enmei box migrate`` moves a SQLite journal there, verified."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from enmei.box import Journal
from enmei.box.pgread import PgReader
from enmei.daemons.base import free_port
from enmei.fleet.pgserver import TempPostgres
from support.wait import scaled

from ..conftest import PY, Procs, enmei, wait_until

pytestmark = pytest.mark.integration


def _get(port: int, path: str, token: str, *, method: str = "GET", raw: bool = False) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=scaled(30)) as resp:
        body = resp.read().decode()
    return body if raw else json.loads(body)


def _pid(state: Path) -> int | None:
    try:
        return int(json.loads((state / "units.json").read_text())["units"]["sleeper"]["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def test_enmei_up_on_postgres_supervises_through_an_outage(pg_server: TempPostgres, pg_dsn: str, tmp_path: Path,
                                                           procs: Procs) -> None:
    cfg = tmp_path / "enmei.toml"
    cfg.write_text(f'[supervisor]\nstate_dir = "state"\njournal = "{pg_dsn}"\nhost = "h1"\n\n'
                   '[units.sleeper]\ncommand = ["sleep", "300"]\nstart_s = 0.2\n')
    state, log = tmp_path / "state", tmp_path / "up.log"
    port = free_port()
    with open(log, "wb") as out:
        up = procs.popen([PY, "-m", "enmei", "up", "--plain", "--listen", f"127.0.0.1:{port}", str(cfg)],
                         stdout=out, stderr=subprocess.STDOUT)
    assert wait_until(lambda: _pid(state) is not None or up.poll() is not None, 60), log.read_text()[-3000:]
    first = _pid(state)
    assert first is not None and up.poll() is None
    procs.adopt_pid(first)
    pg_server.kill()
    os.kill(first, signal.SIGKILL)  # while PostgreSQL is down: the restart must not wait for it
    assert wait_until(lambda: _pid(state) not in (None, first), 60), log.read_text()[-3000:]
    second = _pid(state)
    assert second is not None
    procs.adopt_pid(second)
    assert wait_until((state / "journal.spool").exists, 30), "the records of the restart are spooled"
    pg_server.start()
    assert wait_until(lambda: not (state / "journal.spool").exists(), 60), log.read_text()[-3000:]
    # the dashboard's API reads the chain from PostgreSQL: records, a verification, the /metrics counters
    token = (state / "web.token").read_text().strip()
    recs = _get(port, "/api/records?limit=500", token)
    assert any(r["kind"] == "unit.event" and r["unit"] == "sleeper" for r in recs), recs
    status = _get(port, "/api/journal/verify", token, method="POST")
    assert status["verify"]["ok"] is True and status["path"].endswith("#h1"), status
    metrics = _get(port, "/metrics", token, raw=True)
    assert 'enmei_unit_exits_total{reason="signal",unit="sleeper"}' in metrics, metrics[:2000]
    up.send_signal(signal.SIGTERM)
    up.wait(scaled(60))
    assert up.returncode == 0, log.read_text()[-3000:]
    with PgReader(pg_dsn, "h1") as r:
        starts = [x.data() for x in r.records(kinds=["unit.event"]) if x.unit == "sleeper"]
    pids = [b.get("pid") for b in starts if b.get("event") == "started"]
    assert first in pids and second in pids, starts
    tail = enmei("box", "tail", "-c", str(cfg), "-n", "5")
    assert tail.returncode == 0 and "supervisor" in tail.stdout, tail.stdout + tail.stderr
    ver = enmei("box", "verify", "-c", str(cfg), "--json")
    assert ver.returncode == 0, ver.stdout + ver.stderr
    assert json.loads(ver.stdout)["chains"]["h1"]["ok"]


def test_box_migrate_copies_a_sqlite_journal_and_verifies_it(pg_dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with Journal(path) as j:
        for i in range(50):
            j.append("unit.event", "web", {"i": i})
    r = enmei("box", "migrate", "-j", str(path), "--to", pg_dsn, "--host", "old")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "migrated 50 records" in r.stdout
    with PgReader(pg_dsn, "old") as pr:
        assert pr.count() == 50 and pr.get(50).data() == {"i": 49}  # type: ignore[union-attr]
    again = enmei("box", "migrate", "-j", str(path), "--to", pg_dsn, "--host", "old")
    assert again.returncode != 0 and "already has a chain" in again.stderr
    bad = enmei("box", "tail", "--dsn", "postgresql://h:99999/x")
    assert bad.returncode == 2 and "--dsn" in bad.stderr
