"""Start-up conditions and readiness probes (issue 12 item 1): config, the readiness health, the log watch."""

from __future__ import annotations

from pathlib import Path

import pytest

from enmei.config.load import load_text
from enmei.detect.wiring import unit_detectors
from enmei.errors import ConfigError
from enmei.model import Health, Observation
from enmei.monitor.startup import LogLineWatch, belongs_to

UNIT = '[units.db]\ncommand = ["sleep", "60"]\n'
PROBE = '[[units.db.probes]]\nkind = "tcp"\nname = "{name}"\nport = 5432\nrole = "{role}"\nfail_after = 1\n'


def obs(probe: str, ok: bool, mono: float) -> Observation:
    return Observation("db", probe, ok, mono, mono, {}, None if ok else "refused")


def test_startup_keys_are_read(tmp_path: Path) -> None:
    text = UNIT + 'startup_probe = "pg"\nstartup_timeout_s = 90\n' + PROBE.format(name="pg", role="liveness")
    loaded = load_text(text, tmp_path / "enmei.toml")
    spec = loaded.config.units["db"]
    assert spec.startup_probe == "pg" and spec.startup_timeout_s == 90
    assert spec.startup_condition() == "probe pg"
    assert spec.start_bound_s() == pytest.approx(spec.start_s + 90 + spec.stop_bound_s())
    plain = load_text(UNIT, tmp_path / "enmei.toml").config.units["db"]
    assert plain.startup_condition() is None and plain.start_bound_s() == plain.start_s


@pytest.mark.parametrize(("body", "needle"), [
    ('startup_probe = "nope"\n', "startup_probe = 'nope' names no probe of this unit"),
    ('startup_probe = "pg"\nstartup_notify = true\n', "at most one start-up condition"),
    ('startup_log = "("\n', "not a regular expression"),
    ('startup_timeout_s = 0\n', "startup_timeout_s"),
    ('startup_timeout = 5\n', "startup_timeout"),
])
def test_startup_errors_name_file_line_and_key(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(UNIT + body + PROBE.format(name="pg", role="liveness"), tmp_path / "enmei.toml")
    text = str(err.value)
    assert needle in text and "enmei.toml:" in text and "units.db" in text, text


def test_a_readiness_probe_degrades_without_a_verdict(tmp_path: Path) -> None:
    loaded = load_text(UNIT + PROBE.format(name="ready", role="readiness") + PROBE.format(name="live", role="liveness"),
                       tmp_path / "enmei.toml")
    det = unit_detectors("db", loaded.config.units["db"])
    out = det.feed(obs("live", True, 1.0))
    assert out.health is not None and out.health[0] is Health.OK
    for t in range(2, 12):
        out = det.feed(obs("ready", False, float(t)))
        assert out.verdicts == ()  # never a probe_failed: a unit not ready is not restarted
        assert out.health is not None and out.health[0] is Health.DEGRADED
    out = det.feed(obs("ready", True, 12.0))
    assert out.verdicts == () and out.health is not None and out.health[0] is Health.OK
    # The liveness probe still fires at its fail_after.
    assert [v.kind.value for v in det.feed(obs("live", False, 13.0)).verdicts] == ["probe_failed"]


def test_log_watch_reads_only_what_the_instance_wrote(tmp_path: Path) -> None:
    log = tmp_path / "db.stderr.log"
    log.write_bytes(b"ready to accept connections (the old instance)\n")
    watch = LogLineWatch(log, "ready to accept", LogLineWatch.size(log))
    assert watch.check() is None
    with log.open("ab") as f:
        f.write(b"redo starts at 0/1\nready to acc")
    assert watch.check() is None
    with log.open("ab") as f:
        f.write(b"ept connections\n")
    assert watch.check() == "ready to accept connections"
    log.write_bytes(b"ready to accept again\n")  # rotated: shorter than where the watch was
    assert watch.check() == "ready to accept again"


def test_belongs_to_is_the_main_process_its_session_or_its_cgroup() -> None:
    import os

    assert belongs_to(os.getpid(), os.getpid(), None)
    assert belongs_to(os.getpid(), os.getsid(0), None)
    assert not belongs_to(os.getpid(), 999_999_999, None)
