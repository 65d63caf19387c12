"""``enmei bench detect --quick --json`` on the real corpora (skipped where they were not put)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from enmei.bench import corpora
from enmei.bench.nab import default_nab_dir

pytestmark = pytest.mark.integration

DATA = corpora.default_data_dir()
if not (default_nab_dir() / "labels" / "combined_windows.json").exists() or not (
        DATA / "telemanom" / "labeled_anomalies.csv").exists() or not (DATA / "ucr").is_dir():
    pytest.skip(f"corpora not found (NAB at {default_nab_dir()}, others under {DATA})", allow_module_level=True)

KEYS = {"standard_fixed", "standard_optimised", "event_f1", "false_alarms_per_1000", "threshold"}


def test_quick_run_reports_every_corpus_and_detector_at_thresholds_fixed_on_nab() -> None:
    out = subprocess.run([sys.executable, "-m", "enmei", "bench", "detect", "--quick", "--json"],
                         capture_output=True, text=True, timeout=1800, check=True)
    result = json.loads(out.stdout)
    assert [r["corpus"] for r in result["corpora"]] == ["nab", "smap", "msl", "ucr"]
    assert set(result["detectors"]) >= {"enmei", "windowed_gaussian", "robust_z", "latency", "latency_charts"}
    nab = result["corpora"][0]["detectors"]
    for row in result["corpora"]:
        assert row["files"] >= 1
        assert set(row["detectors"]) == set(result["detectors"])
        # (The engine's latency stream and the charts are reported, not baselines: the margin is over the
        # three baselines.)
        best_baseline = max(v["standard_fixed"] for d, v in row["detectors"].items()
                            if d not in ("enmei", "latency", "latency_charts"))
        assert "standard_at_engine_alpha" in row["detectors"]["latency"]
        assert row["margin_over_best_baseline_fixed"] == pytest.approx(
            row["detectors"]["enmei"]["standard_fixed"] - best_baseline)
        for det, figures in row["detectors"].items():
            assert set(figures) >= KEYS
            assert 0.0 <= figures["event_f1"] <= 1.0 and figures["false_alarms_per_1000"] >= 0.0
            if row["corpus"] != "nab":
                # Fixed before this corpus was seen: NAB's threshold, never better than the corpus' own best.
                assert figures["threshold"] == nab[det]["threshold"]
                assert figures["standard_fixed"] <= figures["standard_optimised"] + 1e-9
                # The half whose files were analysed while designing enmei's detector, and the other.
                assert set(figures["standard_fixed_by_half"]) == ({"even", "odd"} if row["files"] > 1 else set())
    assert len(result["nab_test_folds"]["enmei"]) == result["k"] == 2
    assert result["nab_test_fold_min"] == min(result["nab_test_folds"]["enmei"])
    assert result["min_margin_over_best_baseline_fixed"] == min(
        r["margin_over_best_baseline_fixed"] for r in result["corpora"])
    assert set(result["goals"]) == {"margin_10_points_every_corpus", "false_alarms_at_most_windowed_gaussian",
                                    "nab_test_folds_at_least_70"}


def test_the_latency_learning_is_chosen_by_the_k_fold_protocol_among_the_candidates() -> None:
    out = subprocess.run([sys.executable, "-m", "enmei", "bench", "detect", "--learning-sweep", "--quick", "--json"],
                         capture_output=True, text=True, timeout=1800, check=True)
    result = json.loads(out.stdout)
    rows = result["candidates"]
    assert set(rows) == {"30", "60", "120", "250", "probation"} and result["k"] == 2
    eligible = {k: v["standard_fixed"] for k, v in rows.items() if k != "probation"}
    assert str(result["chosen"]) == max(eligible, key=lambda k: (eligible[k], -int(k)))
    for row in rows.values():
        assert len(row["test_folds"]) == 2 and row["standard_fixed"] == sum(row["test_folds"]) / 2
