"""The ``enmei`` command: check a config, run a supervisor, run the demo; ``box`` and ``bench`` groups."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from enmei import __version__
from enmei.cli import bench, box, ctl
from enmei.cli import policy as policy_cmd
from enmei.cli import report as report_cmd
from enmei.cli import signatures as signatures_cmd
from enmei.cli import update as update_cmd
from enmei.cli import watch as watch_cmd
from enmei.cli.common import Exit, console, err_console, fail
from enmei.config.load import check as check_config
from enmei.config.load import load
from enmei.errors import BoxError, ConfigError, IntegrityError, PolicyError
from enmei.fsafe import UnsafePathError

if TYPE_CHECKING:
    from rich.console import Console

    from enmei.cli.live import LiveView
    from enmei.engine import Engine

app = typer.Typer(
    name="enmei",
    help="enmei (延命): keep services alive on an OS that is assumed to fail.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(box.app, name="box")
app.add_typer(bench.app, name="bench")
app.add_typer(policy_cmd.app, name="policy")
app.add_typer(ctl.app, name="ctl")
app.add_typer(signatures_cmd.app, name="signatures")
app.command(name="update")(update_cmd.update)
ctl.app.command(name="update")(update_cmd.update)  # `enmei ctl update`: the same
app.command(name="report")(report_cmd.report)
app.command(name="watch")(watch_cmd.watch)


def _image_app() -> typer.Typer:
    from enmei.visor.qemu.cli import app as image_app

    return image_app


app.add_typer(_image_app(), name="image", help="Guest images for QEMU units (built from Debian packages).")


def _version(value: bool) -> None:
    if value:
        console.print(f"enmei {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug)")] = 0,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    level = logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def check(config: Annotated[Path, typer.Argument(help="The config file (enmei.toml)")]) -> None:
    """Validate a config file: every problem with file, line and key. Exit code 3 if any."""
    problems = check_config(config)
    if problems:
        for p in problems:
            err_console.print(f"[bold red]error[/] {p}", highlight=False, soft_wrap=True)
        err_console.print(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in {config}")
        raise typer.Exit(int(Exit.CONFIG))
    loaded = load(config)
    if loaded.policy_path is not None:
        from enmei.policy.manager import open_policy
        from enmei.policy.trial import config_view

        try:  # the policy's handlers are tried on every unit of the config, with its backend's capabilities
            open_policy(loaded.policy_path, trial_view=config_view(loaded.config)).close()
        except PolicyError as exc:
            err_console.print(f"[bold red]error[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(int(Exit.CONFIG)) from None
    units = loaded.config.units
    _limit_notices(config, units)
    policy = str(loaded.policy_path) if loaded.policy_path else "the shipped default library"
    console.print(f"[green]ok[/]: {config} — {len(units)} unit{'s' if len(units) != 1 else ''} "
                  f"({', '.join(units) or 'none'}); policy {policy}; journal {loaded.journal_path}", highlight=False)


def _limit_notices(config: Path, units: Mapping[str, Any]) -> None:
    """A notice (not an error: the unit runs) for each resource limit this host cannot apply."""
    from enmei.config.load import key_line
    from enmei.visor.cage import limit_notices

    found = limit_notices(units)
    text = config.read_text() if found else ""
    for unit, key, message in found:
        line = key_line(text, ("units", unit, key))
        err_console.print(f"[yellow]notice[/] {config}{f':{line}' if line else ''}: units.{unit}.{key}: {message}",
                          highlight=False, soft_wrap=True)


@app.command()
def up(
    config: Annotated[Path, typer.Argument(help="The config file (enmei.toml)")],
    plain: Annotated[bool, typer.Option("--plain", help="Log lines instead of the live table")] = False,
    listen: Annotated[str | None, typer.Option(
        "--listen", help="Serve the dashboard, API and /metrics on loopback HOST:PORT, e.g. 127.0.0.1:8470")] = None,
) -> None:
    """Supervise the units of CONFIG until Ctrl-C or SIGTERM (units are then stopped gracefully)."""
    from enmei.cli.live import LiveView, PlainLog
    from enmei.engine.run import supervise
    from enmei.engine.successor import Handoff
    from enmei.engine.upgrade import Successor, UpgradeError, Upgrader

    try:  # started by `enmei ctl upgrade` of a running enmei: its state dir lock and listener are inherited
        handoff = Handoff.from_env()
    except UpgradeError as exc:
        fail(str(exc), Exit.START)
    try:
        loaded = load(config)
    except ConfigError as exc:
        problems = getattr(exc, "problems", [exc])
        for p in problems:
            err_console.print(f"[bold red]error[/] {p}", highlight=False, soft_wrap=True)
        if handoff is not None:
            handoff.fail("; ".join(str(p) for p in problems))
        raise typer.Exit(int(Exit.CONFIG)) from None

    live = not plain and sys.stdout.isatty()
    view: LiveView | None = None

    def attach(engine: object) -> None:
        nonlocal view
        from enmei.engine import Engine

        assert isinstance(engine, Engine)
        if view is not None:  # an engine supervising again after a failed upgrade
            view.__exit__(None, None, None)
            view = None
        if live:
            view = LiveView(engine, console, title=f"enmei — {config}")
            engine.subscribe(view)
            view.__enter__()
        else:
            engine.subscribe(PlainLog(console))

    companion = None
    web_sock = None
    if listen is not None:
        from enmei.web import WebError, bind_listen, serve

        try:
            if handoff is not None and handoff.web_fd is not None:
                web_sock = handoff.web_socket()  # the old enmei's: it never closes while changing hands
            else:
                web_sock = bind_listen(listen)  # refuses non-loopback addresses and taken ports before supervising
        except WebError as exc:
            if handoff is not None:
                handoff.fail(str(exc))
            fail(str(exc), Exit.USAGE)
        token_path = loaded.state_dir / "web.token"

        def companion(engine: object) -> Coroutine[Any, Any, None]:
            from enmei.engine import Engine

            assert isinstance(engine, Engine)
            return serve(engine, listen, token_path, sock=upgrader.web_socket(),
                         say=lambda m: console.print(m, highlight=False, soft_wrap=True))

    root_level = logging.getLogger().level
    upgrader = Upgrader(Successor(config.resolve(), listen,
                                  verbose=2 if root_level <= logging.DEBUG else 1 if root_level <= logging.INFO else 0),
                        web=web_sock)

    console.print(f"enmei {__version__}: supervising {', '.join(loaded.config.units) or 'nothing'}; "
                  f"journal {loaded.journal_path}; Ctrl-C to stop", highlight=False)
    from enmei.visor.reaper import become_subreaper

    become_subreaper()  # orphans of units are reparented to enmei (not PID 1) and reaped by it
    try:
        asyncio.run(supervise(loaded, on_start=attach, companion=companion, upgrader=upgrader, handoff=handoff))
    except IntegrityError as exc:  # a cut, rolled-back or replaced journal is not continued
        fail(str(exc), Exit.INTEGRITY)
    except (BoxError, UnsafePathError) as exc:
        fail(str(exc), Exit.START)
    except PolicyError as exc:
        fail(str(exc), Exit.CONFIG)
    except UpgradeError as exc:
        fail(str(exc), Exit.ERROR)
    finally:
        if view is not None:
            view.__exit__(None, None, None)
        upgrader.close()
    if upgrader.handed_to is not None:
        console.print(f"handed over to enmei pid {upgrader.handed_to} (enmei ctl upgrade); the units run on",
                      highlight=False)
        return
    console.print(f"stopped; journal: {loaded.journal_path} (enmei box verify -j {loaded.journal_path})",
                  highlight=False)


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="Upper bound on the scenario's length")] = 110.0,
    out: Annotated[Path, typer.Option(help="Where the demo keeps its journal and logs")] = Path(".enmei/demo"),
    plain: Annotated[bool, typer.Option("--plain", help="Log lines instead of the live table")] = False,
    listen: Annotated[str, typer.Option(help="Dashboard and /metrics address ('' for none)")] = "127.0.0.1:8470",
) -> None:
    """A bounded scenario: the demo service is crashed, hung and leaks, and enmei keeps it alive."""
    from enmei.demo.scenario import run_demo

    code = run_demo(out, max_seconds=seconds, live=not plain and sys.stdout.isatty(), listen=listen or None,
                    view=_demo_view)
    raise typer.Exit(code)


def _demo_view(engine: Engine, out: Console, live: bool) -> LiveView | None:
    """The demo's view of the records: the live table, or plain lines."""
    from enmei.cli.live import LiveView, PlainLog

    if live:
        view = LiveView(engine, out, title="enmei demo")
        engine.subscribe(view)
        return view
    engine.subscribe(PlainLog(out))
    return None


def main() -> None:
    app()
