"""``/metrics`` of a real ``enmei up`` (http, tcp and exec probes, a unit that keeps exiting), checked by the
real Prometheus tools: ``promtool check metrics`` finds nothing to say, and a real Prometheus 2.42 scraping
it across an enmei restart sees the restarts and no counter reset.

Prometheus runs on loopback, its storage in the test's temp dir, and is ended by pid (the ``procs``
fixture ends every process the test started, also on failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from enmei.demo.ports import free_ports
from support.wait import scaled, until

from ..conftest import PY, Procs

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


# Restart on every exit, with no circuit breaker (the default policy's would stop a crash loop after four
# exits in two minutes: this test wants restarts to go on across the enmei restart).
POLICY = """
load("@enmei", "describe", "restart")

def on_exit(event, ctx):
    u = ctx.unit
    if u == None or u.remedy != None:
        return []
    return [restart(u, delay_s = 0.2, why = describe(event), rule = "test-exit-restart")]
"""


def _config(tmp_path: Path, port: int) -> Path:
    cfg = tmp_path / "enmei.toml"
    (tmp_path / "policy.star").write_text(POLICY)
    cfg.write_text(f"""
[supervisor]
state_dir = "state"
tick_s = 0.5
policy = "policy.star"

[units.web]
command = ["{PY}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
stop_timeout_s = 2.0

[[units.web.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval_s = 0.3

[[units.web.probes]]
kind = "tcp"
port = {port}
interval_s = 0.3

[[units.web.probes]]
kind = "exec"
command = ["/bin/true"]
interval_s = 0.5

[[units.web.probes]]
kind = "process"
interval_s = 0.5

[units.crasher]
command = ["{PY}", "-c", "import time; time.sleep(1.0); raise SystemExit(3)"]
start_s = 0.3

[units.crasher.restart]
backoff_first_s = 0.2
backoff_factor = 1.0
backoff_max_s = 0.2
budget = 10000
window_s = 60
""")
    return cfg


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError:
        return 0, ""


def _scrape(base: str) -> dict[str, float] | None:
    status, text = _get(f"{base}/metrics")
    if status != 200:
        return None
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name + json.dumps(dict(sorted(s.labels.items())))] = s.value
    return out


def _total(series: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in series.items() if k.startswith(prefix))


def _up(procs: Procs, cfg: Path, listen: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return procs.popen([PY, "-m", "enmei", "up", "--plain", "--listen", listen, str(cfg)], stdout=out,
                           stderr=subprocess.STDOUT, cwd=cfg.parent)


def _down(p: subprocess.Popen[bytes]) -> None:
    """End this enmei (by its pid) the way an operator does, and wait for it: it stops its units."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signal.SIGTERM)
    p.wait(timeout=scaled(60))


def _running_with_history(base: str) -> dict[str, float] | None:
    """A scrape once the crasher has exited (and been restarted) and every probe kind has been timed."""
    s = _scrape(base)
    if s is None:
        return None
    # Every unit's exit counters are there from the first scrape: their absence is a failure now, not later.
    assert 'enmei_unit_exits_total{"reason": "error", "unit": "crasher"}' in s, sorted(s)[:50]
    exits = s.get('enmei_unit_exits_total{"reason": "error", "unit": "crasher"}', 0.0)
    timed = all(s.get(f'enmei_probe_duration_seconds_count{{"probe": "{p}", "unit": "web"}}', 0.0) > 0
                for p in ("http", "tcp", "exec"))
    restarts = _total(s, 'enmei_unit_restarts_total{"action": "restart", "reason": "exit", "unit": "crasher"')
    return s if exits >= 2 and restarts >= 1 and timed else None


def test_promtool_finds_a_real_scrape_clean(tmp_path: Path, procs: Procs) -> None:
    port, wport = free_ports(2)
    cfg = _config(tmp_path, port)
    base = f"http://127.0.0.1:{wport}"
    p = _up(procs, cfg, f"127.0.0.1:{wport}", tmp_path / "enmei.log")
    s = until(lambda: _running_with_history(base), 90, "the crasher exited and every probe kind was timed",
              every_s=0.2)
    assert s['enmei_unit_resident_memory_bytes{"unit": "web"}'] > 0
    assert s['enmei_unit_threads{"unit": "web"}'] >= 1 and s['enmei_unit_open_fds{"unit": "web"}'] >= 3
    assert 'enmei_unit_cpu_seconds_total{"unit": "web"}' in s
    status, text = _get(f"{base}/metrics")
    assert status == 200
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=scaled(30), check=False)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), text
    _down(p)
    assert p.returncode == 0, (tmp_path / "enmei.log").read_text()[-3000:]


def _prometheus(procs: Procs, tmp_path: Path, target: str) -> str:
    (port,) = free_ports(1)
    conf = tmp_path / "prometheus.yml"
    conf.write_text(f"""
global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: enmei
    static_configs:
      - targets: ["{target}"]
""")
    with (tmp_path / "prometheus.log").open("ab") as out:
        procs.popen([PROMETHEUS, f"--config.file={conf}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                    stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    until(lambda: _get(f"{base}/-/ready", 2.0)[0] == 200, 60, "Prometheus ready", every_s=0.2)
    return base


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    status, body = _get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert status == 200, body
    data = json.loads(body)
    assert data["status"] == "success", data
    return list(data["data"]["result"])


def _scalar(prom: str, expr: str) -> float | None:
    result = _query(prom, expr)
    return float(result[0]["value"][1]) if result else None


RESTARTS = 'sum(enmei_unit_restarts_total{unit="crasher"})'


def test_prometheus_sees_restarts_and_no_counter_reset_across_an_enmei_restart(tmp_path: Path,
                                                                                procs: Procs) -> None:
    port, wport = free_ports(2)
    cfg = _config(tmp_path, port)
    base = f"http://127.0.0.1:{wport}"
    prom = _prometheus(procs, tmp_path, f"127.0.0.1:{wport}")
    first = _up(procs, cfg, f"127.0.0.1:{wport}", tmp_path / "enmei.log")
    until(lambda: _running_with_history(base), 90, "the crasher restarted in the first run", every_s=0.2)
    # Prometheus has scraped restarts of the first run (two scrapes at least: a rate needs two).
    until(lambda: (_scalar(prom, f"count_over_time({RESTARTS}[5m:1s])") or 0) >= 2
          and (_scalar(prom, RESTARTS) or 0) >= 1, 60, "Prometheus scraped the first run's restarts", every_s=0.5)
    _down(first)
    before = _scalar(prom, 'sum(max_over_time(enmei_unit_restarts_total{unit="crasher"}[10m]))')
    assert before is not None and before >= 1
    down_at = time.time()
    second = _up(procs, cfg, f"127.0.0.1:{wport}", tmp_path / "enmei.log")
    # The second run's scrapes: their counters start from the first run's values and grow from there.
    until(lambda: (_scalar(prom, RESTARTS) or 0) > before
          and (_scalar(prom, f'timestamp(enmei_info) > {down_at}') is not None), 90,
          "Prometheus scraped the second run's restarts", every_s=0.5)
    families = ("enmei_unit_restarts_total", "enmei_unit_exits_total", "enmei_decisions_total",
                "enmei_remedies_total", "enmei_probe_duration_seconds_count", "enmei_alerts_total")
    for family in families:
        resets = _query(prom, f"resets({family}[10m]) > 0")
        assert resets == [], f"{family} went back across the enmei restart: {resets}"
    rate = _scalar(prom, 'sum(rate(enmei_unit_restarts_total{unit="crasher"}[1m]))')
    assert rate is not None and rate > 0
    grew = _scalar(prom, 'sum(increase(enmei_unit_exits_total{unit="crasher", reason="error"}[10m]))')
    assert grew is not None and grew > 0  # (an extrapolated increase: on a loaded machine it can be ~1.3)
    _down(second)
