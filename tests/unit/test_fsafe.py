"""fsafe: enmei trusts only files and directories that no other user can change, never via a symlink."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

import pytest

import enmei.fsafe
from enmei.fsafe import (
    UnsafePathError,
    check_dir,
    check_file,
    ensure_dir,
    open_append,
    read_private,
    write_atomic,
)

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def test_doctests() -> None:
    assert doctest.testmod(enmei.fsafe).failed == 0


def test_own_private_dir_and_files_pass(tmp_path: Path) -> None:
    d = ensure_dir(tmp_path / "state")
    assert d.stat().st_mode & 0o777 == 0o700
    write_atomic(d / "key", b"k" * 32, mode=0o600)
    assert read_private(d / "key", "anchor key") == b"k" * 32
    assert check_file(d / "key", "anchor key", private=True) is not None
    assert check_file(d / "missing", "x") is None


def test_dir_writable_by_others_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir()
    d.chmod(0o777)
    with pytest.raises(UnsafePathError, match=r"state dir.*lets other users write"):
        check_dir(d)


def test_parent_writable_by_others_is_refused_unless_sticky(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    (parent / "state").mkdir(parents=True)
    parent.chmod(0o777)
    with pytest.raises(UnsafePathError, match="parent"):
        check_dir(parent / "state")
    parent.chmod(0o1777)  # like /tmp: others cannot move what we own
    check_dir(parent / "state")


@needs_root
def test_dir_and_file_of_another_user_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        check_dir(d)
    f = tmp_path / "anchor.key"
    f.write_bytes(b"k" * 32)
    f.chmod(0o600)
    os.chown(f, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match="owned by uid 65534"):
        read_private(f, "anchor key")


def test_private_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "anchor.key"
    f.write_bytes(b"k" * 32)
    f.chmod(0o644)
    with pytest.raises(UnsafePathError, match="must be 0600"):
        read_private(f, "anchor key")


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "root-only"
    target.write_bytes(b"secret")
    target.chmod(0o600)
    (tmp_path / "u.stdout.log").symlink_to(target)
    with pytest.raises(UnsafePathError, match="symlink"):
        open_append(tmp_path / "u.stdout.log", "log of u")
    with pytest.raises(UnsafePathError, match="symlink"):
        check_file(tmp_path / "u.stdout.log", "log of u")
    (tmp_path / "k").symlink_to(target)
    with pytest.raises(UnsafePathError, match="symlink"):
        read_private(tmp_path / "k", "anchor key")
    assert target.read_bytes() == b"secret"


def test_write_atomic_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"untouched")
    (tmp_path / "units.json").symlink_to(target)
    write_atomic(tmp_path / "units.json", b"{}")
    assert target.read_bytes() == b"untouched"
    assert not (tmp_path / "units.json").is_symlink() and (tmp_path / "units.json").read_bytes() == b"{}"
