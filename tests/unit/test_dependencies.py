"""pyproject.toml's runtime dependencies are exactly what enmei's code imports (ast, not the installed venv)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import enmei

SRC = Path(enmei.__file__).parent
PYPROJECT = SRC.parent.parent / "pyproject.toml"

# Distribution name -> the top-level module it provides (where they differ).
MODULE_OF = {"starlark-pyo3": "starlark", "qemu.qmp": "qemu", "prometheus-client": "prometheus_client",
             "scikit-learn": "sklearn"}


def _declared() -> dict[str, str]:
    meta = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = list(meta["dependencies"]) + [r for extra in meta.get("optional-dependencies", {}).values()
                                         for r in extra]
    names = [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs]
    return {n: MODULE_OF.get(n, n.replace("-", "_")) for n in names}


def _imported() -> set[str]:
    """Top-level modules enmei imports (module-level and lazy), or reads data from with importlib.resources."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "files" and node.args and isinstance(node.args[0], ast.Constant)):
                found.add(str(node.args[0].value).split(".")[0])  # resources.files("plotly")
    return found - set(sys.stdlib_module_names) - {"enmei"}


def test_every_declared_dependency_is_imported() -> None:
    imported = _imported()
    unused = sorted(d for d, mod in _declared().items() if mod not in imported)
    assert not unused, f"declared in pyproject.toml but imported nowhere in enmei: {unused}"


def test_every_imported_package_is_declared() -> None:
    undeclared = sorted(_imported() - set(_declared().values()))
    assert not undeclared, f"imported by enmei but not declared in pyproject.toml: {undeclared}"
