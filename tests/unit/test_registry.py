"""The backend registry: declarations, refusals, the config union built from it, and no cycle left."""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

import enmei.config.model
from enmei.config.qemu import QemuUnit
from enmei.errors import EnmeiError
from enmei.visor import registry
from enmei.visor.registry import BackendKind, UnknownBackendError, backend_kind, backend_kinds, register_backend

SRC = Path(enmei.config.model.__file__).parents[1]


def test_the_builtin_backends_are_declared_with_their_model_and_capabilities() -> None:
    from enmei.visor.process import ProcessBackend
    from enmei.visor.qemu import QemuBackend

    kinds = backend_kinds()
    assert {"process", "qemu"} <= set(kinds)
    # The light declaration says what the class says: check time and run time agree.
    assert kinds["process"].capabilities == ProcessBackend.capabilities
    assert kinds["qemu"].capabilities == QemuBackend.capabilities
    assert kinds["process"].config_model() is enmei.config.model.ProcessUnit
    assert kinds["qemu"].config_model() is QemuUnit


def test_a_second_declaration_of_a_kind_is_refused() -> None:
    before = registry.generation()
    with pytest.raises(EnmeiError, match="backend 'process' is already registered"):
        register_backend(BackendKind("process", "x:Y", "x:make"))
    assert backend_kind("process").config_model() is enmei.config.model.ProcessUnit
    assert registry.generation() == before


@pytest.mark.parametrize("kind", ["", "Qemu", "a b", "x/y"])
def test_a_bad_kind_is_refused(kind: str) -> None:
    with pytest.raises(EnmeiError, match="backend kind"):
        register_backend(BackendKind(kind, "x:Y", "x:make"))


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(UnknownBackendError, match=r"unknown backend 'docker' \(known: .*process, qemu"):
        backend_kind("docker")


def test_a_declaration_that_cannot_be_imported_says_which() -> None:
    decl = BackendKind("broken", "enmei.no_such_module:Model", "enmei.no_such_module:make")
    with pytest.raises(EnmeiError, match=r"backend 'broken': cannot import its config 'enmei\.no_such_module:Model'"):
        decl.config_model()


def test_the_config_union_is_the_registry_and_follows_it() -> None:
    model = enmei.config.model.config_model()
    assert model is enmei.config.model.config_model()  # cached while the registry is unchanged
    assert issubclass(model, enmei.config.model.Config)
    cfg = model.model_validate({"units": {"a": {"command": ["/bin/true"]}, "vm": {"backend": "qemu"}}})
    assert isinstance(cfg.units["a"], enmei.config.model.ProcessUnit) and isinstance(cfg.units["vm"], QemuUnit)
    same = enmei.config.model.Config.model_validate({"units": {"a": {"command": ["/bin/true"]}}})
    assert isinstance(same, model) and isinstance(same.units["a"], enmei.config.model.ProcessUnit)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_cycle_between_the_config_and_its_qemu_model() -> None:
    assert "enmei.config.qemu" not in _imports(SRC / "config" / "model.py")
    assert "enmei.config.model" in _imports(SRC / "config" / "qemu.py")


def test_neither_engine_nor_config_names_a_backend_module() -> None:
    """The engine and the config reach backends through the registry only."""
    for path in [*(SRC / "config").glob("*.py"), SRC / "engine" / "loop.py"]:
        named = {m for m in _imports(path) if m.startswith(("enmei.visor.process", "enmei.visor.qemu"))}
        assert not named, f"{path.name} imports {named}"


def test_the_declarations_import_no_backend() -> None:
    top = _imports(SRC / "visor" / "kinds.py")
    tree = ast.parse((SRC / "visor" / "kinds.py").read_text())
    module_level = {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert "enmei.visor.qemu" in top  # inside the factory...
    assert not {m for m in module_level if m.startswith(("enmei.visor.qemu", "enmei.visor.process"))}  # ...only


def test_registry_docstring_examples() -> None:
    result = doctest.testmod(importlib.import_module("enmei.visor.registry"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
