"""``enmei signatures``: train, list, show, export, import and test log signatures (a directory of
signature files, ``--dir``, default ``$ENMEI_SIGNATURES_DIR`` or ``./.enmei/signatures``)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from enmei.cli.common import Exit, console, fail

if TYPE_CHECKING:
    from enmei.logs.signatures import Signature

app = typer.Typer(help="Log signatures: known anomalies recognised from their mix of log messages.",
                  no_args_is_help=True)

DirOpt = Annotated[Path | None, typer.Option("--dir", help="The signature directory")]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _dir(d: Path | None) -> Path:
    if d is not None:
        return d
    env = os.environ.get("ENMEI_SIGNATURES_DIR")
    return Path(env) if env else Path(".enmei") / "signatures"


def _path(d: Path | None, name: str) -> Path:
    if not _NAME.match(name):
        fail(f"signature name {name!r}: letters, digits, '_', '.', '-' only (up to 64)", Exit.USAGE)
    return _dir(d) / f"{name}.json"


def _read_lines(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines()
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}")


def _load(path: Path) -> Signature:
    from enmei.logs.signatures import Signature, SignatureFileError

    try:
        return Signature.load(path)
    except SignatureFileError as exc:
        fail(str(exc), Exit.CONFIG)


@app.command()
def train(name: Annotated[str, typer.Argument(help="The signature's name")],
          classes: Annotated[list[str], typer.Option("--class", help="CLASS=LOGFILE (repeat; one must be normal)")],
          remedy: Annotated[list[str] | None, typer.Option(help="CLASS=HINT, the remedy hint of a class")] = None,
          application: Annotated[str, typer.Option(help="The application these logs come from")] = "unknown",
          window: Annotated[int, typer.Option(min=5, max=100_000, help="Lines per window")] = 50,
          d: DirOpt = None) -> None:
    """Train a signature from labelled log files (a multilayer perceptron over template ratios)."""
    from enmei.logs.signatures import train as do_train

    labelled: list[tuple[str, list[str]]] = []
    for c in classes:
        cls, sep, file = c.partition("=")
        if not sep or not cls or not file:
            fail(f"--class {c!r}: give CLASS=LOGFILE", Exit.USAGE)
        labelled.append((cls, [b.decode("utf-8", "replace") for b in _read_lines(Path(file))]))
    hints: dict[str, str] = {}
    for r in remedy or []:
        cls, sep, hint = r.partition("=")
        if not sep:
            fail(f"--remedy {r!r}: give CLASS=HINT", Exit.USAGE)
        hints[cls] = hint
    try:
        sig = do_train(labelled, application=application, window=window, remedies=hints)
    except ValueError as exc:
        fail(str(exc), Exit.USAGE)
    path = _path(d, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    sig.save(path)
    console.print(f"{path}: {len(sig.classes)} classes ({', '.join(sig.classes)}), "
                  f"{len(sig.vocabulary)} templates, {sig.meta.get('windows')} windows")


@app.command(name="list")
def list_cmd(d: DirOpt = None) -> None:
    """The signatures in the directory (a file that cannot be read is named, not skipped silently)."""
    from enmei.logs.signatures import Signature, SignatureFileError

    base = _dir(d)
    for path in sorted(base.glob("*.json")) if base.is_dir() else []:
        try:
            s = Signature.load(path)
        except SignatureFileError as exc:
            console.print(f"{path.stem}: [red]unreadable[/] ({exc.reason})", highlight=False)
            continue
        console.print(f"{path.stem}: {s.application}, classes {', '.join(s.classes)}", highlight=False)


@app.command()
def show(name: str, d: DirOpt = None) -> None:
    """One signature: application, classes with their remedy hints, thresholds, templates."""
    s = _load(_path(d, name))
    print(json.dumps({"application": s.application, "window": s.window, "min_p": s.min_p,
                      "max_novel": s.max_novel, "classes": {c: s.remedies.get(c, "") for c in s.classes},
                      "templates": s.vocabulary, "meta": s.meta}, indent=1, ensure_ascii=False))


@app.command(name="export")
def export_cmd(name: str, out: Annotated[Path, typer.Argument(help="The file to write")], d: DirOpt = None) -> None:
    """Write a signature to a file another enmei can import (checked first)."""
    s = _load(_path(d, name))
    s.save(out)
    console.print(f"{out}: {name} ({s.application})")


@app.command(name="import")
def import_cmd(file: Path, name: Annotated[str | None, typer.Option(help="Name here (default: the file's)")] = None,
               force: Annotated[bool, typer.Option(help="Replace a signature of that name")] = False,
               d: DirOpt = None) -> None:
    """Check a signature file and add it to the directory."""
    s = _load(file)
    path = _path(d, name or file.stem)
    if path.exists() and not force:
        fail(f"{path} exists (--force replaces it)", Exit.USAGE)
    path.parent.mkdir(parents=True, exist_ok=True)
    s.save(path)
    console.print(f"{path}: {s.application}, classes {', '.join(s.classes)}")


@app.command(name="test")
def judge(name: str, log: Annotated[Path, typer.Argument(help="A log file to judge, window by window")],
      as_json: Annotated[bool, typer.Option("--json")] = False, d: DirOpt = None) -> None:
    """Judge a log file window by window: a class, or unknown (unsure, or a new mix of messages)."""
    from enmei.logs.signatures import windows

    s = _load(_path(d, name))
    miner, index = s.miner()
    preds = [s.predict(w, miner, index) for w in windows(_read_lines(log), s.window)]
    counts = Counter(p.label for p in preds)
    if as_json:
        print(json.dumps({"windows": [p.__dict__ for p in preds], "counts": dict(counts)}))
        return
    for i, p in enumerate(preds):
        hint = s.remedies.get(p.label, "")
        console.print(f"window {i}: {p.label} (p = {p.p:.2f}, novel {p.novel:.0%})"
                      f"{f'  remedy: {hint}' if hint else ''}", highlight=False)
    console.print(", ".join(f"{k}: {v}" for k, v in counts.most_common()), highlight=False)
