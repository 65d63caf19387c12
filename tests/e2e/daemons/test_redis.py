"""Redis (Debian redis-server) as a real ``enmei up`` unit (the kit's config: ``save ""``, SIGTERM, a
``PING``/``+PONG`` probe): kill -9 of its pid, a hang (SIGSTOP) of every process of its cgroup. Each test
ends with enmei's own shutdown and checks that no process of the unit is left and its cgroup is gone."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from daemon_rig import running

pytestmark = [pytest.mark.e2e, pytest.mark.daemons, pytest.mark.xdist_group("daemons"), pytest.mark.timeout(240)]


def test_kill9_of_the_main_pid_is_restarted(tmp_path: Path) -> None:
    with running("redis", tmp_path) as rig:
        old = rig.until_running()
        os.kill(old, signal.SIGKILL)
        new = rig.until_back(old)
        (exited,) = rig.events("exited")
        assert exited["pid"] == old and exited["signal"] == "SIGKILL"
        assert [b["rule"] for _, _, b in rig.records("decision") if b["action"] == "restart"] == ["exit-restart"]
        assert not psutil.pid_exists(old) and new != old
        rig.shutdown()


def test_a_hung_redis_is_seen_by_its_ping_probe_and_stopped_gracefully(tmp_path: Path) -> None:
    """Every pid SIGSTOPped: the kernel still accepts connections, only PING/+PONG sees the hang. The
    stop that follows continues it, so Redis gets its SIGTERM and shuts down itself (exit code 0) instead
    of waiting out stop_timeout_s for a SIGKILL; nothing is left stopped."""
    with running("redis", tmp_path, stop_timeout_s=30) as rig:
        old = rig.until_running()
        hung = rig.signal_all(signal.SIGSTOP)
        assert old in hung
        rig.until(lambda: rig.records("verdict"), 60, "a verdict on the hung Redis")
        (verdict,) = [b for _, _, b in rig.records("verdict")]
        assert verdict["kind"] == "probe_failed" and "ping" in str(verdict)
        rig.until_back(old, 90)
        (stopped,) = rig.events("stopped")
        assert stopped["pid"] == old and stopped["code"] == 0 and stopped["signal"] is None, stopped
        assert not [p for p in hung if psutil.pid_exists(p)]
        assert rig.stopped() == []
        rig.shutdown()


def test_a_broken_config_backs_off_escalates_and_starts_once_fixed(tmp_path: Path) -> None:
    """Redis has no config check to run before its start: with a bad directive it exits at once, every
    time. Each retry waits its whole backoff step (the instance lived ~0 s), the loop ends in an
    escalation with an alert (no tight loop, no silent give-up), the unit's log shows Redis's own
    reason, and the operator's start after the fix brings it back at once."""
    with running("redis", tmp_path) as rig:
        old = rig.until_running()
        rig.daemon.break_config()
        os.kill(old, signal.SIGKILL)
        rig.until(lambda: rig.state() == "escalated", 90, "the unit escalated after its failed starts")
        restarts = [b for _, _, b in rig.records("decision") if b["action"] == "restart"]
        delays = [float(b["args"].get("delay_s", 0.0)) for b in restarts]
        # the kill -9 of an instance that ran longer than the first step: at once; then each start that
        # died at once waits its step (FAST: 0.2 s doubling, at most 2 s) less the ms it lived
        # (measured: 0.0, 0.37, 0.75 s)
        assert delays[0] < 0.2 and len(delays) >= 3, delays
        assert all(0.1 < d <= 2.0 for d in delays[1:]), delays
        assert delays[2:] == sorted(delays[2:]), delays
        # the alert is journaled just after the state change the API showed: waited for, not raced
        rig.until(lambda: rig.records("alert"), 30, "the escalation's alert in the journal")
        assert "no-such-directive-enmei" in rig.unit_log("stdout") + rig.unit_log("stderr")
        assert not rig.answers()
        rig.daemon.fix_config()
        rig.action("start")
        rig.until_back(old, 60)
        assert [b["policy"] for _, _, b in rig.records("decision")][-1] == "operator:web"
        rig.shutdown()
