"""Signature files: windows, the versioned format, and every way a file can be bad."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from enmei.logs.signatures import UNKNOWN, Signature, SignatureFileError, windows


def _sig() -> Signature:
    # two inputs ("a <*>", "b <*>"), no hidden layer, two classes: the output is which template dominates
    w = np.array([[-8.0], [8.0]])
    return Signature("demo", ["a <*>", "b <*>"], ["normal", "fault"], {"fault": "restart"},
                     [(w, np.array([0.0]))], window=10)


def test_the_network_reads_the_mix_and_a_new_mix_is_unknown() -> None:
    sig = Signature.loads(_sig().dumps())
    miner, index = sig.miner()
    assert sig.predict([f"b {i}" for i in range(10)], miner, index).label == "fault"
    assert sig.predict([f"a {i}" for i in range(10)], miner, index).label == "normal"
    even = sig.predict([f"{'ab'[i % 2]} {i}" for i in range(10)], miner, index)
    assert even.label == UNKNOWN and even.p == 0.5  # unsure
    novel = sig.predict(["disk full on /dev/sda1"] * 10, miner, index)
    assert novel.label == UNKNOWN and novel.novel == 1.0


def test_windows_cuts_consecutive_windows() -> None:
    assert windows(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e", "f"]]  # the last, 1 of 3, is too short
    assert windows(list("abcdefgh"), 3)[-1] == ["g", "h"]
    with pytest.raises(ValueError, match="at least 1"):
        windows(["a"], 0)


def _broken(change: str) -> str:
    doc = json.loads(_sig().dumps())
    if change == "version":
        doc["version"] = 2
    elif change == "format":
        doc["format"] = "enmei.logs.templates"
    elif change == "shape":
        doc["vocabulary"] = doc["vocabulary"][:-1]
    elif change == "nan":
        doc["model"]["layers"][0]["weights"][0][0] = float("nan")
    elif change == "min_p":
        doc["min_p"] = 3
    return json.dumps(doc)


@pytest.mark.parametrize(("change", "reason"), [("version", "version 2"), ("format", "not a signature file"),
                                                ("shape", "expected"), ("nan", "non-finite"), ("min_p", "min_p")])
def test_a_bad_file_is_a_clear_error(tmp_path: Path, change: str, reason: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(_broken(change))
    with pytest.raises(SignatureFileError) as ei:
        Signature.load(path)
    assert str(path) in str(ei.value) and reason in str(ei.value)


def test_garbage_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(b"\xff\x00garbage")
    with pytest.raises(SignatureFileError, match="not JSON"):
        Signature.load(path)
