"""Shared fixtures. Every process a test starts is reaped, every temp dir removed (pytest's tmp_path)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

PYTHON = sys.executable


@pytest.fixture
def write_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write an enmei.toml into tmp_path and return its path."""

    def write(text: str, name: str = "enmei.toml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return write
