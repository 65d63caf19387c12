"""``enmei box``: read and check the journal (tail, show, verify, export, migrate), a SQLite file or a
PostgreSQL database (``--dsn``, or a config whose ``[supervisor] journal`` is a ``postgresql://`` URL)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from enmei.box import Anchors, Reader, Record, head_path, verify
from enmei.box.anchor import default_key_path, key_witness_path
from enmei.box.api import JournalReader
from enmei.box.pgdb import check_dsn
from enmei.cli.common import Exit, console, fail, resolve_journal
from enmei.errors import BoxError, ConfigError
from enmei.fsafe import UnsafePathError

app = typer.Typer(help="Read and check the journal (D-Box).", no_args_is_help=True)

JournalOpt = Annotated[Path | None, typer.Option("--journal", "-j", help="Journal file (default: from the config)")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="Config whose journal to read")]
DsnOpt = Annotated[str | None, typer.Option("--dsn", help="A PostgreSQL journal: postgresql://USER@HOST:PORT/DB")]
HostOpt = Annotated[str | None, typer.Option("--host", help="Whose chain in a PostgreSQL journal (default: the "
                                                            "config's [supervisor] host, or the only one)")]


def _pg_target(journal: Path | None, config: Path | None, dsn: str | None,
               host: str | None) -> tuple[str, str | None] | None:
    """(DSN, supervisor) when the journal to read is a PostgreSQL one, else None."""
    if dsn is not None:
        try:
            check_dsn(dsn)
        except ValueError as exc:
            fail(f"--dsn: {exc}", Exit.USAGE)
        return dsn, host
    if journal is not None:
        return None
    if config is None and Path("enmei.toml").exists():
        config = Path("enmei.toml")
    if config is None:
        return None
    from enmei.config.load import load

    try:
        loaded = load(config)
    except ConfigError as exc:
        fail(str(exc), Exit.CONFIG)
    if loaded.journal_dsn is None:
        return None
    return loaded.journal_dsn, host or loaded.host_name


def _open(journal: Path | None, config: Path | None, dsn: str | None = None,
          host: str | None = None) -> JournalReader:
    pg = _pg_target(journal, config, dsn, host)
    try:
        if pg is not None:
            from enmei.box.pgread import PgReader

            return PgReader(*pg)
        return Reader(resolve_journal(journal, config))
    except BoxError as exc:
        fail(str(exc), Exit.START)


def _line(rec: Record) -> str:
    ts = datetime.fromtimestamp(rec.wall).strftime("%H:%M:%S.%f")[:-3]
    body = rec.body if len(rec.body) <= 160 else rec.body[:157] + "..."
    return f"{rec.seq:>7} {ts} {rec.kind:<15} {rec.unit or '-':<12} {body}"


@app.command()
def tail(
    n: Annotated[int, typer.Option("-n", help="How many records")] = 20,
    unit: Annotated[str | None, typer.Option(help="Only this unit")] = None,
    kind: Annotated[list[str] | None, typer.Option(help="Only these kinds (repeatable)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records")] = False,
    journal: JournalOpt = None,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    host: HostOpt = None,
) -> None:
    """Print the newest records; with -f, keep following."""
    with contextlib.closing(_open(journal, config, dsn, host)) as r:
        last = 0
        for rec in r.tail(n, unit=unit, kinds=kind):
            console.print(_line(rec), highlight=False, soft_wrap=True)
            last = rec.seq
        if not follow:
            return
        last = max(last, r.last_seq())
        try:
            while True:
                time.sleep(0.5)
                for rec in r.records(unit=unit, kinds=kind, since_seq=last):
                    console.print(_line(rec), highlight=False, soft_wrap=True)
                    last = rec.seq
        except KeyboardInterrupt:
            raise typer.Exit(int(Exit.OK)) from None


@app.command()
def show(seq: int, journal: JournalOpt = None, config: ConfigOpt = None, dsn: DsnOpt = None,
         host: HostOpt = None) -> None:
    """Print one record in full, with its hashes."""
    with contextlib.closing(_open(journal, config, dsn, host)) as r:
        rec = r.get(seq)
        if rec is None:
            fail(f"no record {seq} in {r.location} (last is {r.last_seq()})")
        console.print_json(json.dumps(rec.to_json()))


WitnessOpt = Annotated[list[Path] | None, typer.Option(
    "--witness", help="A witness file of the journal (repeatable); the one next to the key and the config's "
                      "[supervisor] witness are checked too")]
KeyOpt = Annotated[Path | None, typer.Option(help="Anchor key (default: from the config, or anchor.key next to "
                                                  "the journal)")]


def _trust(path: Path, journal: Path | None, config: Path | None, key: Path | None,
           witness: list[Path] | None) -> tuple[Path, list[Path], Path | None]:
    """The anchor key, the witnesses and the state dir (if a config names them) for the journal ``path``."""
    witnesses = list(witness or [])
    state_dir = None
    if config is not None or (journal is None and Path("enmei.toml").exists()):
        from enmei.config.load import load

        try:
            loaded = load(config or Path("enmei.toml"))
        except ConfigError as exc:
            fail(str(exc), Exit.CONFIG)
        state_dir = loaded.state_dir
        if key is None:
            key = loaded.anchor_key_path
        if loaded.witness_path is not None:
            witnesses.append(loaded.witness_path)
    if key is None:
        key = default_key_path(path)
    return key, [key_witness_path(key, path), *witnesses], state_dir


@app.command(name="verify")
def verify_cmd(journal: JournalOpt = None, config: ConfigOpt = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
               key: KeyOpt = None,
               no_anchors: Annotated[bool, typer.Option("--no-anchors", help="Check the chain only")] = False,
               witness: WitnessOpt = None,
               dsn: DsnOpt = None,
               host: HostOpt = None,
               ) -> None:
    """Check the hash chain, and with the anchor key the signed anchors, head and witnesses (a cut,
    rewritten or rolled-back journal); name the first bad record, and every sealed break. Exit code 4 if
    it is broken. A PostgreSQL journal: every supervisor's chain (or --host's) and their cross-links."""
    pg = _pg_target(journal, config, dsn, host)
    if pg is not None:
        _verify_pg(pg[0], host, config, key, no_anchors, as_json)
        return
    path = resolve_journal(journal, config)
    key_path, witnesses, _ = _trust(path, journal, config, key, witness)
    anchors = None
    if not no_anchors and key_path.exists():
        try:
            anchors = Anchors.from_files(key_path, head_path(path), create=False, witnesses=witnesses)
        except (BoxError, UnsafePathError) as exc:
            fail(str(exc), Exit.START)
    elif witness:
        fail(f"--witness needs the anchor key, and {key_path} is missing", Exit.USAGE)
    t0 = time.perf_counter()
    try:
        res = verify(path, anchors=anchors)
    except BoxError as exc:
        fail(str(exc), Exit.START)
    dt = time.perf_counter() - t0
    if as_json:
        print(json.dumps({"journal": str(path), "ok": res.ok, "records": res.records, "first_bad": res.first_bad,
                          "reason": res.reason, "seconds": round(dt, 3), "anchors": anchors is not None,
                          "witnesses": [str(w) for w in witnesses if w.exists()] if anchors else [],
                          "sealed": list(res.sealed)}))
    else:
        if res.ok:
            what = "chain, anchors and signed head" if anchors else "chain (no anchor key: the tail is not checked)"
            if anchors and any(w.exists() for w in witnesses):
                what += f", {sum(w.exists() for w in witnesses)} witness(es)"
            console.print(f"[green]ok[/]: {res.records} records verified in {dt:.2f}s — {what}; head "
                          f"{res.last_hash.hex()[:16]}… ({path})", highlight=False)
        else:
            console.print(f"[bold red]BROKEN[/] at record {res.first_bad}: {res.reason} "
                          f"({res.records} records good before it; {path})", highlight=False)
        for note in res.sealed:
            console.print(f"[yellow]sealed break[/] {note}", highlight=False, soft_wrap=True)
    if not res.ok:
        raise typer.Exit(int(Exit.INTEGRITY))


def _verify_pg(dsn: str, host: str | None, config: Path | None, key: Path | None, no_anchors: bool,
               as_json: bool) -> None:
    from enmei.box.pgread import verify_pg

    anchors = None
    if key is None and config is not None:
        from enmei.config.load import load

        with contextlib.suppress(ConfigError):
            key = load(config).anchor_key_path
    if not no_anchors and key is not None and key.exists():
        try:
            anchors = Anchors.from_files(key, key.with_name(key.name + ".pg.head"), create=False)
        except (BoxError, UnsafePathError) as exc:
            fail(str(exc), Exit.START)
    t0 = time.perf_counter()
    try:
        res = verify_pg(dsn, supervisor=host, anchors=anchors)
    except BoxError as exc:
        fail(str(exc), Exit.START)
    dt = time.perf_counter() - t0
    if as_json:
        print(json.dumps({**res.to_json(), "seconds": round(dt, 3), "anchors": anchors is not None}))
    else:
        for name, r in res.chains.items():
            if r.ok:
                console.print(f"[green]ok[/]: {name}: {r.records} records, head {r.last_hash.hex()[:16]}…",
                              highlight=False)
            else:
                console.print(f"[bold red]BROKEN[/] {name} at record {r.first_bad}: {r.reason}", highlight=False)
        for why in res.broken_links:
            console.print(f"[bold red]BROKEN link[/] {why}", highlight=False, soft_wrap=True)
        console.print(f"{len(res.chains)} chain(s), {res.links_checked} cross-links checked in {dt:.2f}s"
                      + ("" if anchors else " (no anchor key: anchor signatures not checked)"), highlight=False)
    if not res.ok:
        raise typer.Exit(int(Exit.INTEGRITY))


@app.command()
def migrate(
    to: Annotated[str, typer.Option("--to", help="The PostgreSQL journal: postgresql://USER@HOST:PORT/DB")],
    host: Annotated[str | None, typer.Option("--host", help="The chain's supervisor name there (default: the "
                                                            "config's [supervisor] host, else the hostname)")] = None,
    journal: JournalOpt = None,
    config: ConfigOpt = None,
    key: KeyOpt = None,
) -> None:
    """Copy a SQLite journal into a PostgreSQL one, records and hashes unchanged, and verify it there.

    The SQLite journal must verify first (with its anchor key, if found); the supervisor must have no
    chain there yet. Then set [supervisor] journal to the URL (and host to the name) in the config."""
    from enmei.box.pgread import migrate as migrate_journal

    try:
        check_dsn(to)
    except ValueError as exc:
        fail(f"--to: {exc}", Exit.USAGE)
    path = resolve_journal(journal, config)
    key_path, _, _ = _trust(path, journal, config, key, None)
    anchors = None
    if key_path.exists():
        try:
            anchors = Anchors.from_files(key_path, head_path(path), create=False)
        except (BoxError, UnsafePathError) as exc:
            fail(str(exc), Exit.START)
    if host is None:
        import socket

        host = socket.gethostname()
        if config is not None:
            from enmei.config.load import load

            with contextlib.suppress(ConfigError):
                host = load(config).host_name
    try:
        res = migrate_journal(path, to, host, anchors=anchors)
    except BoxError as exc:
        fail(str(exc), Exit.START)
    console.print(f"migrated {res.records} records and {res.samples} samples of {path} to {host!r}"
                  f" — verified there, head {res.last_hash.hex()[:16]}…", highlight=False)


@app.command()
def seal(reason: Annotated[str, typer.Option("--reason", help="Why: kept in the new segment's first record")],
         journal: JournalOpt = None, config: ConfigOpt = None, key: KeyOpt = None,
         witness: WitnessOpt = None) -> None:
    """Keep a broken (cut, rolled-back, replaced) journal as evidence and start a new, linked segment.

    The journal, its WAL and head are renamed to <journal>.sealed-<time> untouched; the new journal's
    record 1 (kind 'seal') holds the reason, what verify found and the old segment's last seq and hash,
    and every later `box verify` reports it. Refused while an enmei runs on it. Without the anchor key, a
    new one is made (the old segment can then only be checked with the old key)."""
    from enmei.box.seal import seal as seal_journal
    from enmei.engine.statedir import StateDir

    path = resolve_journal(journal, config)
    key_path, witnesses, state_dir = _trust(path, journal, config, key, witness)
    try:
        anchors = Anchors.from_files(key_path, head_path(path), create=True, witnesses=witnesses)
        lock = StateDir(state_dir).open() if state_dir is not None else None
        try:
            res = seal_journal(path, anchors, reason)
        finally:
            if lock is not None:
                lock.close()
    except (BoxError, UnsafePathError) as exc:
        fail(str(exc), Exit.START)
    prev = res.body.get("previous") or {}
    found = prev.get("verify") or {}
    if res.sealed_as is not None:
        console.print(f"sealed: {path} -> {res.sealed_as} (last record {prev.get('last_seq')}"
                      + ("" if found.get("ok") else f"; broken: {found.get('why')}") + ")", highlight=False)
    console.print(f"new segment {path}: record {res.seal_seq} is the seal; `enmei up` continues from it",
                  highlight=False)


@app.command()
def export(
    jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per line (the only format)")] = True,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="File to write (default: stdout)")] = None,
    since: Annotated[int, typer.Option(help="Only records after this seq")] = 0,
    journal: JournalOpt = None,
    config: ConfigOpt = None,
    dsn: DsnOpt = None,
    host: HostOpt = None,
) -> None:
    """Write the records as JSON lines, with their hashes."""
    del jsonl
    with contextlib.closing(_open(journal, config, dsn, host)) as r:
        f = open(out, "w", encoding="utf-8") if out else sys.stdout  # noqa: SIM115
        try:
            n = 0
            for rec in r.records(since_seq=since):
                f.write(json.dumps(rec.to_json(), separators=(",", ":")) + "\n")
                n += 1
        finally:
            if out:
                f.close()
        if out:
            console.print(f"{n} records written to {out}")


@app.command()
def stats(journal: JournalOpt = None, config: ConfigOpt = None, dsn: DsnOpt = None, host: HostOpt = None) -> None:
    """Counts of records by kind and unit."""
    with contextlib.closing(_open(journal, config, dsn, host)) as r:
        t = Table("kind", "unit", "records")
        for kind, unit, n in r.counts_by_kind_unit():
            t.add_row(kind, unit or "-", str(n))
        console.print(t)
