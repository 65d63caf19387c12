"""``enmei bench``: benchmarks that print their figures (``--json`` for machines)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from enmei.cli.common import console

app = typer.Typer(help="Benchmarks; each prints its figures (--json: one JSON object).", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object")]


def emit(title: str, result: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    t = Table(title=title, title_justify="left")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k, v in result.items():
        t.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(t)


@app.command(name="box")
def box_cmd(as_json: JsonOpt = False,
            records: Annotated[int, typer.Option(help="Records to append and verify")] = 1_000_000) -> None:
    """Journal: durable appends per second (group commit) and verified records per second."""
    from enmei.bench import box

    emit("enmei bench box", box.run(records), as_json)


@app.command(name="fleet")
def fleet_cmd(as_json: JsonOpt = False,
              records: Annotated[int, typer.Option(min=100, help="Records appended to each journal")] = 20_000,
              trials: Annotated[int, typer.Option(min=1, max=100, help="Leader kills")] = 10,
              ttl_s: Annotated[float, typer.Option("--ttl-s", min=0.5, max=60, help="Lease TTL")] = 5.0,
              seed: Annotated[int, typer.Option(help="Seed of the kill moments")] = 19) -> None:
    """The fleet on a throw-away PostgreSQL: journal appends per second on PostgreSQL beside SQLite, the
    journal through a PostgreSQL kill -9 (lost acknowledged records), leader failover after kill -9
    (detection time, split-brain events); VM failover figures are reported as not measured."""
    from enmei.bench import fleet as bench_fleet

    emit("enmei bench fleet", bench_fleet.run(records, trials, ttl_s, seed), as_json)


@app.command()
def overhead(as_json: JsonOpt = False,
             units: Annotated[int, typer.Option(help="Demo services to supervise")] = 10,
             seconds: Annotated[float, typer.Option(help="Measurement period")] = 60.0) -> None:
    """The supervisor's own CPU with N units probed at 1 Hz (percent of one core)."""
    from enmei.bench import overhead as ov

    emit("enmei bench overhead", ov.run(units, seconds), as_json)


@app.command()
def nab(as_json: JsonOpt = False,
        data: Annotated[Path | None, typer.Option(help="NAB directory (default ../shared/data/nab or $ENMEI_NAB_DIR)")]
        = None) -> None:
    """NAB v1.1: enmei's streaming detector scored with NAB's own rules (three profiles), and the
    windowed-Gaussian baseline beside it."""
    from enmei.bench import nab as bench_nab

    emit("enmei bench nab", bench_nab.run(data), as_json)


@app.command()
def detect(as_json: JsonOpt = False,
           quick: Annotated[bool, typer.Option("--quick", help="A few files per corpus, 2 folds (a smoke run)")]
           = False,
           data: Annotated[Path | None, typer.Option(help="Corpora directory (default $ENMEI_DATA_DIR or ../data)")]
           = None,
           learning_sweep: Annotated[bool, typer.Option(
               "--learning-sweep", help="Only the latency detector's learning candidates, k-fold on NAB")] = False,
           ) -> None:
    """enmei's default detector and three baselines on NAB, SMAP, MSL and UCR files: thresholds fixed on
    training data (k-fold over NAB, NAB -> the other corpora), NAB's optimised score beside them."""
    from enmei.bench import detect as bench_detect

    if learning_sweep:
        emit("enmei bench detect --learning-sweep", bench_detect.learning_sweep(data_dir=data, quick=quick), as_json)
        return
    result = bench_detect.run(quick=quick, data_dir=data)
    if as_json:
        emit("enmei bench detect", result, True)
        return
    flat: dict[str, Any] = {}
    for row in result["corpora"]:
        for det, figures in row["detectors"].items():
            flat[f"{row['corpus']} {det}"] = (f"fixed {figures['standard_fixed']:.1f}  optimised "
                                              f"{figures['standard_optimised']:.1f}  F1 {figures['event_f1']:.2f}  "
                                              f"FA/1000 {figures['false_alarms_per_1000']:.2f}")
    flat.update({k: v for k, v in result.items() if k not in ("corpora", "detectors")})
    emit("enmei bench detect", flat, False)


@app.command()
def aging(as_json: JsonOpt = False,
          seed: Annotated[int, typer.Option(help="Another seed for the synthetic part (0: the split's own)")] = 0,
          split: Annotated[str, typer.Option(help="heldout (the figures) or dev (for tuning)")] = "heldout",
          detail: Annotated[bool, typer.Option("--detail", help="Per-series results too")] = False,
          data: Annotated[Path | None, typer.Option(help="Recorded series (default: tests/data/aging)")]
          = None) -> None:
    """Aging detection on the labelled set (recorded real processes and synthetic series): leaks found
    before they die, false alarms on growth that levels off, delay, cost; the old detector beside it."""
    from enmei.bench import aging as bench_aging

    if split not in ("heldout", "dev"):
        raise typer.BadParameter("heldout or dev", param_hint="--split")
    result = bench_aging.run(split, data, detail=detail, seed=seed)
    if as_json:
        emit("enmei bench aging", result, True)
        return
    emit("enmei bench aging", {k: v for k, v in result.items() if k != "detectors"}, False)


@app.command()
def crash(as_json: JsonOpt = False,
          points: Annotated[int, typer.Option(help="How many times to kill -9 the supervisor")] = 200,
          seed: Annotated[int, typer.Option(help="Random seed for the kill instants")] = 0,
          vm: Annotated[bool, typer.Option("--vm", help="Also a QEMU unit, panicked before some kills")] = False,
          ) -> None:
    """Kill -9 a real supervisor at random instants (mid-remedy, mid-commit) and count what broke."""
    from enmei.bench import crash as bench_crash

    emit("enmei bench crash", bench_crash.run(points, seed, vm=vm), as_json)


@app.command()
def watchdog(as_json: JsonOpt = False,
             kills: Annotated[int, typer.Option(min=1, help="How many times to kill -9 the watched enmei")] = 20,
             seed: Annotated[int, typer.Option(help="Random seed for the kill moments")] = 0,
             check: Annotated[bool, typer.Option("--check", help="Exit 6 if a goal is missed")] = False) -> None:
    """Kill -9 a watched enmei at random moments (some mid-remedy); enmei watch restarts it: detection and
    restore times, lost records, duplicated remedies."""
    from enmei.bench import watchdog as bench_watchdog
    from enmei.cli.common import Exit

    result = bench_watchdog.run(kills, seed)
    emit("enmei bench watchdog", result, as_json)
    if check and not result["goals_met"]:
        raise typer.Exit(int(Exit.BENCH_GOAL))


@app.command()
def tamper(as_json: JsonOpt = False,
           trials: Annotated[int, typer.Option(help="Tampered copies to verify")] = 600,
           seed: Annotated[int, typer.Option(help="Random seed")] = 0) -> None:
    """Tamper with a journal (byte flips, deletions, reordering, cut and rewritten tails) and count
    what verify detects."""
    from enmei.bench import tamper as bench_tamper

    emit("enmei bench tamper", bench_tamper.run(trials, seed=seed), as_json)


@app.command()
def reboot(as_json: JsonOpt = False,
           runs: Annotated[int, typer.Option(help="Panics repaired by each kind of reboot")] = 5) -> None:
    """Downtime after a guest kernel panic: cold reboot vs phase-based reboot (QEMU, medians)."""
    from enmei.bench import reboot as bench_reboot

    emit("enmei bench reboot", bench_reboot.run(runs), as_json)


@app.command()
def deploy(as_json: JsonOpt = False,
           runs: Annotated[int, typer.Option(min=1, max=100, help="Trials of each kind")] = 5,
           rate: Annotated[float, typer.Option(min=10, max=2000, help="Requests per second to each unit")] = 250.0
           ) -> None:
    """A process unit under constant load: plain restart vs socket-handover update (failed requests, gaps)."""
    from enmei.bench import deploy as bench_deploy

    result = bench_deploy.run(runs, rate)
    if as_json:
        print(json.dumps(result))
        return
    emit("enmei bench deploy", {k: v for k, v in result.items() if k != "trials"}, False)


@app.command()
def vmm(as_json: JsonOpt = False,
        runs: Annotated[int, typer.Option(help="Repairs of each kind")] = 5,
        sizes: Annotated[str, typer.Option(help="Guest sizes in MiB, comma-separated")] = "256,1024") -> None:
    """VMM rejuvenation vs reboots: downtime (RAM shared vs copied) and the warm cache (QEMU, medians)."""
    import sys

    from enmei.bench import vmm as bench_vmm

    try:
        sizes_mib = tuple(int(s) for s in sizes.split(","))
    except ValueError:
        raise typer.BadParameter(f"--sizes {sizes!r}: give MiB figures like 256,1024") from None
    emit("enmei bench vmm", bench_vmm.run(runs, sizes_mib=sizes_mib,
                                          say=lambda line: print(line, file=sys.stderr, flush=True)), as_json)


@app.command()
def update(as_json: JsonOpt = False,
           runs: Annotated[int, typer.Option(help="Updates done each way (cold reboot, shadow update)")] = 5,
           probe_ms: Annotated[float, typer.Option(min=1.0, max=1000.0,
                                                   help="The external prober's period, in ms")] = 5.0) -> None:
    """Downtime of a guest update (other boot files): cold reboot vs shadow update (QEMU, medians;
    a prober every 5 ms, a writer on the data disk throughout)."""
    from enmei.bench import update as bench_update

    emit("enmei bench update", bench_update.run(runs, probe_interval_s=probe_ms / 1000.0), as_json)


@app.command(name="logs")
def logs_cmd(as_json: JsonOpt = False,
             data: Annotated[Path | None, typer.Option(
                 help="Loghub directory (default $ENMEI_LOGHUB_DIR or ../shared/data/loghub)")] = None,
             sets: Annotated[str | None, typer.Option(help="Comma-separated Loghub-2k sets (default: all 16)")]
             = None,
             drain3: Annotated[bool, typer.Option(help="Drain3 on the same lines (the bench extra)")] = True,
             hdfs: Annotated[bool, typer.Option(help="HDFS session classification (the bench extra)")] = True,
             repeats: Annotated[int, typer.Option(
                 min=1, max=20, help="Runs of each miner per set; the fastest is timed")] = 3,
             faults: Annotated[bool, typer.Option(
                 help="The fault-class data set (tests/data/logfaults, $ENMEI_LOGFAULTS)")] = True,
             ) -> None:
    """Log template mining on the Loghub-2k sets (grouping and parsing accuracy, lines/s) with Drain3
    beside it, and anomalous HDFS sessions from template counts (precision, recall, F1)."""
    from enmei.bench import logs as bench_logs

    names = bench_logs.SETS if sets is None else tuple(x.strip() for x in sets.split(",") if x.strip())
    unknown = [n for n in names if n not in bench_logs.SETS]
    if unknown or not names:
        raise typer.BadParameter(f"unknown sets {unknown}; known: {', '.join(bench_logs.SETS)}", param_hint="--sets")
    try:
        result = bench_logs.run(data, names, drain3=drain3, hdfs=hdfs, repeats=repeats, faults=faults)
    except FileNotFoundError as exc:
        raise typer.BadParameter(f"{exc.filename}: not found (is the Loghub data there?)", param_hint="--data") from exc
    if as_json:
        print(json.dumps(result))
        return
    flat: dict[str, Any] = {}
    for name, row in result["per_set"].items():
        d3 = (f"  Drain3 GA {row['drain3_grouping_accuracy']:.3f} PA {row['drain3_parsing_accuracy']:.3f}"
              if "drain3_grouping_accuracy" in row else "")
        flat[f"{name}{' (dev)' if row['dev'] else ''}"] = (
            f"GA {row['grouping_accuracy']:.3f} PA {row['parsing_accuracy']:.3f}{d3}")
    flat.update({k: v for k, v in result.items() if k != "per_set"})
    emit("enmei bench logs", flat, False)


@app.command()
def malware(as_json: JsonOpt = False,
            trials: Annotated[int, typer.Option(min=1, max=1000, help="Trials, each in a fresh guest")] = 11,
            seed: Annotated[int, typer.Option(help="Seed of the first trial (then seed + 1, ...)")] = 1,
            max_trial_s: Annotated[float, typer.Option(min=10, help="Schedule time per trial, at most")] = 120.0,
            partial: Annotated[Path | None, typer.Option(help="Append each trial's result to this file")] = None,
            ) -> None:
    """Keylogger and bot detection from outside the guest: typed bursts vs silent controls, each specimen
    and benign workload of the test image in turn (QEMU; tpr, fpr, time to detect; seeds recorded)."""
    import sys

    from enmei.bench import malware as bench_malware

    result = bench_malware.run(trials, seed=seed, max_trial_s=max_trial_s, partial=partial,
                               say=lambda line: print(line, file=sys.stderr, flush=True))
    if as_json:
        print(json.dumps(result))
        return
    emit("enmei bench malware", {k: v for k, v in result.items() if k != "per_trial"}, False)


@app.command()
def crossview(as_json: JsonOpt = False,
              trials: Annotated[int, typer.Option(min=2, max=1000, help="Trials in all (detector runs)")] = 50,
              sessions: Annotated[int, typer.Option(
                  min=2, max=100, help="Guest boots (at least one per workload: churn, hide-bind, hide-task, "
                                       "hide-module)")] = 4,
              ) -> None:
    """Hidden processes and kernel modules found by comparing the guest's own lists with its memory read from
    outside (QEMU, shared RAM; tpr, fpr, listing time for 256 MiB and 1 GiB guests)."""
    import sys

    from enmei.bench import crossview as bench_crossview

    result = bench_crossview.run(trials, sessions=sessions, say=lambda line: print(line, file=sys.stderr, flush=True))
    if as_json:
        print(json.dumps(result))
        return
    emit("enmei bench crossview", {k: v for k, v in result.items() if k != "per_session"}, False)


@app.command()
def selfupdate(as_json: JsonOpt = False,
               runs: Annotated[int, typer.Option(min=1, max=100, help="Upgrades (medians are reported)")] = 5,
               units: Annotated[int, typer.Option(min=1, max=100, help="HTTP services, probed each period")] = 10,
               period: Annotated[float, typer.Option(min=0.1, max=10, help="Probe period in seconds")] = 1.0) -> None:
    """enmei ctl upgrade under a real enmei up: stopped units, the longest probe gap, takeover time and
    refused web connections (a client hammering the API), medians over the runs."""
    import sys

    from enmei.bench import selfupdate as bench_selfupdate

    result = bench_selfupdate.run(runs, units, period, say=lambda line: print(line, file=sys.stderr, flush=True))
    if as_json:
        print(json.dumps(result))
        return
    emit("enmei bench selfupdate", {k: v for k, v in result.items() if k != "per_run"}, False)


@app.command()
def policy(as_json: JsonOpt = False,
           evaluations: Annotated[int, typer.Option(help="Timed evaluations per stream")] = 20_000) -> None:
    """Evaluations per second of the shipped default policy library, and their p99 latency."""
    from enmei.bench import policy as bench_policy

    emit("enmei bench policy", bench_policy.run(evaluations), as_json)


@app.command()
def abuse(as_json: JsonOpt = False,
          runs: Annotated[int, typer.Option(min=1, help="kill -9 restarts per attack (the median is reported)")] = 5,
          ) -> None:
    """Kill -9 -> restarted time of a unit while enmei is attacked (huge unauthenticated bodies, a log
    flood, a slow policy, idle connections); goal: the worst attack's median <= 1 s."""
    from enmei.bench import abuse as bench_abuse

    result = bench_abuse.run(runs)
    if as_json:
        emit("enmei bench abuse", result, True)
        return
    flat: dict[str, Any] = {}
    for name, figures in result["attacks"].items():
        for key, value in figures.items():
            flat[f"{name}: {key}"] = value
    flat.update({k: v for k, v in result.items() if k != "attacks"})
    emit("enmei bench abuse", flat, False)


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
def daemons(as_json: JsonOpt = False,
            repeats: Annotated[int, typer.Option(min=1, help="Repeats of each cell")] = 3,
            daemons: Annotated[str | None, typer.Option("--daemons", help="Comma-separated: nginx,redis,postgresql")]
            = None,
            faults: Annotated[str | None, typer.Option(
                "--faults", help="Comma-separated: kill,hang,slow_start_crash,broken_config")] = None,
            supervisors: Annotated[str | None, typer.Option(
                "--supervisors", help="Comma-separated: enmei,supervisord,monit")] = None,
            progress: Annotated[bool, typer.Option(help="Say each repeat's figures on stderr as it ends")] = True,
            ) -> None:
    """Real nginx, Redis and PostgreSQL under enmei, supervisord and Monit: kill -9, hang (SIGSTOP),
    slow start + crash, broken config fixed by the operator; detect_s, back_s, failed requests, leftovers."""
    import sys

    from enmei.bench import daemons as bench_daemons

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = bench_daemons.run(repeats, _names(daemons), _names(faults), _names(supervisors),
                                   progress=say if progress else None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if as_json:
        print(json.dumps(result))
        return
    t = Table(title="enmei bench daemons (medians)", title_justify="left")
    for col in ("daemon", "fault", "supervisor", "recovered", "detect_s", "back_s", "failed", "leftovers"):
        t.add_column(col, justify="left" if col in ("daemon", "fault", "supervisor") else "right")
    for c in result["cells"]:
        t.add_row(c["daemon"], c["fault"], c["supervisor"], "yes" if c["recovered"] else "[red]no[/]",
                  str(c["median_detect_s"]), str(c["median_back_s"]), str(c["median_failed_requests"]),
                  str(c["leftover_processes"]))
    console.print(t)
    emit("summary", {k: v for k, v in result.items() if k not in ("cells", "configs")}, False)
