"""``enmei policy``: check a policy, test it against scenarios, replay it over a past journal.

FILE is a Starlark policy (``.star``), a rules file (``.toml``), or ``default`` for the shipped library.
Each command loads the policy the way the supervisor does (in a sandbox process, with the same limits),
so what passes here loads there. Exit codes: 0 ok, 1 a test failed or replay disagreed (with --check),
3 the policy or scenario is invalid (the message names file:line:column).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from enmei.cli.common import Exit, console, fail, resolve_journal
from enmei.errors import BoxError, PolicyError

app = typer.Typer(help="Check, test and replay policies (Starlark or TOML rules).", no_args_is_help=True)

FileArg = Annotated[str, typer.Argument(help="Policy file (.star or .toml), or 'default' for the shipped library")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object")]


def _path(file: str) -> Path | None:
    if file == "default":
        return None
    path = Path(file)
    if not path.exists():
        fail(f"{file}: no such file", Exit.CONFIG)
    return path


@app.command()
def check(file: FileArg, as_json: JsonOpt = False,
          config: Annotated[Path | None, typer.Option("--config", "-c", help=(
              "Try the handlers on this config's units (their backends' capabilities) instead of one "
              "canned process unit"))] = None) -> None:
    """Load the policy (syntax, names, top-level code) and run it once on canned events."""
    from enmei.policy.manager import open_policy

    trial = None
    if config is not None:
        from enmei.config import load
        from enmei.errors import ConfigError
        from enmei.policy.trial import config_view

        try:
            trial = config_view(load(config).config)
        except ConfigError as exc:
            fail(str(exc), Exit.CONFIG)
    try:
        manager = open_policy(_path(file), trial_view=trial)
    except PolicyError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc), "file": exc.file, "line": exc.line,
                              "column": exc.column, "kind": getattr(exc, "kind", "syntax")}))
            raise typer.Exit(int(Exit.CONFIG)) from None
        fail(str(exc), Exit.CONFIG)
    try:
        result = {"ok": True, "policy": manager.version, "handlers": manager.handlers, "file": file}
    finally:
        manager.close()
    if as_json:
        print(json.dumps(result))
    else:
        console.print(f"[green]ok[/] {result['policy']}: handlers {', '.join(manager.handlers) or 'none'}",
                      highlight=False)


@app.command(name="test")
def run_tests(
    file: FileArg,
    scenarios: Annotated[list[Path], typer.Argument(help="Scenario files (TOML)", exists=True, dir_okay=False)],
    as_json: JsonOpt = False,
) -> None:
    """Feed each scenario's events to the policy and compare the decisions with the expected ones."""
    from enmei.policy.scenario import ScenarioResult, run_scenario

    results: list[tuple[Path, ScenarioResult]] = []
    for scenario in scenarios:
        try:
            results.append((scenario, run_scenario(_path(file), scenario)))
        except PolicyError as exc:
            fail(str(exc), Exit.CONFIG)
    ok = all(r.ok for _, r in results)
    if as_json:
        from dataclasses import asdict

        print(json.dumps({"ok": ok, "scenarios": [
            {"scenario": str(p), "policy": r.policy, "ok": r.ok, "steps": [asdict(s) for s in r.steps]}
            for p, r in results]}))
    else:
        for path, r in results:
            t = Table(title=f"{path} with {r.policy}", title_justify="left")
            for col in ("step", "event", "decisions", "result"):
                t.add_column(col)
            for s in r.steps:
                shown = "; ".join(f"{d['action']} {d['unit']} ({d['rule']})" for d in s.decisions) or "-"
                verdict = "[green]ok[/]" if s.ok else f"[red]FAIL[/] {s.problem}"
                where = f"{s.index}" + (f" (line {s.line})" if s.line else "")
                t.add_row(where, s.event, shown, verdict)
            console.print(t)
        failed = sum(not s.ok for _, r in results for s in r.steps)
        total = sum(len(r.steps) for _, r in results)
        console.print(f"{total - failed}/{total} steps pass", highlight=False)
    if not ok:
        raise typer.Exit(int(Exit.ERROR))


def _brief(ds: list[dict[str, Any]]) -> str:
    return "; ".join(f"{d['action']} {d['unit']} ({d['rule']}) {json.dumps(d.get('args') or {})}" for d in ds) or "-"


@app.command()
def replay(
    file: FileArg,
    box: Annotated[Path | None, typer.Option("--box", "-b", help="Journal to replay (default: from the config)")]
    = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Config whose journal to replay")] = None,
    show: Annotated[int, typer.Option(help="Disagreements to list")] = 20,
    check_: Annotated[bool, typer.Option("--check", help="Exit 1 unless every decision agrees")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Dry run: what the policy would have decided over a past journal, beside what was decided."""
    from enmei.policy.manager import open_policy
    from enmei.policy.replay import replay as run_replay

    journal = resolve_journal(box, config)
    try:
        manager = open_policy(_path(file))
    except PolicyError as exc:
        fail(str(exc), Exit.CONFIG)
    try:
        report = run_replay(manager, journal)
    except BoxError as exc:
        fail(str(exc), Exit.START)
    finally:
        manager.close()
    summary = report.summary()
    bad = [p for p in report.points if not p.agree]
    if as_json:
        summary["disagreements"] = [
            {"seq": p.seq, "kind": p.kind, "unit": p.unit, "now": p.now, "exact_view": p.exact,
             "original": p.original, "replayed": p.replayed} for p in bad[:show]]
        summary["errors"] = report.errors[:show]
        print(json.dumps(summary))
    else:
        t = Table(title=f"replay of {journal} with {report.policy}", title_justify="left")
        t.add_column("figure")
        t.add_column("value", justify="right")
        for k, v in summary.items():
            t.add_row(k, str(v))
        console.print(t)
        for p in bad[:show]:
            console.print(f"[yellow]seq {p.seq}[/] {p.kind} {p.unit or ''} at {p.now:.3f}"
                          f"{'' if p.exact else ' (rebuilt view)'}\n  was:   {_brief(p.original)}\n"
                          f"  would: {_brief(p.replayed)}", highlight=False, soft_wrap=True)
        for e in report.errors[:show]:
            console.print(f"[red]policy error[/] {e.get('handler')} {e.get('unit') or ''}: {e.get('error')}",
                          highlight=False, soft_wrap=True)
    if check_ and summary["agreement"] < 1.0:
        raise typer.Exit(int(Exit.ERROR))
