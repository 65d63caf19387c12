"""The ``enmei`` command line (typer + rich); thin: every command calls into the package."""

from enmei.cli.main import app, main

__all__ = ["app", "main"]
