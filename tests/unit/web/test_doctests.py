"""The examples in the web and report modules' docstrings run, and say what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["enmei.web.app", "enmei.web.server", "enmei.web.views", "enmei.cli.report", "enmei.report.charts",
           "enmei.report.incidents"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_exports_are_what_the_packages_define() -> None:
    import enmei.report
    import enmei.web

    for pkg in (enmei.web, enmei.report):
        public = {n for n in vars(pkg) if not n.startswith("_") and n not in ("annotations",)}
        modules = {n for n in public if type(getattr(pkg, n)).__name__ == "module"}
        assert set(pkg.__all__) == public - modules, pkg.__name__
