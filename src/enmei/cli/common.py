"""What the CLI commands share: exit codes, finding the journal, printing errors."""

from __future__ import annotations

import os
from enum import IntEnum
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from enmei.config.load import load
from enmei.errors import ConfigError

__all__ = ["Exit", "console", "err_console", "fail", "resolve_journal"]

console = Console()
err_console = Console(stderr=True)


class Exit(IntEnum):
    """enmei's exit codes (also in the README)."""

    OK = 0
    ERROR = 1  # a runtime failure
    USAGE = 2  # wrong command-line usage
    CONFIG = 3  # the config or policy file is invalid
    INTEGRITY = 4  # the journal's hash chain is broken
    START = 5  # enmei could not start (journal locked, state dir not writable, missing system package)
    BENCH_GOAL = 6  # a benchmark ran but missed its goal (with --check)
    NOT_RUNNING = 7  # enmei ctl: no enmei answers on the state dir's socket
    INTERRUPTED = 130


def fail(message: str, code: Exit = Exit.ERROR) -> NoReturn:
    err_console.print(f"[bold red]enmei:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(int(code))


def resolve_journal(journal: Path | None, config: Path | None) -> Path:
    """The journal to read: ``--journal``, else the one ``--config`` names, else ``./enmei.toml``'s,
    else ``./.enmei/journal.sqlite``."""
    if journal is not None:
        return journal
    if config is None and Path("enmei.toml").exists():
        config = Path("enmei.toml")
    if config is not None:
        try:
            return load(config).journal_path
        except ConfigError as exc:
            fail(str(exc), Exit.CONFIG)
    return Path(os.environ.get("ENMEI_JOURNAL", ".enmei/journal.sqlite"))
