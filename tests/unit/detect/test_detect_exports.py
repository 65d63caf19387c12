"""``__all__`` of enmei.detect and its modules names exactly what they define and export."""

from __future__ import annotations

import importlib
import inspect

import pytest

import enmei.detect

MODULES = ["aging", "base", "baselines", "charts", "ensemble", "failures", "judges", "logmatch", "nab_score",
           "narrow", "novelty", "pipeline", "protocol", "reaction", "registry", "unitset", "wiring"]


def test_package_all_matches_exports() -> None:
    """The package's names are resolved on first use (PEP 562): ``__all__`` is exactly what it resolves,
    each from the module that defines it, and nothing else is public."""
    lazy = enmei.detect._EXPORTS
    assert set(enmei.detect.__all__) == set(lazy)
    for name, module in lazy.items():
        obj = getattr(enmei.detect, name)
        assert getattr(obj, "__module__", f"enmei.detect.{module}") == f"enmei.detect.{module}", name
    public = {n for n, v in vars(enmei.detect).items() if not n.startswith("_") and not inspect.ismodule(v)}
    assert public <= set(lazy) | {"annotations", "Any", "TYPE_CHECKING"}


@pytest.mark.parametrize("name", MODULES)
def test_module_all_is_defined_here(name: str) -> None:
    mod = importlib.import_module(f"enmei.detect.{name}")
    for export in mod.__all__:
        obj = getattr(mod, export)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == mod.__name__, export
    defined = {n for n, v in vars(mod).items()
               if not n.startswith("_") and (inspect.isclass(v) or inspect.isfunction(v))
               and v.__module__ == mod.__name__}
    assert defined <= set(mod.__all__), defined - set(mod.__all__)
