"""``enmei report``: write a self-contained HTML incident report from the journal (no supervisor needed)."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from enmei.cli.common import Exit, console, fail, resolve_journal
from enmei.errors import BoxError

__all__ = ["parse_since", "report"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_since(text: str, now: float | None = None) -> float:
    """A start time as wall seconds: ``90s``, ``30m``, ``1h``, ``2d``, ``1w`` ago; an ISO date or time
    (``2025-01-31``, ``2025-01-31T08:00``, local time unless it names a zone); or ``all``.
    Raises ``ValueError`` with the accepted forms.

    >>> parse_since("1h", now=10_000.0)
    6400.0
    >>> parse_since("all")
    0.0
    """
    now = time.time() if now is None else now
    if text.strip() == "all":
        return 0.0
    m = _AGO.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use 90s, 30m, 1h, 2d, 1w (ago), an ISO date/time "
                         "such as 2025-01-31T08:00, or 'all'") from None


def _since(text: str) -> float:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def report(
    html: Annotated[Path, typer.Option("--html", help="Write the report to this HTML file")],
    since: Annotated[str, typer.Option(help="Start: 1h, 30m, 2d ago, an ISO time, or 'all'")] = "24h",
    until: Annotated[str | None, typer.Option(help="End (same forms as --since); default now")] = None,
    journal: Annotated[Path | None, typer.Option("--journal", "-j", help="Journal (default: the config's)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Config whose journal to read")] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip checking the hash chain")] = False,
) -> None:
    """Write a self-contained incident report (charts inline) for a window of the journal.

    Exit codes: 0 written; 4 written, but the journal's hash chain is broken; 5 no readable journal.
    """
    from enmei.box import verify

    try:
        from enmei.report.html import build_report, write_report
    except ImportError as exc:  # jinja2 and plotly come with the web extra
        fail(f"enmei report needs the web extra ({exc.name} is missing): pip install 'enmei[web]'", Exit.START)

    start = _since(since)
    end = _since(until) if until is not None else time.time()
    if end < start:
        raise typer.BadParameter(f"--until ({until}) is before --since ({since})")
    path = resolve_journal(journal, config)
    try:
        check = None if no_verify else verify(path)
        page = build_report(path, start, end, check=check)
    except BoxError as exc:
        fail(str(exc), Exit.START)
    except FileNotFoundError as exc:
        fail(str(exc), Exit.ERROR)
    try:
        write_report(html, page)
    except OSError as exc:
        fail(f"cannot write {html}: {exc}", Exit.ERROR)
    console.print(f"report: {html} ({len(page) // 1024} KiB) from {path}", highlight=False, soft_wrap=True)
    if check is not None and not check.ok:
        fail(f"the journal's hash chain is broken at record {check.first_bad}: {check.reason} "
             "(the report says so too)", Exit.INTEGRITY)
