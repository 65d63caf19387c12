"""The state dir: checked before it is trusted, held by one supervisor at a time (issue 11 D4, D9)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enmei.engine.statedir import StateDir
from enmei.errors import BoxError
from enmei.fsafe import UnsafePathError


def test_one_holder_at_a_time_whatever_the_journal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateDir(state, journal=state / "a.sqlite"), \
            pytest.raises(BoxError, match=rf"another enmei \(pid {os.getpid()}\)"):
        StateDir(state, journal=state / "b.sqlite").open()
    StateDir(state).open().close()  # released at close


def test_made_private_and_leftover_temp_files_removed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with StateDir(state):
        assert state.stat().st_mode & 0o777 == 0o700
    (state / ".units.json.4242.tmp").write_text("{half")
    (state / ".keep.me").write_text("not ours")
    with StateDir(state):
        assert not (state / ".units.json.4242.tmp").exists()
        assert (state / ".keep.me").exists()


def test_unsafe_files_are_refused_before_the_lock(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    key = tmp_path / "keys" / "anchor.key"
    key.parent.mkdir()
    key.write_bytes(b"k" * 32)
    key.chmod(0o640)
    with pytest.raises(UnsafePathError, match="must be 0600"):
        StateDir(state, key=key).open()
    key.chmod(0o600)
    (state / "units.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(UnsafePathError, match="symlink"):
        StateDir(state, key=key).open()
    assert not (state / "enmei.lock").exists()
