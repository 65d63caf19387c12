"""The docstring examples of the QEMU backend's modules run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["enmei.visor.qemu", "enmei.visor.qemu.console", "enmei.visor.qemu.cpio",
           "enmei.visor.qemu.netcount", "enmei.visor.qemu.monitor_api", "enmei.visor.logs",
           "enmei.visor.qemu.guestmem", "enmei.visor.qemu.kmods"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
