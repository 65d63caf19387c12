"""The ``log_signature`` detector: windows of a unit's log lines judged by a signature; a known anomaly
is a LOG_SIGNATURE verdict, a new mix a LOG_ANOMALY one; a flood is mined only within its bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from enmei.config.load import load_text
from enmei.detect import registry
from enmei.detect.logsignature import LogSignatureDetector, LogSignatureOptions, resolve_signature
from enmei.detect.protocol import DetectorContext, ProbeInfo
from enmei.errors import ConfigError
from enmei.logs.signatures import Signature
from enmei.model import Observation, Severity, VerdictKind

CTX = DetectorContext("web", probes=(ProbeInfo("log", "log"),))


def _signature() -> Signature:
    # as scikit-learn makes it: classes sorted, one logistic output for the second class ("normal"):
    # p(normal) = sigmoid(10 tick - 20 error + 2): all ticks -> normal; half errors -> fault (p ~ 0.95)
    w = np.array([[10.0], [-20.0]])
    return Signature("demo", ["tick <*>", "ERROR boom <*>"], ["fault", "normal"], {"fault": "restart"},
                     [(w, np.array([2.0]))], window=10, min_p=0.8, max_novel=0.3)


def _det(**opts: object) -> LogSignatureDetector:
    o = LogSignatureOptions.model_validate({"kind": "log_signature", "signature": "x.json", **opts})
    return LogSignatureDetector("web", o, _signature(), "x.json")


def _obs(lines: list[str], t: float, probe: str = "log") -> Observation:
    return Observation("web", probe, True, t, 1e9 + t, {}, None, tuple(lines))


def _normal(n: int, k: int = 0) -> list[str]:
    return [f"tick {k + i}" for i in range(n)]


def _fault(n: int, k: int = 0) -> list[str]:
    return [f"tick {k + i}" if i % 2 else f"ERROR boom {k + i}" for i in range(n)]


def test_a_known_anomaly_in_windows_in_a_row_is_a_log_signature_verdict() -> None:
    det = _det(confirm=2, hold_off_s=100)
    assert det.feed(_obs(_normal(30), 1.0)).verdicts == ()
    assert det.state()["last"]["label"] == "normal"
    assert det.feed(_obs(_fault(10), 2.0)).verdicts == ()  # one window: not yet
    (v,) = det.feed(_obs(_fault(10, 10), 3.0)).verdicts
    assert v.kind is VerdictKind.LOG_SIGNATURE and v.severity is Severity.CRITICAL
    assert v.detector == "signature:log_signature" and v.unit == "web"
    e = v.evidence
    assert e["class"] == "fault" and e["remedy"] == "restart" and e["p"] >= 0.8 and e["windows"] == 2
    assert e["application"] == "demo" and e["signature"] == "x.json" and e["window"] == 10
    assert "ERROR boom 19" in e["lines"][-1] or "tick 19" in e["lines"][-1]
    assert "looks like known anomaly fault" in v.summary
    # hold-off: more of the same within 100 s says nothing; after it, again
    assert det.feed(_obs(_fault(40, 20), 50.0)).verdicts == ()
    assert [x.kind for x in det.feed(_obs(_fault(20, 60), 200.0)).verdicts] == [VerdictKind.LOG_SIGNATURE]


def test_a_normal_window_breaks_the_streak_and_other_probes_are_ignored() -> None:
    det = _det(confirm=2, probe="log")
    assert det.feed(_obs(_fault(10), 1.0)).verdicts == ()
    assert det.feed(_obs(_normal(10), 2.0)).verdicts == ()
    assert det.feed(_obs(_fault(10), 3.0)).verdicts == ()
    assert det.feed(_obs(_fault(50), 4.0, probe="other")).verdicts == ()
    assert det.state()["streak"] == {"what": "fault", "windows": 1}


def test_a_new_mix_of_messages_is_an_unknown_log_anomaly() -> None:
    det = _det(confirm=2)
    novel = [f"disk quota exceeded on volume {i}" if i % 2 else f"tick {i}" for i in range(20)]
    (v,) = det.feed(_obs(novel, 1.0)).verdicts
    assert v.kind is VerdictKind.LOG_ANOMALY and v.evidence["rule"] == "novel mix"
    assert v.evidence["novel"] > 0.3 and "class" not in v.evidence


def test_a_flood_is_mined_within_its_bounds_and_the_rest_counted() -> None:
    det = _det(max_lines=500)
    det.feed(_obs(_normal(5_000), 1.0))
    assert det.state()["mined"] == 500 and det.state()["dropped"] == 4_500
    slow = _det(max_lines=1_000_000, max_feed_s=0.001)
    slow.feed(_obs([f"line {i} of a flood with words w{i % 977}" for i in range(50_000)], 1.0))
    s = slow.state()
    assert s["mined"] + s["dropped"] == 50_000 and s["dropped"] > 0


def test_the_shipped_demo_signature_and_a_bad_file_as_config(tmp_path: Path) -> None:
    assert resolve_signature("@enmei/demo").is_file()
    det = registry.build(CTX, LogSignatureOptions.model_validate(registry.get("log_signature").example))
    assert det.state()["application"] == "enmei-demo"
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "enmei.logs.signatures", "version": 99}')
    with pytest.raises(ConfigError) as err:
        load_text(f"""
[units.web]
command = ["/bin/true"]
[[units.web.probes]]
kind = "log"
[[units.web.detectors]]
kind = "log_signature"
signature = "{bad}"
""", tmp_path / "enmei.toml")
    assert str(bad) in str(err.value) and "version 99" in str(err.value)
