"""Shared fixtures. Every process a test starts is reaped, every temp dir removed (pytest's tmp_path)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support.wait import SLOWNESS, scaled

PYTHON = sys.executable


def pytest_report_header(config: pytest.Config) -> str:
    return f"enmei: machine slowness {SLOWNESS:.2f} (timeouts are stretched by it; ENMEI_TEST_SLOWNESS overrides)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stretch every test's pytest-timeout (the ini default or its own mark) by the machine's slowness, so
    that a loaded machine gets more time instead of a killed test; an idle one keeps the bound as written."""
    default = float(config.getini("timeout") or 0)
    for item in items:
        mark = item.get_closest_marker("timeout")
        seconds = default
        if mark is not None:
            seconds = float(mark.args[0] if mark.args else mark.kwargs.get("timeout", default))
        if seconds > 0:
            item.add_marker(pytest.mark.timeout(scaled(seconds)), append=False)


@pytest.fixture
def write_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write an enmei.toml into tmp_path and return its path."""

    def write(text: str, name: str = "enmei.toml") -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p

    return write
