"""``enmei ctl``: status, start, stop, restart, reset, reload, logs and upgrade of a running supervisor, over its
state dir's UNIX socket (``enmei.ctl``). Tables by default, ``--json`` for scripts.

Exit codes: 0 done; 1 refused (unknown unit, a command the engine refused, bad arguments the server
named); 7 no enmei answers on that state dir (the message names the socket and whether an enmei holds
the state dir's lock); 3 the config given with ``-c`` is invalid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from enmei.cli.common import Exit, console, fail
from enmei.ctl.client import request
from enmei.ctl.protocol import CtlError

__all__ = ["app"]

app = typer.Typer(help="Control a running enmei over its local socket (state_dir/ctl.sock): status, start, stop, "
                       "restart, reset, update, reload, logs, upgrade.", no_args_is_help=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="The config of the running enmei")]
StateOpt = Annotated[Path | None, typer.Option("--state-dir", help="Its state dir (instead of --config)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the answer as JSON")]
UnitArg = Annotated[str, typer.Argument(help="The unit")]


def _state_dir(config: Path | None, state_dir: Path | None) -> Path:
    """``--state-dir``, else the one ``--config`` names, else ``./enmei.toml``'s, else ``./.enmei``.

    A config with errors still names its state dir (read from its raw ``[supervisor]`` table, relative
    to the file as ``enmei up`` resolves it): ``enmei ctl reload`` after a broken edit must reach the
    running enmei, which refuses the edit and says where it is wrong. Only a file that is not TOML at
    all, or whose ``state_dir`` is not a string, is an error here."""
    if state_dir is not None:
        return state_dir
    if config is None and Path("enmei.toml").exists():
        config = Path("enmei.toml")
    if config is not None:
        import tomllib

        from enmei.config.load import load
        from enmei.errors import ConfigError

        try:
            return load(config).state_dir
        except ConfigError as exc:
            try:
                raw = tomllib.loads(config.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
                fail(str(exc), Exit.CONFIG)
            sup = raw.get("supervisor", {})
            named = sup.get("state_dir", ".enmei") if isinstance(sup, dict) else None
            if not isinstance(named, str):
                fail(str(exc), Exit.CONFIG)
            return (config.resolve().parent / named).resolve()
    return Path(".enmei")


def _ask(config: Path | None, state_dir: Path | None, req: dict[str, Any], *,
         timeout_s: float | None = None) -> dict[str, Any]:
    try:
        state = _state_dir(config, state_dir)
        answer = request(state, req) if timeout_s is None else request(state, req, timeout_s=timeout_s)
    except CtlError as exc:
        fail(str(exc), Exit.NOT_RUNNING if exc.not_running else Exit.ERROR)
    if not answer.get("ok"):
        fail(str(answer.get("error") or "refused"), Exit.ERROR)
    return answer


def _print_json(answer: dict[str, Any]) -> None:
    console.print_json(json.dumps({k: v for k, v in answer.items() if k != "ok"}, default=str))


def _secs(x: Any) -> str:
    if x is None:
        return "-"
    x = float(x)
    if x < 120:
        return f"{x:.1f}s"
    if x < 7200:
        return f"{x / 60:.0f}m"
    return f"{x / 3600:.1f}h"


@app.command()
def status(unit: Annotated[str | None, typer.Argument(help="Only this unit")] = None, config: ConfigOpt = None,
           state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Every unit (or one): state, health, pid, restarts against the budget, the next backoff, the running
    remedy and the last reset (--json: also uptime, the breaker's settings, the backoff streaks)."""
    answer = _ask(config, state_dir, {"op": "status", **({"unit": unit} if unit else {})})
    if as_json:
        _print_json(answer)
        return
    table = Table(title=f"enmei (pid {answer.get('pid')}): {answer.get('config')}", title_justify="left")
    for col in ("unit", "state", "for", "health", "pid", "restarts", "next delay", "remedy", "reset"):
        table.add_column(col, no_wrap=col in ("unit", "state", "remedy"))
    for u in answer["units"]:
        table.add_row(
            u["name"], u["state"], _secs(u["state_for_s"]), u["health"], str(u["pid"] or "-"),
            f"{u['restarts_in_window']}/{u['budget']}", _secs(u["next_delay_s"]), u["remedy"] or "-",
            "-" if u["last_reset_ago_s"] is None else f"{_secs(u['last_reset_ago_s'])} ago")
    console.print(table)


def _command(op: str, unit: str, config: Path | None, state_dir: Path | None, as_json: bool) -> None:
    answer = _ask(config, state_dir, {"op": op, "unit": unit})
    if as_json:
        _print_json(answer)
        return
    if answer.get("queued"):
        console.print(f"{op} {unit}: queued; {answer.get('note', '')}")
        return
    outcome = answer.get("outcome") or {}
    said = f"{op} {unit}: {outcome.get('detail') or 'done'} (record {answer.get('seq')})"
    pre = answer.get("preempted")
    if pre:
        said += f"; cancelled {pre.get('action')} {pre.get('remedy_id')}"
    if op == "reset":
        cleared = answer.get("cleared") or {}
        said += (f"; cleared {cleared.get('restarts_in_window', 0)} restarts, backoff and breakers"
                 + ("; starting it now" if answer.get("start") else ""))
    console.print(said, highlight=False)


@app.command()
def start(unit: UnitArg, config: ConfigOpt = None, state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Start a unit now; a running repair or escalation is cancelled (journaled, with who asked)."""
    _command("start", unit, config, state_dir, as_json)


@app.command()
def stop(unit: UnitArg, config: ConfigOpt = None, state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Stop a unit; it stays stopped (a running repair is cancelled)."""
    _command("stop", unit, config, state_dir, as_json)


@app.command()
def restart(unit: UnitArg, config: ConfigOpt = None, state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Restart a unit now (counted in its budget, never refused by it)."""
    _command("restart", unit, config, state_dir, as_json)


@app.command()
def reset(unit: UnitArg, config: ConfigOpt = None, state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Forget the unit's restarts, backoff and breakers (like systemd's reset-failed); a unit left down by
    an escalation or backoff is started at once. A stopped unit stays stopped."""
    _command("reset", unit, config, state_dir, as_json)


@app.command()
def reload(config: ConfigOpt = None, state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Re-read the config and apply what changed (where this build can)."""
    answer = _ask(config, state_dir, {"op": "reload"})
    result = answer.get("reload")
    refused = result.get("ok") is False if isinstance(result, dict) else False
    if as_json:
        _print_json(answer)
    else:
        console.print_json(json.dumps(result, default=str))
    if refused and isinstance(result, dict):  # the old config stays in force: the exit code says so too
        fail(f"reload refused: {result.get('error') or 'see the journal'}", Exit.CONFIG)


@app.command()
def logs(unit: UnitArg, lines: Annotated[int, typer.Option("-n", "--lines", min=1, max=10_000)] = 50,
         stream: Annotated[str, typer.Option("--stream", help="stderr, stdout or console")] = "stderr",
         config: ConfigOpt = None, state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """The newest lines of a unit's captured log."""
    answer = _ask(config, state_dir, {"op": "logs", "unit": unit, "lines": lines, "stream": stream})
    if as_json:
        _print_json(answer)
        return
    if answer.get("error"):
        fail(f"{unit} {stream}: {answer['error']}", Exit.ERROR)
    for line in answer.get("lines", []):
        typer.echo(line)


@app.command()
def upgrade(enmei: Annotated[str | None, typer.Option(
                "--enmei", help="The enmei executable to take over (default: this one, python -m enmei)")] = None,
            takeover_timeout_s: Annotated[float, typer.Option(
                help="How long the successor may take to supervise before the old enmei supervises again")] = 60.0,
            config: ConfigOpt = None, state_dir: StateOpt = None, as_json: JsonOpt = False) -> None:
    """Replace the running enmei by a new process (this or a newer enmei): it checks itself, then takes over
    the units, the probes' schedules, the journal and the web listener; no unit is stopped. If it fails, the
    old one supervises on (exit 1, with the reason; journaled as `upgrade` records)."""
    import time

    from enmei.ctl.protocol import UPGRADE_WAIT_S

    req: dict[str, Any] = {"op": "upgrade", "takeover_timeout_s": takeover_timeout_s}
    if enmei is not None:
        req["enmei"] = [enmei]
    answer = _ask(config, state_dir, req, timeout_s=UPGRADE_WAIT_S + 10)
    result = answer.get("upgrade") or {}
    old = answer.get("pid")
    if result.get("state") != "handing_over":
        if as_json:
            _print_json(answer)
        fail(f"upgrade fell back ({result.get('stage')}): {result.get('reason')}; the old enmei supervises on",
             Exit.ERROR)
    successor = result.get("successor_pid")
    state = _state_dir(config, state_dir)
    deadline = time.monotonic() + takeover_timeout_s + 30.0
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:  # the successor answers once it supervises; the old one if it fell back
        time.sleep(0.2)
        try:
            status = request(state, {"op": "status"}, timeout_s=10.0)
        except CtlError:
            continue
        if status.get("pid") in (successor, old) and status.get("upgrade"):
            break
    end = status.get("upgrade") or {}
    if as_json:
        _print_json({"upgrade": end, "pid": status.get("pid")})
    if end.get("state") == "handed_over" and status.get("pid") == successor:
        if not as_json:
            console.print(f"upgraded: enmei pid {end.get('from_pid')} -> {successor}; takeover "
                          f"{end.get('takeover_s')} s; {end.get('running')}/{end.get('units')} units running",
                          highlight=False)
        return
    fail(f"upgrade did not complete: {end.get('reason') or 'no answer from the successor'} "
         f"(enmei pid {status.get('pid')} supervises)", Exit.ERROR)
