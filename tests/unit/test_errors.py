"""The error tree drawn in ``enmei.errors``' docstring is the real one, and every error in it is raised."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import enmei
from enmei import errors
from enmei.errors import EnmeiError

SRC = Path(enmei.__file__).parent

# Errors defined for a fix that is landing now: each is taken off when something raises it (the last test
# fails when that happens, so the list cannot go stale).
NOT_YET_RAISED: dict[str, str] = {}


def _import_everything() -> None:
    for mod in pkgutil.walk_packages(enmei.__path__, "enmei."):
        importlib.import_module(mod.name)


def _real_tree() -> list[tuple[int, str]]:
    _import_everything()
    out: list[tuple[int, str]] = []

    def walk(cls: type, depth: int) -> None:
        out.append((depth, cls.__name__))
        for sub in sorted(cls.__subclasses__(), key=lambda c: c.__name__):
            if sub.__module__.startswith("enmei") and not sub.__name__.startswith("_"):
                walk(sub, depth + 1)

    walk(EnmeiError, 0)
    return out


def _drawn_tree() -> list[tuple[int, str]]:
    doc = errors.__doc__ or ""
    block = doc.split("::", 1)[1].split("\n\n", 2)[1]
    out: list[tuple[int, str]] = []
    for line in block.splitlines():
        m = re.match(r"^( *)(?:[| ]*\+-- )?([A-Z]\w+)", line)
        assert m, f"cannot read the tree line {line!r}"
        name = m.group(2)
        depth = 0 if "+--" not in line else (line.index("+--") - 5) // 5 + 1
        out.append((depth, name))
    return out


def _parents(tree: list[tuple[int, str]]) -> dict[str, str | None]:
    """Each class's parent, from a pre-order list of (depth, name)."""
    path: list[str] = []
    out: dict[str, str | None] = {}
    for depth, name in tree:
        del path[depth:]
        out[name] = path[-1] if path else None
        path.append(name)
    return out


def test_the_drawn_tree_is_the_real_tree() -> None:
    real, drawn = _parents(_real_tree()), _parents(_drawn_tree())
    assert drawn == real, (f"missing from the drawing: {sorted(set(real) - set(drawn))}; "
                           f"drawn but not real: {sorted(set(drawn) - set(real))}; "
                           f"other parent: {sorted(n for n in set(real) & set(drawn) if real[n] != drawn[n])}")


def _constructed_names() -> set[str]:
    """Names called (``X(...)``) or raised (``raise X``) anywhere in enmei outside errors.py."""
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        if path == Path(errors.__file__):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                names.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
            elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Name):
                names.add(node.exc.id)
    return names


def test_every_error_in_the_tree_is_raised_somewhere() -> None:
    made = _constructed_names()
    never = [n for _, n in _real_tree() if n not in made and n not in NOT_YET_RAISED]
    assert not never, f"errors that nothing raises (remove them, or raise them): {never}"


def test_the_not_yet_raised_list_is_current() -> None:
    made = _constructed_names()
    now_raised = [n for n in NOT_YET_RAISED if n in made]
    assert not now_raised, f"now raised: take them off NOT_YET_RAISED: {now_raised}"
