"""``enmei bench logs``: template mining on the Loghub-2k sets, Drain3 beside it, and HDFS sessions.

**Templates.** Each of the 16 Loghub-2k sets (``<Set>/<Set>_2k.log_structured_corrected.csv``: the
message part of each line — after the set's header format — with its corrected ground-truth template)
is mined line by line by :class:`enmei.logs.miner.TemplateMiner` with its default settings, and by
Drain3 with its own defaults (``TemplateMinerConfig()``: similarity 0.4, depth 4, no masking) on the
same lines in the same run. Grouping and parsing accuracy are defined in :mod:`enmei.logs.accuracy`;
``lines_per_s`` is all lines over the time spent in the miners' ``add`` calls only (CSV reading apart);
on each set both miners run ``repeats`` times, alternately, each time from scratch (enmei's memoised
masks forgotten too), and each one's fastest run counts — a loaded machine slows single runs at random
by 2x here, and the minimum is the run least disturbed, for both alike.
The miner's generic rules and its similarity were chosen by looking at four sets only, ``DEV_SETS``;
the means over the other twelve are given apart (``*_heldout``).

**HDFS sessions** (``HDFS/deeplog_sessions``, DeepLog's files: one block's session per line as a
sequence of template keys; ``hdfs_train`` holds normal sessions, ``hdfs_test_abnormal`` anomalous
ones). Each session is a vector of template counts. The split is by file order, never at random
(random splits inflate log anomaly results, Le & Zhang ICSE'22): in each file the first
``HDFS_TRAIN_SHARE`` of the sessions train a decision tree, the rest test it. The files carry no
times; file order is the order DeepLog wrote them in. ``hdfs_*`` treat "anomalous" as the positive class.

**Fault classes** (``fault_class_*``, ``unknown_detection_rate``): our own data set, the demo service's
log under injected faults, split by run and time: see :mod:`enmei.bench.logfaults`.

The data is Loghub's (research use): read from ``$ENMEI_LOGHUB_DIR`` or ``../shared/data/loghub``,
never copied. Drain3 and scikit-learn come with the ``bench`` extra.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enmei.logs.accuracy import grouping_accuracy, parsing_accuracy
from enmei.logs.masking import forget_memos
from enmei.logs.miner import TemplateMiner, _is_word

__all__ = ["DEV_SETS", "HDFS_TRAIN_SHARE", "SETS", "default_loghub_dir", "hdfs_sessions", "mine_set", "run"]

SETS = ("Android", "Apache", "BGL", "HDFS", "HPC", "Hadoop", "HealthApp", "Linux", "Mac", "OpenSSH",
        "OpenStack", "Proxifier", "Spark", "Thunderbird", "Windows", "Zookeeper")
# The sets whose lines were looked at while choosing the rules and settings (see the README).
DEV_SETS = ("Android", "Apache", "BGL", "HDFS", "Hadoop", "OpenStack", "Proxifier")
HDFS_TRAIN_SHARE = 0.5


def default_loghub_dir() -> Path:
    """``$ENMEI_LOGHUB_DIR``, else ``../shared/data/loghub`` from cwd or the repository, else
    ``/work/shared/data/loghub``; the first that holds ``HDFS/``."""
    env = os.environ.get("ENMEI_LOGHUB_DIR")
    if env:
        return Path(env)
    candidates = [Path.cwd() / ".." / "shared" / "data" / "loghub"]
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").exists():
            candidates.append(parent / ".." / "shared" / "data" / "loghub")
            break
    candidates.append(Path("/work/shared/data/loghub"))
    for c in candidates:
        if (c / "HDFS").is_dir():
            return c.resolve()
    return candidates[0]


def load_set(root: Path, name: str, limit: int | None = None) -> tuple[list[str], list[str]]:
    """The messages and their true templates of one Loghub-2k set (``FileNotFoundError`` if absent)."""
    path = root / name / f"{name}_2k.log_structured_corrected.csv"
    contents: list[str] = []
    truth: list[str] = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            contents.append(row["Content"])
            truth.append(row["EventTemplate"])
            if limit is not None and len(contents) >= limit:
                break
    return contents, truth


def mine_set(contents: Sequence[str]) -> tuple[list[int], list[str], float]:
    """enmei's miner over the lines, from cold (no memoised masks): per-line group ids, per-line final
    templates, seconds in ``add``."""
    forget_memos()
    _is_word.cache_clear()
    miner = TemplateMiner()
    t0 = time.perf_counter()
    ids = [miner.add(line).template_id for line in contents]
    dt = time.perf_counter() - t0
    ids = [miner.resolve(i) for i in ids]  # the final grouping: merged families count as one
    final = {t.id: t.text for t in miner.templates()}
    return ids, [final[i] for i in ids], dt


def drain3_set(contents: Sequence[str]) -> tuple[list[int], list[str], float]:
    """Drain3 with its default settings over the same lines, the same three results."""
    from drain3 import TemplateMiner as Drain3  # type: ignore[import-untyped]
    from drain3.template_miner_config import TemplateMinerConfig  # type: ignore[import-untyped]

    logging.getLogger("drain3").setLevel(logging.WARNING)  # it says "Starting ..." at INFO on each start
    miner = Drain3(config=TemplateMinerConfig())
    t0 = time.perf_counter()
    ids = [int(miner.add_log_message(line)["cluster_id"]) for line in contents]
    dt = time.perf_counter() - t0
    final = {int(c.cluster_id): str(c.get_template()) for c in miner.drain.clusters}
    return ids, [final[i] for i in ids], dt


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def hdfs_sessions(root: Path, train_share: float = HDFS_TRAIN_SHARE) -> dict[str, Any]:
    """Template-count vectors of DeepLog's HDFS sessions, split by file order, a decision tree."""
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier  # type: ignore[import-untyped]

    base = root / "HDFS" / "deeplog_sessions"

    def read(name: str) -> list[list[int]]:
        with (base / name).open(encoding="ascii") as f:
            return [[int(k) for k in line.split()] for line in f if line.strip()]

    normal, abnormal = read("hdfs_train"), read("hdfs_test_abnormal")
    n_keys = 1 + max(max(s) for s in normal + abnormal if s)

    def vectors(sessions: list[list[int]]) -> Any:
        out = np.zeros((len(sessions), n_keys), dtype=np.float64)
        for i, s in enumerate(sessions):
            for k in s:
                out[i, k] += 1
        return out

    cut_n, cut_a = int(len(normal) * train_share), int(len(abnormal) * train_share)
    x_train = np.vstack([vectors(normal[:cut_n]), vectors(abnormal[:cut_a])])
    y_train = np.array([0] * cut_n + [1] * cut_a)
    x_test = np.vstack([vectors(normal[cut_n:]), vectors(abnormal[cut_a:])])
    y_test = np.array([0] * (len(normal) - cut_n) + [1] * (len(abnormal) - cut_a))
    t0 = time.perf_counter()
    clf = DecisionTreeClassifier(random_state=0).fit(x_train, y_train)
    pred = clf.predict(x_test)
    dt = time.perf_counter() - t0
    tp = int(((pred == 1) & (y_test == 1)).sum())
    fp = int(((pred == 1) & (y_test == 0)).sum())
    fn = int(((pred == 0) & (y_test == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    train_rows = {tuple(r) for r in x_train.astype(int).tolist()}
    unseen = [i for i, r in enumerate(x_test.astype(int).tolist()) if tuple(r) not in train_rows]
    unseen_right = sum(int(pred[i] == y_test[i]) for i in unseen)
    return {
        "hdfs_precision": round(precision, 4), "hdfs_recall": round(recall, 4), "hdfs_f1": round(f1, 4),
        "hdfs_train_sessions": {"normal": cut_n, "abnormal": cut_a},
        "hdfs_test_sessions": {"normal": len(normal) - cut_n, "abnormal": len(abnormal) - cut_a},
        # test sessions whose count vector never occurs in training, and how many of those were right
        "hdfs_test_unseen_vectors": len(unseen),
        "hdfs_test_unseen_accuracy": round(unseen_right / len(unseen), 4) if unseen else None,
        "hdfs_seconds": round(dt, 3),
    }


def default_faults_file() -> Path:
    """``$ENMEI_LOGFAULTS``, else the repository's ``tests/data/logfaults/demo.jsonl.gz`` (made by
    ``python -m enmei.bench.logfaults``; it is test data, never part of the package)."""
    env = os.environ.get("ENMEI_LOGFAULTS")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").exists():
            return parent / "tests" / "data" / "logfaults" / "demo.jsonl.gz"
    return Path("tests/data/logfaults/demo.jsonl.gz")


def run(data_dir: Path | None = None, sets: Sequence[str] = SETS, *, drain3: bool = True, hdfs: bool = True,
        limit: int | None = None, repeats: int = 3, faults: Path | bool | None = True) -> dict[str, Any]:
    """The benchmark (see the module docstring). ``limit``: only the first lines of each set (a smoke
    run); ``repeats``: runs of each miner on each set, the fastest timed (results are the same each run);
    ``faults``: the fault-class data set's figures (:mod:`enmei.bench.logfaults`) from that file, or the
    default one (True), or none (False)."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    root = Path(data_dir) if data_dir is not None else default_loghub_dir()
    per_set: dict[str, dict[str, Any]] = {}
    lines = 0
    ours_s = d3_s = 0.0
    for name in sets:
        contents, truth = load_set(root, name, limit)
        ids, templates, dt = mine_set(contents)
        d3_runs: list[tuple[list[int], list[str], float]] = []
        for k in range(repeats):
            if k:
                dt = min(dt, mine_set(contents)[2])
            if drain3:
                d3_runs.append(drain3_set(contents))
        row: dict[str, Any] = {
            "lines": len(contents), "grouping_accuracy": round(grouping_accuracy(ids, truth), 4),
            "parsing_accuracy": round(parsing_accuracy(templates, truth), 4),
            "templates": len(set(ids)), "true_templates": len(set(truth)), "dev": name in DEV_SETS}
        lines += len(contents)
        ours_s += dt
        if drain3:
            d_ids, d_templates, _ = d3_runs[0]
            d_dt = min(r[2] for r in d3_runs)
            row["drain3_grouping_accuracy"] = round(grouping_accuracy(d_ids, truth), 4)
            row["drain3_parsing_accuracy"] = round(parsing_accuracy(d_templates, truth), 4)
            d3_s += d_dt
        per_set[name] = row
    rows = list(per_set.values())
    held = [r for r in rows if not r["dev"]]
    dev = [r for r in rows if r["dev"]]
    out: dict[str, Any] = {
        "grouping_accuracy_mean": _mean([r["grouping_accuracy"] for r in rows]),
        "parsing_accuracy_mean": _mean([r["parsing_accuracy"] for r in rows]),
        "grouping_accuracy_mean_heldout": _mean([r["grouping_accuracy"] for r in held]),
        "parsing_accuracy_mean_heldout": _mean([r["parsing_accuracy"] for r in held]),
        "grouping_accuracy_mean_dev": _mean([r["grouping_accuracy"] for r in dev]),
        "parsing_accuracy_mean_dev": _mean([r["parsing_accuracy"] for r in dev]),
        "lines_per_s": round(lines / ours_s) if ours_s else 0,
    }
    if drain3:
        out.update({
            "drain3_grouping_accuracy_mean": _mean([r["drain3_grouping_accuracy"] for r in rows]),
            "drain3_parsing_accuracy_mean": _mean([r["drain3_parsing_accuracy"] for r in rows]),
            "drain3_grouping_accuracy_mean_heldout": _mean([r["drain3_grouping_accuracy"] for r in held]),
            "drain3_parsing_accuracy_mean_heldout": _mean([r["drain3_parsing_accuracy"] for r in held]),
            "drain3_lines_per_s": round(lines / d3_s) if d3_s else 0,
        })
    if hdfs:
        out.update(hdfs_sessions(root))
    if faults is not False:
        from enmei.bench import logfaults

        path = default_faults_file() if faults is True or faults is None else Path(faults)
        out.update(logfaults.evaluate(logfaults.load(path)))
        out["fault_class_data"] = str(path)
    out["lines"] = lines
    out["timing_repeats"] = repeats
    out["dev_sets"] = [s for s in sets if s in DEV_SETS]
    out["per_set"] = per_set
    return out
