"""No import cycle between enmei's modules, found statically (``ast``), so no import order can hide one.

What counts as an edge A -> B (A imports B):

* every ``import``/``from ... import`` in A, **at module level and inside functions** (a lazy import
  hides a cycle from the interpreter, not from the design), **and under ``if TYPE_CHECKING:``** (a type
  a module needs is a dependency too);
* importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: edges to those packages too,
  except to A's own parent packages (they are already being imported when A runs);
* not counted: a package ``__init__``'s imports of its *own* submodules when they are lazy (inside a
  function, e.g. a PEP 562 ``__getattr__``) or type-only — they run when someone asks the package for that
  name, never when a module imports the package on its way to a sibling. Eager ones count.

A cycle is a strongly connected component of more than one module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import enmei

SRC = Path(enmei.__file__).parent

# Cycles other engineers are breaking right now (issue 10 item 6); each entry is removed when its fix
# lands — the test fails if a listed cycle is gone, so the list cannot go stale.
KNOWN: list[frozenset[str]] = []


def _name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _nodes_under_type_checking(tree: ast.Module) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                out.update(id(n) for n in ast.walk(sub))
    return out


def _nodes_in_functions(tree: ast.Module) -> set[int]:
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.update(id(n) for n in ast.walk(node) if n is not node)
    return out


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module -> the enmei modules it imports, by the rules in the module docstring."""
    modules = {_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        soft = _nodes_under_type_checking(tree) | _nodes_in_functions(tree) if is_pkg else set()
        own_parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            found: set[str] = set()
            if isinstance(node, ast.Import):
                found = {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                for a in node.names:
                    if f"{mod}.{a.name}" in modules:
                        found.add(f"{mod}.{a.name}")
                    elif mod in modules:
                        found.add(mod)
            if id(node) in soft:
                found = {m for m in found if not m.startswith(name + ".")}
            for mod in found:
                targets.add(mod)
                parts = mod.split(".")
                targets.update(p for p in (".".join(parts[:i]) for i in range(1, len(parts)))
                               if p in modules and p not in own_parents)
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for start, edges in graph.items():
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(edges))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, todo = work[-1]
            if todo:
                w = todo.pop()
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, sorted(graph.get(w, ()))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp: set[str] = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(frozenset(comp))
    return found


def _describe(comp: frozenset[str], graph: dict[str, set[str]]) -> str:
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & comp))}" for m in sorted(comp))


def test_no_import_cycle_between_enmei_modules() -> None:
    graph = import_graph()
    assert len(graph) > 50 and "enmei.engine.loop" in graph  # the walk saw the package
    new = [c for c in cycles(graph) if c not in KNOWN]
    assert not new, "import cycles:\n" + "\n".join(_describe(c, graph) for c in new)


def test_the_known_cycles_are_still_there() -> None:
    """When a listed cycle is broken, take it off ``KNOWN`` (this test says which)."""
    present = cycles(import_graph())
    gone = [sorted(c) for c in KNOWN if c not in present]
    assert not gone, f"these cycles are gone: remove them from KNOWN: {gone}"


def test_the_detector_finds_cycles_through_lazy_type_only_and_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "enmei"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "demo").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("from enmei.cli.main import main\n")
    (pkg / "cli" / "main.py").write_text("def main():\n    from enmei.demo.scenario import run\n")
    (pkg / "cli" / "live.py").write_text("")
    (pkg / "demo" / "__init__.py").write_text("")
    (pkg / "demo" / "scenario.py").write_text("from enmei.cli.live import View\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from enmei import b\n")
    (pkg / "b.py").write_text("from . import a\n")
    (pkg / "lazy").mkdir()
    (pkg / "lazy" / "__init__.py").write_text("def __getattr__(n):\n    from enmei.lazy import impl\n")
    (pkg / "lazy" / "impl.py").write_text("import enmei.c\n")
    (pkg / "c.py").write_text("from enmei.lazy import other\n")
    (pkg / "lazy" / "other.py").write_text("")
    graph = import_graph(pkg)
    found = set(cycles(graph))
    assert frozenset({"enmei.cli", "enmei.cli.main", "enmei.demo.scenario"}) in found
    assert frozenset({"enmei.a", "enmei.b"}) in found
    assert len(found) == 2, found  # the package's lazy import of its own submodule is no cycle
