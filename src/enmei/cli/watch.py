"""``enmei watch``: a monitor for the monitor. This command only checks its arguments and execs the
watcher, ``python -m enmei.watch`` (``enmei.watch.watcher``), so that the long-running process does not
carry the CLI's imports (typer, rich, pydantic: 46 MB resident for the imports alone; the watcher measured 16 MB)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from enmei.cli.common import Exit, fail

__all__ = ["watch"]


def watch(
    targets: Annotated[list[Path], typer.Argument(help="Config files (or state dirs) of the enmeis to watch")],
    name: Annotated[str, typer.Option(help="This watcher's name; two watchers of one enmei need two names")] = "watch",
    mutual: Annotated[bool, typer.Option("--mutual", help="The watched enmei restarts this watcher if it dies")]
    = False,
    hang_after_s: Annotated[float, typer.Option(
        help="A heartbeat that has not moved this long, with the ctl socket not answering, is a hang")] = 5.0,
    grace_s: Annotated[float, typer.Option(help="A free state-dir lock this long is a death")] = 0.5,
    ctl_timeout_s: Annotated[float, typer.Option(help="How long the ctl socket gets to answer")] = 3.0,
    backoff_first_s: Annotated[float, typer.Option(help="First wait after a restart that failed")] = 2.0,
    backoff_max_s: Annotated[float, typer.Option(help="Longest wait between failed restarts")] = 300.0,
    no_start: Annotated[bool, typer.Option("--no-start", help="Do not start an enmei that is not running at first")]
    = False,
) -> None:
    """Watch enmei supervisors from outside: restart one that dies (kill -9) or hangs (its heartbeat stale
    and its ctl socket silent: it is killed first); the new one adopts the units and journals what the
    watcher saw. Runs until SIGTERM or Ctrl-C. Exit code 3 if a target cannot be watched."""
    from enmei.watch.watcher import TargetError, resolve

    for t in targets:
        try:
            resolve(t)
        except TargetError as exc:
            fail(str(exc), Exit.CONFIG)
    argv = [sys.executable, "-m", "enmei.watch", *[str(t.absolute()) for t in targets], "--name", name,
            "--hang-after-s", repr(hang_after_s), "--grace-s", repr(grace_s), "--ctl-timeout-s", repr(ctl_timeout_s),
            "--backoff-first-s", repr(backoff_first_s), "--backoff-max-s", repr(backoff_max_s),
            *(["--mutual"] if mutual else []), *(["--no-start"] if no_start else [])]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter, our own module, no shell
