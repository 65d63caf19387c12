"""nginx (Debian nginx-light) as a real ``enmei up`` unit (the kit's config: ``daemon off``, a master and
2 workers, SIGQUIT, an HTTP probe, ``nginx -t`` as pre_start): kill -9 of the master, a hang of every
process of its cgroup, a worker killed (the master's business, not enmei's), a broken config (a config
error, not a crash loop) fixed by the operator and started from the web API. Each test ends with enmei's
own shutdown and checks that no process of the unit is left and its cgroup is gone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from daemon_rig import running

pytestmark = [pytest.mark.e2e, pytest.mark.daemons, pytest.mark.xdist_group("daemons"), pytest.mark.timeout(240)]


def test_kill9_of_the_master_is_restarted_and_its_workers_do_not_linger(tmp_path: Path) -> None:
    with running("nginx", tmp_path) as rig:
        old = rig.until_running()
        workers = rig.until(lambda: [p.pid for p in rig.children("worker process")], 30, "2 workers")
        assert len(workers) == 2
        os.kill(old, signal.SIGKILL)
        rig.until_back(old)
        (exited,) = rig.events("exited")
        assert exited["pid"] == old and exited["signal"] == "SIGKILL"
        # The old workers held the listening socket: they were ended with their master, the new master
        # could bind it again (listen = the port is checked free before each start).
        assert not [w for w in workers if psutil.pid_exists(w)]
        assert len(rig.children("worker process")) == 2
        rig.shutdown()


def test_a_hung_nginx_is_seen_by_its_probe_and_nothing_is_left_stopped(tmp_path: Path) -> None:
    with running("nginx", tmp_path) as rig:
        old = rig.until_running()
        hung = rig.signal_all(signal.SIGSTOP)
        assert len(hung) == 3  # the master and its 2 workers
        rig.until(lambda: rig.records("verdict"), 60, "a verdict on the hung nginx")
        assert rig.records("verdict")[0][2]["kind"] == "probe_failed"
        rig.until_back(old, 90)
        # Continued by the stop, the master got its SIGQUIT and shut down gracefully (no SIGKILL needed).
        (stopped,) = rig.events("stopped")
        assert stopped["pid"] == old and stopped["signal"] is None, stopped
        assert "gracefully shutting down" in rig.unit_log()
        assert not [p for p in hung if psutil.pid_exists(p)]
        assert rig.stopped() == []
        rig.shutdown()


def test_a_killed_worker_is_respawned_by_the_master_and_enmei_does_not_restart(tmp_path: Path) -> None:
    with running("nginx", tmp_path) as rig:
        master = rig.until_running()
        workers = rig.until(lambda: [p.pid for p in rig.children("worker process")], 30, "2 workers")
        os.kill(workers[0], signal.SIGKILL)
        rig.until(lambda: f"worker process {workers[0]} exited on signal 9" in rig.unit_log(), 30,
                  "the master seeing its worker die")
        now = rig.until(lambda: (w := [p.pid for p in rig.children("worker process")]) and len(w) == 2 and w,
                        30, "2 workers again")
        assert workers[0] not in now and workers[1] in now
        assert rig.answers() and rig.pid() == master
        assert rig.events("exited") == [] and rig.records("verdict") == []
        assert [b["action"] for _, _, b in rig.records("decision")] == ["start"]  # the autostart alone
        rig.shutdown()


def test_a_broken_config_is_a_config_error_not_a_crash_loop_and_starts_once_fixed(tmp_path: Path) -> None:
    with running("nginx", tmp_path) as rig:
        old = rig.until_running()
        rig.daemon.break_config()
        os.kill(old, signal.SIGKILL)  # the master dies; its next start runs `nginx -t` first
        failed = rig.until(lambda: rig.events("start_failed"), 60, "the pre_start check failing")
        assert failed[0]["cause"].startswith("config error: pre_start "), failed[0]
        assert failed[0]["cause"].endswith("test failed"), failed[0]  # nginx -t's last stderr line
        rig.until(lambda: rig.state() == "escalated", 30, "the unit escalated (config error)")
        assert [b["rule"] for _, _, b in rig.records("decision")][-1] == "config-error"
        # the alert is journaled just after the state change the API showed: waited for, not raced
        rig.until(lambda: rig.records("alert"), 30, "the escalation's alert in the journal")
        # Not retried in a loop: one failed start, the next try escalate.retry_every_s (600 s here) away.
        assert len(rig.events("start_failed")) == 1 and not rig.answers()
        # The operator fixes the file and starts the unit from the API: the escalation is cancelled for
        # it, not the start suppressed.
        rig.daemon.fix_config()
        rig.action("start")
        rig.until_back(old, 60)
        assert len(rig.events("start_failed")) == 1
        assert [b["state"] for _, _, b in rig.records("remedy.outcome", action="escalate")] == ["cancelled"]
        assert [b["policy"] for _, _, b in rig.records("decision")][-1] == "operator:web"
        rig.shutdown()
