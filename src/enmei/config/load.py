"""Read ``enmei.toml``: TOML -> validated frozen models, every problem named by file, key and line.

``load(path)`` returns a ``LoadedConfig`` or raises ``ConfigError`` (the first problem; ``problems``
holds them all). ``check(path)`` returns every problem without raising. Beyond the schema, the checks
look at the machine: each unit's backend check from the registry (a process unit: a command that does
not exist or is not executable, a ``cwd`` that is not a directory; ``enmei.config.machine``), probes and
injectors that need capabilities the unit's backend lacks, a missing policy file or alert command.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from enmei.config.machine import resolve_command
from enmei.config.model import DEFAULT_BACKEND, Config, ProcessUnit, config_model
from enmei.errors import ConfigError

__all__ = ["LoadedConfig", "check", "key_line", "load", "load_text"]


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from; paths in it resolve against ``base_dir``."""

    config: Config
    path: Path
    sha256: str

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def state_dir(self) -> Path:
        return (self.base_dir / self.config.supervisor.state_dir).resolve()

    @property
    def journal_dsn(self) -> str | None:
        """The PostgreSQL URL of ``[supervisor] journal``, or None for a journal file."""
        value = self.config.supervisor.journal
        return value if value.startswith(("postgresql:", "postgres:")) else None

    @property
    def journal_path(self) -> Path:
        """The journal file; for a PostgreSQL journal, its local spool (``journal.spool`` in state_dir)."""
        if self.journal_dsn is not None:
            return self.state_dir / "journal.spool"
        return self.state_dir / self.config.supervisor.journal

    @property
    def fleet_dsn(self) -> str | None:
        """The fleet's database (``[fleet] database``, else the journal's), or None without ``[fleet]``."""
        fleet = self.config.fleet
        if fleet is None:
            return None
        return fleet.database or self.journal_dsn

    @property
    def host_name(self) -> str:
        """``[supervisor] host``, else the machine's hostname."""
        import socket

        return self.config.supervisor.host or socket.gethostname()

    @property
    def anchor_key_path(self) -> Path | None:
        sup = self.config.supervisor
        if not sup.anchors:
            return None
        return (self.base_dir / sup.anchor_key).resolve() if sup.anchor_key else self.state_dir / "anchor.key"

    @property
    def witness_path(self) -> Path | None:
        """``[supervisor] witness``, resolved; None if not set."""
        w = self.config.supervisor.witness
        return (self.base_dir / w).resolve() if w else None

    def unit_cwd(self, unit: ProcessUnit) -> Path:
        return (self.base_dir / unit.cwd).resolve() if unit.cwd else self.base_dir.resolve()

    @property
    def policy_path(self) -> Path | None:
        p = self.config.supervisor.policy
        return (self.base_dir / p).resolve() if p else None


class _Problems(ConfigError):
    """A ConfigError that carries every problem found; ``str`` is the first, ``problems`` all."""

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.message, file=first.file, key=first.key, line=first.line)
        self.problems = problems


def load(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read and validate ``path``. Raises ``ConfigError`` naming file, key and line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(p)) from exc
    return load_text(text, p)


def load_text(text: str, path: Path) -> LoadedConfig:
    """Validate config ``text`` as if read from ``path`` (relative paths resolve against it)."""
    problems = _problems(text, path)
    if problems:
        raise _Problems(problems)
    cfg = config_model().model_validate(tomllib.loads(text))
    return LoadedConfig(cfg, path.absolute(), hashlib.sha256(text.encode()).hexdigest())


def check(path: str | os.PathLike[str]) -> list[ConfigError]:
    """Every problem in ``path``, in file order; an empty list means the file is good."""
    try:
        load(path)
    except _Problems as exc:
        return exc.problems
    except ConfigError as exc:
        return [exc]
    return []


def _problems(text: str, path: Path) -> list[ConfigError]:
    file = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line = int(m.group(1)) if m else (len(text.splitlines()) or 1 if "end of document" in str(exc) else None)
        msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(exc))
        return [ConfigError(f"not valid TOML: {msg}", file=file, line=line)]
    try:
        cfg = config_model().model_validate(data)
    except ValidationError as exc:
        found = [_from_pydantic(err, data, text, file) for err in exc.errors()]
        return sorted(found, key=lambda e: e.line if e.line is not None else 1 << 30)
    return _machine_problems(cfg, data, text, path)


def _from_pydantic(err: Mapping[str, Any], data: Mapping[str, Any], text: str, file: str) -> ConfigError:
    raw = tuple(err["loc"])
    if raw and raw[-1] == "[key]":  # the key itself is wrong (a unit's name): point at its table
        raw = raw[:-1]
    loc = _real_loc(raw, data)
    key = _dotted(loc)
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], data)
        msg = f"unknown key {loc[-1]!r}"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        elif allowed:
            msg += f"; allowed here: {', '.join(sorted(allowed))}"
    elif err["type"] == "missing":
        msg = f"missing required key {loc[-1]!r}"
    elif err["type"] == "union_tag_invalid":
        msg = msg.replace("Input tag", "value")
    msg = msg.removeprefix("Value error, ")
    return ConfigError(msg, file=file, key=key or None, line=_locate(text, loc))


def _real_loc(loc: tuple[Any, ...], data: Any) -> tuple[Any, ...]:
    """Drop the discriminator tags pydantic puts into a location (e.g. 'process', 'http')."""
    out: list[Any] = []
    node = data
    for part in loc:
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if (isinstance(node, Mapping) and part in node) or in_list:
            out.append(part)
            node = node[part]
        elif isinstance(node, Mapping) and isinstance(part, str) and part.startswith(("function-", "lax-")):
            continue
        elif isinstance(node, Mapping) and part in (node.get("kind"), node.get("backend", DEFAULT_BACKEND)):
            continue  # a union tag (a probe's kind, a unit's backend), not a key of the file
        else:
            out.append(part)
            node = None
    return tuple(out)


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _dotted(loc: Sequence[Any]) -> str:
    """A location as the TOML key a person would write: ``units.web.probes[0].url``, ``units."a b"``."""
    s = ""
    for part in loc:
        if isinstance(part, int):
            s += f"[{part}]"
            continue
        text = str(part) if _BARE.match(str(part)) else json.dumps(str(part))
        s += f".{text}" if s else text
    return s


def _allowed_keys(loc: Sequence[Any], data: Mapping[str, Any]) -> list[str]:
    """The keys the model allows at ``loc`` (best effort; [] when it cannot tell)."""
    model: Any = config_model()
    node: Any = data
    for part in loc:
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
        model = _step(model, part, node)
        if model is None:
            return []
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _step(model: Any, part: Any, node: Any) -> Any:
    if isinstance(model, type) and issubclass(model, BaseModel):
        field = model.model_fields.get(str(part))
        return _unwrap(field.annotation if field else None, node)
    origin = typing.get_origin(model)
    if origin in (dict, list):
        args = typing.get_args(model)
        return _unwrap(args[-1] if args else None, node)
    return None


def _unwrap(annotation: Any, node: Any) -> Any:
    """Resolve Annotated/Optional/discriminated unions to the model the data ``node`` selects."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        models = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(node, Mapping):
            for m in models:
                for tag in ("backend", "kind"):
                    f = m.model_fields.get(tag)
                    if f is not None and node.get(tag, DEFAULT_BACKEND if tag == "backend" else None) in (
                        typing.get_args(f.annotation) or ()
                    ):
                        return m
        if len(options) == 1:
            return _unwrap(options[0], node)
        return models[0] if len(models) == 1 else (options[0] if options else None)
    return annotation


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-. ])+?)\s*=""")


def _split_key(key: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.split(r"\.(?=(?:[^\"']*[\"'][^\"']*[\"'])*[^\"']*$)", key)]


def key_line(text: str, loc: Sequence[Any]) -> int | None:
    """The line of key path ``loc`` (``("units", "web", "cpu_max")``) in config ``text``, for a notice."""
    return _locate(text, loc)


def _locate(text: str, loc: Sequence[Any]) -> int | None:
    """The line of ``loc`` in the file: the deepest table header or key that matches it."""
    if not loc:
        return None
    want = [str(p) for p in loc]
    best: tuple[int, int] | None = None  # (matched depth, line)
    table: list[str] = []
    arrays: dict[tuple[str, ...], int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        h = _HEADER.match(line)
        if h:
            parts = _split_key(h.group(2))
            if h.group(1) == "[[":
                idx = arrays.get(tuple(parts), -1) + 1
                arrays[tuple(parts)] = idx
                table = [*parts, str(idx)]
            else:
                table = parts
            path = table
        else:
            k = _KEY.match(line)
            if not k:
                continue
            path = table + _split_key(k.group(1))
        depth = 0
        for a, b in zip(path, want, strict=False):
            if a != b:
                break
            depth += 1
        # A line that is all of ``loc`` so far, or that sits inside it (``"a b".command = ...`` for the
        # unit ``a b`` written with dotted keys); the deepest wins, the first of equals.
        if (depth == len(path) or depth == len(want)) and depth > 0 and (best is None or depth > best[0]):
            best = (depth, lineno)
    return best[1] if best else None


def _machine_problems(cfg: Config, data: Mapping[str, Any], text: str, path: Path) -> list[ConfigError]:
    """Checks that need the machine: each unit's backend check (a process unit's command and cwd), the
    policy file, the alert command."""
    from enmei.visor.registry import backend_kind

    problems: list[ConfigError] = []
    base = path.absolute().parent
    for name, unit in cfg.units.items():
        try:
            found = backend_kind(unit.backend).machine_problems(name, unit, base)
        except Exception as exc:  # a broken backend check must not hide the rest of the file's problems
            found = [((), f"the {unit.backend} backend could not check this unit: {type(exc).__name__}: {exc}")]
        for rel, message in found:
            loc = ("units", name, *rel)
            problems.append(ConfigError(message, file=str(path), key=_dotted(loc), line=_locate(text, loc)))
    if cfg.supervisor.policy:
        policy = base / cfg.supervisor.policy
        if not policy.is_file():
            why = "is not a file" if policy.exists() else "does not exist"
            problems.append(ConfigError(f"policy file {str(policy)!r} {why}", file=str(path), key="supervisor.policy",
                                        line=_locate(text, ("supervisor", "policy"))))
    ac = cfg.supervisor.alert_command
    if ac and resolve_command(ac[0], base, {}, True) is None:
        problems.append(ConfigError(f"alert command {ac[0]!r} not found", file=str(path),
                                    key="supervisor.alert_command",
                                    line=_locate(text, ("supervisor", "alert_command"))))
    return problems
