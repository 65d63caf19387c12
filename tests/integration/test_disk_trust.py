"""The reproductions of issue 11 D3, D4, D9, D12 and SIGHUP, run as a user would: real `enmei up`
processes, real units, real SQLite. Each failed on the tree the issue was filed against."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

import psutil
import pytest

from .conftest import PY, Procs, enmei, wait_until

pytestmark = pytest.mark.integration

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's files needs root")


def _config(d: Path, *, state_dir: str = ".enmei", journal: str = "journal.sqlite", unit: str = "sleeper") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    cfg = d / "enmei.toml"
    cfg.write_text(f'[supervisor]\nstate_dir = "{state_dir}"\njournal = "{journal}"\n\n'
                   f'[units.{unit}]\ncommand = ["sleep", "300"]\nstart_s = 0.2\n')
    return cfg


def _records(journal: Path, sql: str = "SELECT seq, kind, body FROM records ORDER BY seq") -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


def _unit_pid(state: Path, unit: str = "sleeper") -> int | None:
    try:
        return int(json.loads((state / "units.json").read_text())["units"][unit]["pid"])
    except (OSError, ValueError, KeyError):
        return None


def _up(procs: Procs, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return procs.popen([PY, "-m", "enmei", "up", "--plain", str(cfg)], stdout=out, stderr=subprocess.STDOUT)


def _started(procs: Procs, cfg: Path, state: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    p = _up(procs, cfg, log)
    assert wait_until(lambda: _unit_pid(state) is not None or p.poll() is not None, timeout=60), log.read_text()
    assert p.poll() is None, log.read_text()
    pid = _unit_pid(state)
    assert pid is not None
    procs.adopt_pid(pid)
    return p, pid


def _up_once(procs: Procs, cfg: Path, log: Path) -> subprocess.CompletedProcess[str]:
    """`enmei up` expected to refuse at once; if it runs instead, it is stopped (and its units with it)
    at teardown like every process the test started, and the result says so."""
    p = _up(procs, cfg, log)
    try:
        rc = p.wait(timeout=90)
    except subprocess.TimeoutExpired:
        rc = -1  # it supervised instead of refusing
    return subprocess.CompletedProcess(p.args, rc, "", log.read_text(errors="replace"))


def _stop(p: subprocess.Popen[bytes]) -> int:
    p.send_signal(signal.SIGTERM)
    return p.wait(timeout=60)


def test_d3_a_cut_journal_is_refused_at_start_until_sealed(tmp_path: Path, procs: Procs) -> None:
    cfg = _config(tmp_path)
    state = tmp_path / ".enmei"
    journal = state / "journal.sqlite"
    p, _ = _started(procs, cfg, state, tmp_path / "up1.log")
    assert _stop(p) == 0
    last = int(_records(journal, "SELECT MAX(seq) FROM records")[0][0])  # type: ignore[call-overload]
    assert last > 10
    conn = sqlite3.connect(journal)
    conn.execute("DELETE FROM records WHERE seq > 10")
    conn.commit()
    conn.close()

    r = _up_once(procs, cfg, tmp_path / "refused1.log")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "records 11 to" in r.stderr and "box seal" in r.stderr
    assert _records(journal, "SELECT MAX(seq) FROM records")[0][0] == 10  # not continued, seq 11 not reused
    v = enmei("box", "verify", "-c", str(cfg), "--json")
    assert v.returncode == 4 and json.loads(v.stdout)["first_bad"] == 11  # still visible after the refused start

    s = enmei("box", "seal", "-c", str(cfg), "--reason", "cut by the test")
    assert s.returncode == 0, s.stderr
    p, _ = _started(procs, cfg, state, tmp_path / "up2.log")
    assert _stop(p) == 0
    v = enmei("box", "verify", "-c", str(cfg), "--json")
    out = json.loads(v.stdout)
    assert v.returncode == 0 and len(out["sealed"]) == 1 and "cut by the test" in out["sealed"][0]
    sealed = list(state.glob("journal.sqlite.sealed-*"))
    assert any(f.name.endswith(".head") for f in sealed)
    old = next(f for f in sealed if f.suffix != ".head" and not f.name.endswith(("-wal", "-shm")))
    assert enmei("box", "verify", "-j", str(old), "--key", str(state / "anchor.key")).returncode == 4


def test_d3_an_emptied_wal_after_kill_9_is_refused(tmp_path: Path, procs: Procs) -> None:
    cfg = _config(tmp_path)
    state = tmp_path / ".enmei"
    journal = state / "journal.sqlite"
    p, _ = _started(procs, cfg, state, tmp_path / "up1.log")
    p.kill()
    p.wait(timeout=30)
    wal = Path(f"{journal}-wal")
    assert wal.stat().st_size > 0
    wal.write_bytes(b"")
    r = _up_once(procs, cfg, tmp_path / "refused2.log")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "missing" in r.stderr and "no such table" not in r.stderr


def test_d12_a_deleted_key_is_not_regenerated(tmp_path: Path, procs: Procs) -> None:
    cfg = _config(tmp_path)
    state = tmp_path / ".enmei"
    p, _ = _started(procs, cfg, state, tmp_path / "up1.log")
    assert _stop(p) == 0
    (state / "anchor.key").unlink()
    r = _up_once(procs, cfg, tmp_path / "refused3.log")
    assert r.returncode == 4 and "anchor key" in r.stderr and "missing" in r.stderr, r.stderr
    assert not (state / "anchor.key").exists()


@needs_root
def test_d4_a_state_dir_of_another_user_is_refused(tmp_path: Path, procs: Procs) -> None:
    cfg = _config(tmp_path)
    state = tmp_path / ".enmei"
    state.mkdir()
    state.chmod(0o777)  # pre-created by another user, open to all
    victim = procs.popen(["sleep", "300"])  # "a root process" the planted state names as the unit
    ctime = psutil.Process(victim.pid).create_time()
    (state / "units.json").write_text(json.dumps({"version": 1, "units": {"sleeper": {
        "unit": "sleeper", "backend": "process", "pid": victim.pid, "create_time": ctime,
        "started_wall": ctime, "extra": {"pgid": victim.pid}}}}))
    os.chown(state, NOBODY, NOBODY)
    os.chown(state / "units.json", NOBODY, NOBODY)
    r = _up_once(procs, cfg, tmp_path / "refused4.log")
    assert r.returncode == 5 and str(state) in r.stderr and "owned by uid 65534" in r.stderr, r.stderr
    assert victim.poll() is None
    os.chown(state, 0, 0)  # ours again, but writable by everyone
    r = _up_once(procs, cfg, tmp_path / "refused5.log")
    assert r.returncode == 5 and "lets other users write" in r.stderr, r.stderr
    state.chmod(0o700)  # a safe dir, but the planted file is still another user's
    r = _up_once(procs, cfg, tmp_path / "refused6.log")
    assert r.returncode == 5 and "units.json" in r.stderr, r.stderr
    assert victim.poll() is None


@needs_root
def test_d4_a_planted_or_readable_anchor_key_is_refused(tmp_path: Path, procs: Procs) -> None:
    cfg = _config(tmp_path)
    state = tmp_path / ".enmei"
    state.mkdir(mode=0o700)
    key = state / "anchor.key"
    key.write_bytes(os.urandom(32))
    os.chown(key, NOBODY, NOBODY)
    r = _up_once(procs, cfg, tmp_path / "refused7.log")
    assert r.returncode == 5 and "anchor key" in r.stderr and "owned by uid 65534" in r.stderr, r.stderr
    os.chown(key, 0, 0)
    key.chmod(0o644)
    r = _up_once(procs, cfg, tmp_path / "refused8.log")
    assert r.returncode == 5 and "must be 0600" in r.stderr, r.stderr
    assert enmei("box", "verify", "-c", str(cfg)).returncode == 5  # verify does not trust it either


def test_d4_a_planted_logs_symlink_is_refused(tmp_path: Path, procs: Procs) -> None:
    cfg = _config(tmp_path)
    state = tmp_path / ".enmei"
    state.mkdir(mode=0o700)
    secret = tmp_path / "root-only"
    secret.write_bytes(b"secret\n")
    secret.chmod(0o600)
    (state / "logs").symlink_to(tmp_path)
    r = _up_once(procs, cfg, tmp_path / "refused9.log")
    assert r.returncode == 5 and "symlink" in r.stderr, r.stderr
    assert secret.read_bytes() == b"secret\n" and not list(tmp_path.glob("sleeper.*"))


def test_d9_two_supervisors_on_one_state_dir(tmp_path: Path, procs: Procs) -> None:
    a = _config(tmp_path / "a", state_dir="../state", journal="a.sqlite")
    b = _config(tmp_path / "b", state_dir="../state", journal="b.sqlite")
    state = tmp_path / "state"
    p, _ = _started(procs, a, state, tmp_path / "a.log")
    r = _up_once(procs, b, tmp_path / "refused10.log")
    assert r.returncode == 5 and "another enmei" in r.stderr and str(p.pid) in r.stderr, r.stderr
    assert not (state / "b.sqlite").exists()
    assert _stop(p) == 0


def test_sighup_is_journaled_and_does_not_kill_enmei(tmp_path: Path, procs: Procs) -> None:
    cfg = _config(tmp_path)
    state = tmp_path / ".enmei"
    journal = state / "journal.sqlite"
    p, pid = _started(procs, cfg, state, tmp_path / "up.log")
    p.send_signal(signal.SIGHUP)

    def hup_journaled() -> bool:
        return any(json.loads(str(b)).get("signal") == "SIGHUP"
                   for _, _, b in _records(journal, "SELECT seq, kind, body FROM records WHERE kind='supervisor'"))

    assert wait_until(hup_journaled, timeout=30), (tmp_path / "up.log").read_text()
    assert p.poll() is None and psutil.pid_exists(pid)
    assert _stop(p) == 0
    assert wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                      timeout=30)  # still supervised: the stop stopped the unit


def test_d4_a_planted_log_file_symlink_is_not_followed(tmp_path: Path, procs: Procs) -> None:
    cfg = tmp_path / "enmei.toml"
    cfg.write_text('[units.talker]\ncommand = ["sh", "-c", "while :; do echo hello; sleep 0.05; done"]\n'
                   'start_s = 0.2\n[units.talker.log]\nmax_bytes = "2KiB"\nkeep = 1\n')
    state = tmp_path / ".enmei"
    (state / "logs").mkdir(parents=True)
    state.chmod(0o700)
    secret = tmp_path / "root-only"
    secret.write_bytes(b"secret\n")
    secret.chmod(0o600)
    (state / "logs" / "talker.stdout.log").symlink_to(secret)
    p = _up(procs, cfg, tmp_path / "up.log")

    def refused() -> bool:  # the capture names the symlink (journaled, or at least logged) and drops output
        try:
            rows = _records(state / "journal.sqlite")
        except sqlite3.Error:  # not made yet
            rows = []
        said = (tmp_path / "up.log").read_text(errors="replace").replace("\n", "")
        return any("is a symlink" in str(body) for _, _, body in rows) or (
            "is a symlink" in said and "talker.stdout.log" in said)

    assert wait_until(lambda: p.poll() is not None or refused(), timeout=90), (tmp_path / "up.log").read_text()
    assert p.poll() is None  # the supervisor goes on
    pid = _unit_pid(state, "talker")
    if pid is not None:
        procs.adopt_pid(pid)
    assert _stop(p) == 0
    assert secret.read_bytes() == b"secret\n"  # not written through, not truncated, not copied
    assert not any(b"secret" in f.read_bytes() for f in (state / "logs").glob("talker.stdout.log*")
                   if not f.is_symlink())  # no copy of it


def test_d10_a_rolled_back_state_dir_is_named_by_a_witness_elsewhere(tmp_path: Path, procs: Procs) -> None:
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[supervisor]\n", '[supervisor]\nwitness = "elsewhere/enmei.witness"\n'))
    (tmp_path / "elsewhere").mkdir()
    state = tmp_path / ".enmei"
    journal = state / "journal.sqlite"
    p, _ = _started(procs, cfg, state, tmp_path / "up1.log")
    assert _stop(p) == 0
    backup = tmp_path / "backup"
    shutil.copytree(state, backup, symlinks=True)  # journal, head, key, its witness
    p, _ = _started(procs, cfg, state, tmp_path / "up2.log")
    assert _stop(p) == 0
    newer = _records(journal, "SELECT MAX(seq) FROM records")[0][0]
    shutil.rmtree(state)
    shutil.copytree(backup, state, symlinks=True)  # the whole state dir rolled back
    older = _records(journal, "SELECT MAX(seq) FROM records")[0][0]
    assert older < newer  # type: ignore[operator]

    key = state / "anchor.key"
    alone = enmei("box", "verify", "-j", str(journal), "--key", str(key), "--json")
    assert alone.returncode == 0  # consistent with itself and with the witness rolled back beside the key
    named = enmei("box", "verify", "-j", str(journal), "--key", str(key), "--json",
                  "--witness", str(tmp_path / "elsewhere" / "enmei.witness"))
    assert named.returncode == 4, named.stdout + named.stderr
    out = json.loads(named.stdout)
    assert "rolled back" in out["reason"] and f"names record {newer}" in out["reason"]
    assert enmei("box", "verify", "-c", str(cfg)).returncode == 4  # the config names the witness
    r = _up_once(procs, cfg, tmp_path / "refused.log")
    assert r.returncode == 4 and "rolled back" in r.stderr, r.stderr
