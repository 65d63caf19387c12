"""Signatures trained with scikit-learn: a window's template mix names its class, a new mix is unknown;
the file maps templates by text, so a signature trained here works from a fresh miner and on another
enmei (export here, import there, test there)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from enmei.cli.main import app
from enmei.logs.signatures import UNKNOWN, Signature, train

pytestmark = pytest.mark.integration

RNG = random.Random(0)


def normal(n: int) -> list[str]:
    return [f"GET /api/items/{RNG.randint(1, 999)} 200 {RNG.randint(1, 30)}ms" if RNG.random() < 0.9
            else f"cache hit ratio {RNG.random():.2f}" for _ in range(n)]


def leak(n: int) -> list[str]:
    return [f"GET /api/items/{RNG.randint(1, 999)} 200 {RNG.randint(100, 900)}ms" if RNG.random() < 0.6
            else f"gc pause {RNG.randint(100, 999)}ms heap {RNG.randint(900, 1000)}MiB" for _ in range(n)]


def slow_db(n: int) -> list[str]:
    return [f"GET /api/items/{RNG.randint(1, 999)} 504 {RNG.randint(1000, 3000)}ms" if RNG.random() < 0.5
            else f"db query timeout after {RNG.randint(1, 5)}s on pool {RNG.randint(1, 4)}" for _ in range(n)]


def crash_loop(n: int) -> list[str]:
    return [f"worker {RNG.randint(1, 9)} exited with signal {RNG.randint(6, 11)}" if RNG.random() < 0.5
            else f"respawning worker {RNG.randint(1, 9)}" for _ in range(n)]


@pytest.fixture(scope="module")
def sig() -> Signature:
    return train([("normal", normal(1000)), ("leak", leak(1000)), ("slow_db", slow_db(1000))],
                 application="demo", window=50, remedies={"leak": "rejuvenate", "slow_db": "alert"})


def test_known_classes_are_named_and_a_new_mix_is_unknown(sig: Signature) -> None:
    # a fresh signature from the file, as another enmei would load it: the mapping is by template text
    other = Signature.loads(sig.dumps())
    miner, index = other.miner()
    for name, gen in (("normal", normal), ("leak", leak), ("slow_db", slow_db)):
        labels = [other.predict(gen(50), miner, index).label for _ in range(20)]
        # never another known class; unsure (unknown) at most once in 20
        assert set(labels) <= {name, UNKNOWN} and labels.count(name) >= 19, (name, labels)
    crash = [other.predict(crash_loop(50), miner, index) for _ in range(5)]
    assert all(p.label == UNKNOWN and p.novel == 1.0 for p in crash)
    assert other.remedies["leak"] == "rejuvenate"


def test_one_class_cannot_be_trained() -> None:
    with pytest.raises(ValueError, match="two classes"):
        train([("normal", normal(100))], application="demo", window=10)


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _enmei(*args: str) -> _Result:
    # in this process (typer's runner): a subprocess per command cost ~7 s each on the loaded machine
    res = CliRunner().invoke(app, ["signatures", *args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return _Result(res.exit_code, res.stdout, res.stderr)


def test_exported_on_one_enmei_imported_on_another_recognises_the_same_fault(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    files = {}
    for name, gen in (("normal", normal), ("leak", leak), ("slow_db", slow_db)):
        files[name] = tmp_path / f"{name}.log"
        files[name].write_text("\n".join(gen(600)) + "\n")
    r = _enmei("train", "web", "--dir", str(here), "--application", "demo", "--window", "50",
               *[a for n, f in files.items() for a in ("--class", f"{n}={f}")], "--remedy", "leak=rejuvenate")
    assert r.returncode == 0, r.stderr
    assert _enmei("export", "web", str(tmp_path / "web.sig.json"), "--dir", str(here)).returncode == 0
    r = _enmei("import", str(tmp_path / "web.sig.json"), "--name", "web", "--dir", str(there))
    assert r.returncode == 0, r.stderr
    assert "web: demo" in _enmei("list", "--dir", str(there)).stdout
    assert json.loads(_enmei("show", "web", "--dir", str(there)).stdout)["classes"]["leak"] == "rejuvenate"
    fresh = tmp_path / "later-leak.log"
    # invalid UTF-8 and a binary line in the log are judged like any odd line, not a crash
    fresh.write_bytes(("\n".join(leak(200)) + "\n").encode() + b"\xff\xfe\x00garbage\n")
    r = _enmei("test", "web", str(fresh), "--json", "--dir", str(there))
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)["counts"]
    assert counts.get("leak", 0) >= 3 and set(counts) <= {"leak", UNKNOWN}, counts
    # a second import of the same name is refused; a corrupt file is a clear error with exit code 3
    assert _enmei("import", str(tmp_path / "web.sig.json"), "--name", "web", "--dir", str(there)).returncode == 2
    (tmp_path / "bad.json").write_text("{")
    r = _enmei("import", str(tmp_path / "bad.json"), "--dir", str(there))
    assert r.returncode == 3 and "bad.json" in r.stderr and "not JSON" in r.stderr
