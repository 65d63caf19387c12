"""One cell of ``enmei bench daemons`` end to end: enmei supervising a real Redis, kill -9, one repeat.
The figure itself is the benchmark's; what is asserted is that the fault was seen and recovered from
through the real client, and that nothing the bench started is left behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from pathlib import Path

import psutil
import pytest

from enmei.bench import daemons as bench

pytestmark = pytest.mark.integration


def _leftovers(base: Path) -> list[psutil.Process]:
    """Processes with ``base`` in their command line or working directory (supervisors, daemons, wrappers)."""
    out = []
    for p in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            if p.pid == os.getpid() or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if any(str(base) in a for a in p.cmdline()) or p.cwd().startswith(str(base)):
                out.append(p)
    return out


@pytest.mark.timeout(600)
def test_enmei_brings_a_killed_redis_back_and_leaves_nothing() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (Debian package redis-server; make test installs it)")
    # Not pytest's tmp_path: the daemon runs as the redis user, who cannot enter a 0700 directory.
    base = Path(tempfile.mkdtemp(prefix="enmei-test-bench-daemons-"))
    base.chmod(0o755)
    try:
        out = bench.run(1, ["redis"], ["kill"], ["enmei"], parent=base)
        (cell,) = out["cells"]
        assert (cell["daemon"], cell["fault"], cell["supervisor"], cell["repeats"]) == ("redis", "kill", "enmei", 1)
        run = cell["runs"][0]
        assert "error" not in run, run
        assert cell["recovered"] and out["all_recovered"]
        assert 0 < run["back_s"] < bench.WAIT_S and cell["median_back_s"] == run["back_s"]
        assert run["detect_s"] is not None and 0 <= run["detect_s"] <= run["back_s"]
        assert run["failed_requests"] >= 1, "a kill -9 that no client request noticed"
        assert run["leftover_processes"] == 0 and out["leftover_processes"] == 0
        assert out["cells_peer_recovered"] == 0 and out["enmei_not_slower_cells"] == 0  # no peer ran
        assert "[units.redis]" in out["configs"]["redis"]["enmei"]
        assert not list(base.iterdir()), "the bench left its temp dir"
        assert not _leftovers(base)
    finally:
        for p in _leftovers(base):  # only if the bench itself failed half-way
            with contextlib.suppress(psutil.Error, OSError):
                os.kill(p.pid, signal.SIGCONT)
                os.kill(p.pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
