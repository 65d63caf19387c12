"""Host leases and the leader on a real PostgreSQL, between two real ``enmei up`` supervisors: one leader
at a time, a kill -9 of the leader's enmei is followed by the other taking over within the lease TTL (plus
the time to see it), with a larger fencing token, and the deposed leader's token is refused by the
database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from enmei.box.pgread import PgReader
from enmei.errors import BoxError
from enmei.fleet.lease import LEADER, FencedError, Grant, LeaseStore
from support.wait import scaled

from ..conftest import PY, Procs, wait_until

pytestmark = pytest.mark.integration

TTL_S = 2.0


def _fleet_records(dsn: str, host: str) -> list[dict[str, object]]:
    try:
        with PgReader(dsn, host) as r:
            return [x.data() for x in r.records(kinds=["fleet"])]
    except BoxError:
        return []


def _up(procs: Procs, tmp_path: Path, dsn: str, host: str) -> subprocess.Popen[bytes]:
    d = tmp_path / host
    d.mkdir()
    cfg = d / "enmei.toml"
    cfg.write_text(f'[supervisor]\nstate_dir = "state"\njournal = "{dsn}"\nhost = "{host}"\n\n'
                   f'[fleet]\nlease_ttl_s = {TTL_S}\n\n'
                   '[units.sleeper]\ncommand = ["sleep", "300"]\nstart_s = 0.2\n')
    with open(d / "up.log", "wb") as out:
        return procs.popen([PY, "-m", "enmei", "up", "--plain", str(cfg)], stdout=out, stderr=subprocess.STDOUT)


def _unit_pid(tmp_path: Path, host: str) -> int | None:
    try:
        units = json.loads((tmp_path / host / "state" / "units.json").read_text())["units"]
        return int(units["sleeper"]["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def test_two_supervisors_one_leader_and_failover_within_the_ttl(pg_dsn: str, tmp_path: Path, procs: Procs) -> None:
    ups = {h: _up(procs, tmp_path, pg_dsn, h) for h in ("h1", "h2")}
    for h in ups:
        assert wait_until(lambda h=h: _unit_pid(tmp_path, h) is not None, 90), (tmp_path / h / "up.log").read_text()
        procs.adopt_pid(_unit_pid(tmp_path, h))  # type: ignore[arg-type]
    store = LeaseStore(pg_dsn)
    try:
        assert wait_until(lambda: store.current(LEADER) is not None, 60)
        leader, token, _ = store.current(LEADER)  # type: ignore[misc]
        other = "h2" if leader == "h1" else "h1"
        assert wait_until(lambda: any(r.get("event") == "leader" for r in _fleet_records(pg_dsn, leader)), 30)
        assert not any(r.get("event") == "leader" for r in _fleet_records(pg_dsn, other)), "two leaders"
        assert {h["host"]: h["alive"] for h in store.hosts()} == {"h1": True, "h2": True}
        # the leader's host dies: its enmei killed -9 (its unit goes on; the test's cleanup ends it)
        os.kill(ups[leader].pid, signal.SIGKILL)
        ups[leader].wait(30)
        killed = time.monotonic()
        while True:
            cur = store.current(LEADER)
            if cur is not None and cur[0] == other:
                break
            assert time.monotonic() - killed < scaled(TTL_S + 10), "no new leader"
            time.sleep(0.02)
        detect_s = time.monotonic() - killed
        assert cur[1] > token, "the new leader's fencing token is larger"
        # from the kill: at most the TTL (the last renewal was before the kill) plus the time to see it
        assert detect_s <= TTL_S + scaled(1.5), detect_s
        with pytest.raises(FencedError):
            store.fenced_action(Grant(LEADER, leader, token, 0.0), "rejuvenate", {"unit": "web"})
        assert store.fenced_action(Grant(LEADER, other, cur[1], 0.0), "rejuvenate", {"unit": "web"}) > 0
        assert wait_until(lambda: any(r.get("event") == "leader" and r.get("token") == cur[1]
                                      for r in _fleet_records(pg_dsn, other)), 30)
        assert wait_until(lambda: {h["host"]: h["alive"] for h in store.hosts()} == {"h1": leader != "h1",
                                                                                     "h2": leader != "h2"}, 30)
        print(json.dumps({"failover_detect_s": round(detect_s, 3), "ttl_s": TTL_S}))
        # a clean stop of the new leader gives the lease up at once: nobody holds it unexpired
        ups[other].send_signal(signal.SIGTERM)
        ups[other].wait(scaled(60))
        assert ups[other].returncode == 0
        cur = store.current(LEADER)
        assert cur is not None and cur[2] < 0, "released at stop"
    finally:
        store.close()
