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
