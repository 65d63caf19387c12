"""PostgreSQL 15 as a real ``enmei up`` unit (the kit's config: ``postgres -D`` in the foreground as the
``postgres`` user, SIGINT fast shutdown to the postmaster alone, ``pg_isready`` as a liveness probe that
accepts "rejecting: starting up" and as the readiness and start-up probe): kill -9 of the postmaster, a
hang of every process of its cgroup, a backend killed (the postmaster's own crash recovery, which enmei
must not interrupt), a slow start-up, a graceful stop with a client connected. Each test ends with
enmei's own shutdown and checks that no process of the unit is left and its cgroup is gone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from daemon_rig import running

from enmei.daemons import PgClient, RequestFailed

pytestmark = [pytest.mark.e2e, pytest.mark.daemons, pytest.mark.xdist_group("daemons"), pytest.mark.timeout(300)]


def _starts(log: str) -> list[str]:
    """The server log cut at each "starting PostgreSQL": what each start said."""
    return log.split("LOG:  starting PostgreSQL")[1:]


def test_kill9_of_the_postmaster_is_restarted_and_its_recovery_not_interrupted(tmp_path: Path) -> None:
    with running("postgresql", tmp_path) as rig:
        old = rig.until_running()
        children = [p.pid for p in rig.children("postgres: ")]
        assert children  # checkpointer, background writer, walwriter, ...
        os.kill(old, signal.SIGKILL)
        rig.until_back(old, 120)
        (exited,) = rig.events("exited")
        assert exited["pid"] == old and exited["signal"] == "SIGKILL"
        assert not [p for p in children if psutil.pid_exists(p)]  # the orphaned children went with it
        second = _starts(rig.unit_log())[1]
        assert "not properly shut down; automatic recovery in progress" in second
        assert rig.records("verdict") == []  # recovery gated by the start-up probe, never judged as a hang
        rig.shutdown()


def test_a_hung_postgres_is_seen_by_pg_isready_and_shut_down_fast_not_killed(tmp_path: Path) -> None:
    with running("postgresql", tmp_path) as rig:
        old = rig.until_running()
        hung = rig.signal_all(signal.SIGSTOP)
        assert old in hung and len(hung) > 3
        rig.until(lambda: rig.records("verdict"), 60, "a verdict on the hung postgres")
        (verdict,) = [b for _, _, b in rig.records("verdict")]
        assert verdict["kind"] == "probe_failed" and verdict["evidence"]["probe"] == "alive"
        rig.until_back(old, 120)
        # Continued by the stop, the postmaster got its SIGINT: a fast shutdown, so the next start needs
        # no crash recovery.
        (stopped,) = rig.events("stopped")
        assert stopped["pid"] == old and stopped["code"] == 0 and stopped["signal"] is None, stopped
        first, second = _starts(rig.unit_log())
        assert "received fast shutdown request" in first and "database system is shut down" in first
        assert "database system was shut down at" in second and "not properly shut down" not in second
        assert not [p for p in hung if psutil.pid_exists(p)]
        assert rig.stopped() == []
        rig.shutdown()


def test_a_killed_backend_is_recovered_by_the_postmaster_and_enmei_does_not_restart(tmp_path: Path) -> None:
    """The postmaster answers a crashed child (a backend, then a background worker) by ending all backends
    and recovering, rejecting connections meanwhile: enmei at most sees the unit degraded (readiness;
    for about 3 s in the runs here) and ok again, and restarts nothing."""
    with running("postgresql", tmp_path) as rig:
        postmaster = rig.until_running()
        with PgClient(rig.daemon.port) as client:
            ((backend,),) = client.query("SELECT pg_backend_pid()")
            assert backend is not None
            os.kill(int(backend), signal.SIGKILL)
            rig.until(lambda: "all server processes terminated; reinitializing" in rig.unit_log(), 60,
                      "the postmaster reinitializing")
            with pytest.raises(RequestFailed):
                client.query("SELECT 1")  # ended by the postmaster with every other backend
        rig.until(lambda: "database system is ready to accept connections" in rig.unit_log().split(
            "reinitializing")[-1], 60, "the postmaster's recovery done")
        rig.until(lambda: rig.answers() and rig.view()["health"] == "ok", 60, "answering and healthy again")
        # A background worker killed is a crash too: the postmaster recovers again, by itself.
        (launcher,) = rig.until(lambda: rig.children("logical replication launcher"), 60, "the launcher")
        os.kill(launcher.pid, signal.SIGKILL)
        rig.until(lambda: rig.unit_log().count("all server processes terminated; reinitializing") == 2, 60,
                  "the postmaster reinitializing again")
        rig.until(lambda: "database system is ready to accept connections" in rig.unit_log().split(
            "reinitializing")[-1], 60, "the postmaster's second recovery done")
        rig.until(lambda: rig.answers() and rig.view()["health"] == "ok", 60, "answering and healthy again")
        assert f'background worker "logical replication launcher" (PID {launcher.pid}) was terminated by signal 9' \
            in rig.unit_log()
        assert rig.pid() == postmaster
        assert rig.events("exited") == [] and rig.events("stopped") == [] and rig.records("verdict") == []
        assert [b["action"] for _, _, b in rig.records("decision")] == ["start"]  # the autostart alone
        rig.shutdown()


def test_a_slow_start_up_is_not_killed_by_liveness(tmp_path: Path) -> None:
    """5 s before the postmaster even listens (liveness would fail after 2 × 0.5 s): the unit stays
    starting until its start-up probe passes, once, with no verdict and no second start."""
    delay = ["/bin/sh", "-c", 'sleep 5; exec "$@"', "sh"]  # exec: the main pid stays the postmaster's
    with running("postgresql", tmp_path, wait=False, prefix=delay) as rig:
        pid = rig.until_running(120)
        (ready,) = rig.events("ready")
        assert ready["by"] == "probe ready passed" and ready["after_s"] >= 4.5, ready
        assert [b["pid"] for b in rig.events("started")] == [pid]  # started once, never restarted
        assert rig.records("verdict") == [] and rig.events("exited") == [] and rig.events("stopped") == []
        rig.shutdown()


def test_a_graceful_stop_with_a_client_connected_needs_no_recovery_after(tmp_path: Path) -> None:
    with running("postgresql", tmp_path) as rig:
        old = rig.until_running()
        client = PgClient(rig.daemon.port).connect()
        try:
            client.query("BEGIN")
            client.query("CREATE TABLE t (x int)")  # a transaction in progress: SIGTERM (smart) would wait
            rig.action("stop")
            rig.until(lambda: rig.state() == "stopped", 60, "the unit stopped")
            with pytest.raises(RequestFailed):
                client.query("SELECT 1")
        finally:
            client.close()
        (stopped,) = rig.events("stopped")
        assert stopped["pid"] == old and stopped["code"] == 0 and stopped["signal"] is None, stopped
        rig.action("start")
        rig.until_back(old, 120)
        first, second = _starts(rig.unit_log())
        assert "received fast shutdown request" in first
        assert "database system was shut down at" in second and "not properly shut down" not in second
        rig.shutdown()
