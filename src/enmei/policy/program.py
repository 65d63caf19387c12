"""A policy file made ready to load: its sources, the enmei modules it loads, its version.

A policy is a Starlark file (``.star``) or a file of declarative rules (``.toml``, compiled to Starlark by
``enmei.policy.rules``); ``None`` means the shipped default library. A policy may ``load`` only enmei's
own modules: ``@enmei`` (the API) and ``@enmei/NAME`` (``library/NAME.star``, e.g. ``@enmei/default``) —
no files of its own, so what it computes depends on nothing but its inputs.

The version is the file's stem and the first 12 hex digits of a SHA-256 over everything that decides
what the policy does: its text, the text of every enmei module it loads, and the driver. It goes into
every decision record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import starlark as sl

from enmei.errors import PolicyError
from enmei.policy.core import dialect, located
from enmei.policy.encode import DRIVER, remedies_for
from enmei.policy.failure import failure_error

__all__ = ["DEFAULT_LABEL", "LIBRARY_DIR", "MAX_SOURCE_BYTES", "ProgramSpec", "build",
           "library_sources"]

LIBRARY_DIR = Path(__file__).parent / "library"
MAX_SOURCE_BYTES = 1 << 20
DEFAULT_LABEL = "default"


@dataclass(frozen=True)
class ProgramSpec:
    """Everything a sandbox needs to load one policy version."""

    label: str  # what the operator calls it: the file name, or "default"
    path: Path | None  # the file to watch for changes; None for the shipped default
    sources: Mapping[str, str]  # load name ("policy", "@enmei", ...) -> text
    filenames: Mapping[str, str]  # load name -> the name errors show
    version: str
    sha256: str
    text: str = field(repr=False, default="")  # the file as read (before any compiling)

    def load_request(self, limits: Mapping[str, Any]) -> dict[str, Any]:
        """What a sandbox loads: the sources, the driver, the limits, and the remedies known now."""
        return {"sources": dict(self.sources), "filenames": dict(self.filenames), "driver": DRIVER,
                "limits": dict(limits), "remedies": remedies_for()}


@cache
def library_sources() -> dict[str, str]:
    """enmei's loadable modules: ``@enmei`` (the API) and ``@enmei/NAME`` for each ``library/NAME.star``."""
    out: dict[str, str] = {}
    for f in sorted(LIBRARY_DIR.glob("*.star")):
        name = "@enmei" if f.stem == "enmei" else f"@enmei/{f.stem}"
        out[name] = f.read_text(encoding="utf-8")
    return out


def _filename(name: str) -> str:
    return "@enmei/enmei.star" if name == "@enmei" else f"{name}.star"


def _loads(filename: str, text: str) -> list[str]:
    try:
        ast = sl.parse(filename, text, dialect())
    except sl.StarlarkError as exc:
        raise failure_error(located("syntax", exc), filename) from None
    return [ld.module_id for ld in ast.loads()]


def build(path: Path | None, *, text: str | None = None) -> ProgramSpec:
    """Read and check (syntax, size) a policy; ``text`` stands in for the file's content when given.

    Raises ``PolicyError`` naming file:line:column for syntax errors, and the file for unreadable ones.
    Whether the policy *loads* (names resolve, top-level code runs) is the sandbox's to find out.
    """
    lib = library_sources()
    if path is None:
        label, filename, raw = DEFAULT_LABEL, _filename("@enmei/default"), lib["@enmei/default"]
        source = raw
    else:
        label, filename = path.name, str(path)
        if text is None:
            try:
                if path.stat().st_size > MAX_SOURCE_BYTES:
                    raise PolicyError(f"larger than {MAX_SOURCE_BYTES:,} bytes", file=filename)
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PolicyError(f"cannot read the policy: {exc}", file=filename) from exc
        if len(text.encode()) > MAX_SOURCE_BYTES:
            raise PolicyError(f"larger than {MAX_SOURCE_BYTES:,} bytes", file=filename)
        raw = source = text
        if path.suffix == ".toml":
            from enmei.policy.rules import compile_rules

            source = compile_rules(text, filename)
            filename = f"{filename} (compiled)"
    sources = {"policy": source}
    filenames = {"policy": filename}
    todo = [("policy", source)]
    while todo:
        name, body = todo.pop()
        for module in _loads(filenames[name], body):
            if module in lib and module not in sources:
                sources[module] = lib[module]
                filenames[module] = _filename(module)
                todo.append((module, lib[module]))
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(f"{name}\x00{sources[name]}\x00".encode())
    h.update(DRIVER.encode())
    digest = h.hexdigest()
    stem = label.rsplit(".", 1)[0] if "." in label else label
    return ProgramSpec(label, path, sources, filenames, f"{stem}@{digest[:12]}", digest, raw)
