"""Fixtures of the QEMU end-to-end tests (the helpers they share are in ``support.qemu``)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from enmei.visor.qemu import ImageInfo, build
from support.qemu import end_ups, require_qemu


@pytest.fixture(scope="module")
def qemu_image() -> ImageInfo:
    """The test image (built once, cached by its inputs' hash)."""
    require_qemu()
    return build()


@pytest.fixture
def ups(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list the test appends its ``enmei up`` processes to; they, every QEMU of the test and the guests'
    RAM files are gone after it, also on failure."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        end_ups(started, tmp_path)
