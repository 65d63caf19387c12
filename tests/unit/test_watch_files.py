"""The files an enmei and its watchers share (``enmei.watch.files``, ``enmei.watch.beat.Heartbeat``)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from enmei.watch.beat import Heartbeat
from enmei.watch.files import BEAT_SIZE, lock_holder, proc_start, read_beat
from enmei.watch.watcher import TargetError, resolve


def test_the_heartbeat_counts_only_when_the_loop_moved_and_is_read_back(tmp_path: Path) -> None:
    beat = Heartbeat(tmp_path).open()
    try:
        beat.write("running")
        beat.write("running", moved=False)  # a stalled loop: rewritten, not counted
        got = read_beat(tmp_path)
        assert got is not None and got["beat"] == 1 and got["pid"] == os.getpid() and got["state"] == "running"
        beat.write("stopped")
        assert (read_beat(tmp_path) or {}).get("state") == "stopped"
        assert (tmp_path / "heartbeat").stat().st_size == BEAT_SIZE  # rewritten in place, never grows
        assert (tmp_path / "heartbeat").stat().st_mode & 0o077 == 0
    finally:
        beat.close()


def test_a_torn_or_foreign_heartbeat_reads_as_none(tmp_path: Path) -> None:
    assert read_beat(tmp_path) is None
    (tmp_path / "heartbeat").write_bytes(b'{"v":1,"pid":12,"be')
    assert read_beat(tmp_path) is None
    (tmp_path / "heartbeat").write_bytes(b'{"v":2,"pid":12}')
    assert read_beat(tmp_path) is None


def test_the_lock_holder_is_read_without_taking_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "enmei.lock"
    assert lock_holder(lock) is None
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert lock_holder(lock) is None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert lock_holder(lock) == os.getpid()
    finally:
        os.close(fd)
    assert lock_holder(lock) is None
    assert proc_start(os.getpid()) == proc_start(os.getpid()) is not None


def test_a_target_is_a_state_dir_or_a_config_naming_one(tmp_path: Path) -> None:
    assert resolve(tmp_path) == (tmp_path, None)
    cfg = tmp_path / "enmei.toml"
    cfg.write_text('[supervisor]\nstate_dir = "s"\n[units.x]\ncommand = 5\n')  # broken, but names its state dir
    assert resolve(cfg) == ((tmp_path / "s").resolve(), cfg)
    cfg.write_text("[units.x\n")
    with pytest.raises(TargetError, match="not TOML") as info:
        resolve(cfg)
    assert str(cfg) in str(info.value)
    with pytest.raises(TargetError, match="no such config file or state dir"):
        resolve(tmp_path / "missing.toml")
