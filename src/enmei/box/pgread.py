"""Read, verify, export and migrate PostgreSQL journals (``enmei.box.api.JournalReader`` over one chain).

``PgReader(dsn, supervisor)`` reads one supervisor's chain; every method raises ``BoxError`` (never a
``psycopg`` error) when the database cannot be read. ``verify_pg`` checks every chain of the database
(or one) with the same per-record checks as the SQLite ``verify`` (seq continuity, ``prev``, the hash),
the anchors' signatures when given the key, and every cross-link: an anchor of one chain names the
newest record of the others, and that record must still be there with that hash. ``migrate`` copies a
verified SQLite journal into one chain, unchanged (the same seqs and hashes), and verifies it after.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from enmei.box.anchor import Anchors
from enmei.box.pgdb import connect, ensure_schema, redact
from enmei.box.pgstore import supervisors_on
from enmei.box.record import GENESIS, Record
from enmei.box.verify import VerifyResult, verify, verify_rows
from enmei.errors import BoxError

__all__ = ["FleetVerify", "MigrateResult", "PgReader", "export_pg", "migrate", "supervisors", "verify_pg"]

_COLS = "seq, wall_ns, mono_ns, kind, unit, body, prev, hash"


def _record(row: Sequence[Any]) -> Record:
    return Record(int(row[0]), int(row[1]), int(row[2]), str(row[3]), str(row[4]), str(row[5]),
                  bytes(row[6]), bytes(row[7]))


@contextlib.contextmanager
def _reading(where: str) -> Iterator[None]:
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        text = str(exc).strip()
        raise BoxError(f"{where}: cannot read the journal: {text.splitlines()[0] if text else exc!r}") from exc


def supervisors(dsn: str) -> list[str]:
    """The supervisors with a chain in the database at ``dsn``, sorted (``BoxError`` if unreachable)."""
    conn = connect(dsn, autocommit=True)
    try:
        with _reading(redact(dsn)), conn.cursor() as cur:
            cur.execute("SELECT to_regclass('enmei_records')")
            row = cur.fetchone()
            return supervisors_on(cur) if row and row[0] else []
    finally:
        conn.close()


class PgReader:
    """A read-only view of supervisor ``supervisor``'s chain (None: the only chain in the database;
    ``BoxError`` if there are several and none was named)."""

    def __init__(self, dsn: str, supervisor: str | None = None) -> None:
        self.dsn = dsn
        if supervisor is None:
            names = supervisors(dsn)
            if len(names) != 1:
                raise BoxError(f"{redact(dsn)}: {len(names)} supervisors' chains here "
                               f"({', '.join(names) or 'none'}): name one (--host)")
            supervisor = names[0]
        self.supervisor = supervisor
        self.location = f"{redact(dsn)}#{supervisor}"
        self.conn: Any = connect(dsn, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PgReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _all(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with _reading(self.location), self.conn.cursor() as cur:
            cur.execute(sql, (self.supervisor, *args))
            return [tuple(r) for r in cur.fetchall()]

    def _where(self, unit: str | None, kinds: list[str] | None, since_seq: int | None,
               since_wall: float | None) -> tuple[str, list[object]]:
        clauses = ["supervisor = %s"]
        args: list[object] = []
        if unit is not None:
            clauses.append("unit = %s")
            args.append(unit)
        if kinds:
            clauses.append("kind = ANY(%s)")
            args.append(list(kinds))
        if since_seq is not None:
            clauses.append("seq > %s")
            args.append(since_seq)
        if since_wall is not None:
            clauses.append("wall_ns >= %s")
            args.append(int(since_wall * 1e9))
        return " WHERE " + " AND ".join(clauses), args

    def get(self, seq: int) -> Record | None:
        rows = self._all(f"SELECT {_COLS} FROM enmei_records WHERE supervisor = %s AND seq = %s", (seq,))  # noqa: S608 - placeholders only
        return _record(rows[0]) if rows else None

    def last_seq(self) -> int:
        rows = self._all("SELECT COALESCE(MAX(seq), 0) FROM enmei_records WHERE supervisor = %s")
        return int(rows[0][0])

    def count(self) -> int:
        return int(self._all("SELECT COUNT(*) FROM enmei_records WHERE supervisor = %s")[0][0])

    def tail(self, n: int = 20, *, unit: str | None = None, kinds: list[str] | None = None) -> list[Record]:
        """The newest ``n`` records (oldest first), optionally of one unit and some kinds."""
        where, args = self._where(unit, kinds, None, None)
        rows = self._all(f"SELECT {_COLS} FROM enmei_records{where} ORDER BY seq DESC LIMIT %s", (*args, n))  # noqa: S608 - placeholders only
        return [_record(r) for r in reversed(rows)]

    def records(self, *, unit: str | None = None, kinds: list[str] | None = None,
                since_seq: int | None = None, since_wall: float | None = None,
                limit: int | None = None) -> Iterator[Record]:
        """Records in seq order after ``since_seq`` / from ``since_wall``, filtered (read in pages)."""
        where, args = self._where(unit, kinds, since_seq, since_wall)
        left = limit
        after = since_seq if since_seq is not None else 0
        while left is None or left > 0:
            page = 5000 if left is None else min(left, 5000)
            w, a = self._where(unit, kinds, after, since_wall)
            rows = self._all(f"SELECT {_COLS} FROM enmei_records{w} ORDER BY seq LIMIT %s", (*a, page))  # noqa: S608 - placeholders only
            for row in rows:
                yield _record(row)
            if len(rows) < page:
                return
            after = int(rows[-1][0])
            if left is not None:
                left -= len(rows)
        del where, args

    def samples(self, unit: str, metric: str, *, since_wall: float = 0.0,
                limit: int = 10_000) -> list[tuple[float, float]]:
        """(wall, value) pairs of one metric of one unit, oldest first."""
        rows = self._all("SELECT wall, value FROM (SELECT wall, value FROM enmei_samples WHERE supervisor = %s"
                         " AND unit = %s AND metric = %s AND wall >= %s ORDER BY wall DESC LIMIT %s) s ORDER BY wall",
                         (unit, metric, since_wall, limit))
        return [(float(w), float(v)) for w, v in rows]

    def metrics(self, unit: str) -> list[str]:
        rows = self._all("SELECT DISTINCT metric FROM enmei_samples WHERE supervisor = %s AND unit = %s", (unit,))
        return sorted(str(r[0]) for r in rows)

    def latest_sample(self, unit: str, metric: str) -> float | None:
        rows = self._all("SELECT value FROM enmei_samples WHERE supervisor = %s AND unit = %s AND metric = %s"
                         " ORDER BY wall DESC LIMIT 1", (unit, metric))
        return float(rows[0][0]) if rows else None

    def counts_by_kind_unit(self) -> list[tuple[str, str, int]]:
        """(kind, unit, number of records) for every kind and unit present, sorted by kind then unit."""
        rows = self._all("SELECT kind, unit, COUNT(*) FROM enmei_records WHERE supervisor = %s"
                         " GROUP BY kind, unit ORDER BY kind, unit")
        return [(str(k), str(u), int(n)) for k, u, n in rows]


    # -- the aggregate queries of the dashboard, /metrics and the report (``enmei.box.query.Reader``'s,
    # in PostgreSQL's JSON operators: ``b->'f'`` keeps a JSON value's type, ``b->>'f'`` is its text) ------

    def _q(self, sql: str, args: dict[str, Any]) -> list[tuple[Any, ...]]:
        with _reading(self.location), self.conn.cursor() as cur:
            cur.execute(sql, {"sup": self.supervisor, **args})
            return [tuple(r) for r in cur.fetchall()]

    def sample_count(self, unit: str, metric: str, since: float, until: float) -> int:
        rows = self._q(f"SELECT COUNT(*) {_WINDOW}", _win(unit, metric, since, until))
        return int(rows[0][0])

    def samples_between(self, unit: str, metric: str, since: float, until: float) -> list[tuple[float, float]]:
        rows = self._q(f"SELECT wall, value {_WINDOW} ORDER BY wall", _win(unit, metric, since, until))
        return [(float(w), float(v)) for w, v in rows]

    def sample_buckets(self, unit: str, metric: str, since: float, until: float,
                       step: float) -> list[tuple[float, float, float]]:
        rows = self._q(f"SELECT AVG(wall), MIN(value), MAX(value) {_WINDOW}"
                       " GROUP BY floor((wall - %(since)s) / %(step)s) ORDER BY 1",
                       {**_win(unit, metric, since, until), "step": step})
        return [(float(w), float(lo), float(hi)) for w, lo, hi in rows]

    def units_between(self, since: float, until: float) -> list[str]:
        rows = self._q("SELECT DISTINCT unit FROM enmei_records WHERE supervisor = %(sup)s AND wall_ns >= %(a)s"
                       " AND wall_ns <= %(b)s AND unit <> '' UNION SELECT DISTINCT unit FROM enmei_samples"
                       " WHERE supervisor = %(sup)s AND wall >= %(since)s AND wall <= %(until)s",
                       {"a": int(since * 1e9), "b": int(until * 1e9), "since": since, "until": until})
        return sorted(str(r[0]) for r in rows)

    def hashes(self) -> dict[int, bytes]:
        return {int(seq): bytes(h) for seq, h in self._q(
            "SELECT seq, hash FROM enmei_records WHERE supervisor = %(sup)s", {})}

    def repeated_remedy_starts(self) -> list[tuple[object, int]]:
        rows = self._q("SELECT body::jsonb->'decision_seq', COUNT(*) FROM enmei_records WHERE supervisor = %(sup)s"
                       " AND kind = 'remedy.start' GROUP BY 1 HAVING COUNT(*) > 1", {})
        return [(d, int(n)) for d, n in rows]

    def last_start_seq(self, up_to_seq: int) -> int | None:
        rows = self._q("SELECT MAX(seq) FROM enmei_records WHERE supervisor = %(sup)s AND kind = 'supervisor'"
                       " AND seq <= %(upto)s AND body::jsonb->>'event' = 'started'", {"upto": up_to_seq})
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def count_by(self, kind: str, fields: Sequence[str], up_to_seq: int) -> list[tuple[Any, ...]]:
        cols = "".join(f", b->'{_field(f)}'" for f in fields)
        groups = ", ".join(str(i) for i in range(1, len(fields) + 2))
        return self._q(f"SELECT unit{cols}, COUNT(*) FROM (SELECT unit, body::jsonb AS b FROM enmei_records"  # noqa: S608
                       " WHERE supervisor = %(sup)s AND kind = %(kind)s AND seq <= %(upto)s) r"
                       f" GROUP BY {groups}", {"kind": kind, "upto": up_to_seq})

    def exit_counts(self, up_to_seq: int) -> list[tuple[str, str, int]]:
        rows = self._q(
            "SELECT unit, CASE WHEN kind = 'unit.state' THEN 'start_failed'"
            " WHEN jsonb_typeof(b->'signal') = 'string' AND b->>'signal' <> '' THEN 'signal'"
            " WHEN jsonb_typeof(b->'code') = 'number' AND (b->>'code')::numeric = 0 THEN 'clean'"
            " WHEN jsonb_typeof(b->'code') = 'number' THEN 'error' ELSE 'other' END, COUNT(*)"
            " FROM (SELECT unit, kind, body::jsonb AS b FROM enmei_records WHERE supervisor = %(sup)s"
            " AND seq <= %(upto)s AND kind IN ('unit.event', 'unit.state')) r"
            " WHERE (kind = 'unit.event' AND b->>'event' = 'exited') OR (kind = 'unit.state'"
            " AND b->>'to' = 'exited' AND b->>'reason' LIKE 'start failed%%') GROUP BY 1, 2", {"upto": up_to_seq})
        return [(str(u), str(r), int(n)) for u, r, n in rows]

    def restart_counts(self, up_to_seq: int, actions: Sequence[str]) -> list[tuple[str, str, str, int]]:
        rows = self._q(
            "SELECT d.unit, d.b->>'action', CASE WHEN d.b->>'rule' = 'manual' THEN 'operator'"
            " WHEN c.kind = 'unit.event' THEN 'exit' WHEN c.kind = 'verdict' THEN 'verdict'"
            " WHEN c.kind = 'remedy.outcome' THEN 'retry' ELSE 'other' END, COUNT(*)"
            " FROM (SELECT unit, body::jsonb AS b FROM enmei_records WHERE supervisor = %(sup)s"
            " AND kind = 'decision' AND seq <= %(upto)s) d LEFT JOIN enmei_records c ON c.supervisor = %(sup)s"
            " AND c.seq = (CASE WHEN jsonb_typeof(d.b->'cause_seq') = 'number' THEN (d.b->>'cause_seq')::numeric END)"
            " WHERE d.b->'rejected' IS NULL AND d.b->'suppressed' IS NULL AND (d.b->>'action' = ANY(%(actions)s)"
            " OR d.b->'counted_as_restart' = 'true'::jsonb) GROUP BY 1, 2, 3",
            {"upto": up_to_seq, "actions": list(actions)})
        return [(str(u), str(a), str(r), int(n)) for u, a, r, n in rows]

    def value_buckets(self, kind: str, field: str, label: str, bounds: Sequence[float],
                      up_to_seq: int) -> list[tuple[str, int, int, float]]:
        f, lab = _field(field), _field(label)
        case, args = _bucket_case(f"(b->>'{f}')::float8", bounds)
        rows = self._q(
            f"SELECT b->>'{lab}', {case}, COUNT(*), SUM((b->>'{f}')::float8) FROM (SELECT body::jsonb AS b"  # noqa: S608
            " FROM enmei_records WHERE supervisor = %(sup)s AND kind = %(kind)s AND seq <= %(upto)s) r"
            f" WHERE jsonb_typeof(b->'{f}') = 'number' AND (b->>'{f}')::float8 >= 0 GROUP BY 1, 2",
            {**args, "kind": kind, "upto": up_to_seq})
        return [(str(a), int(b), int(n), float(s)) for a, b, n, s in rows]

    def sample_histogram(self, suffix: str, bounds: Sequence[float],
                         up_to_wall: float) -> list[tuple[str, str, int, int, float]]:
        case, args = _bucket_case("value", bounds)
        rows = self._q(f"SELECT unit, metric, {case}, COUNT(*), SUM(value) FROM enmei_samples"  # noqa: S608
                       " WHERE supervisor = %(sup)s AND right(metric, %(n)s) = %(suffix)s AND wall <= %(upto)s"
                       " AND value >= 0 GROUP BY 1, 2, 3",
                       {**args, "n": len(suffix), "suffix": suffix, "upto": up_to_wall})
        return [(str(u), str(m), int(b), int(n), float(s)) for u, m, b, n, s in rows]

    def flood_counts(self, up_to_seq: int) -> list[tuple[str, str, int, int]]:
        rows = self._q(
            "SELECT unit, b->>'stream', SUM(CASE WHEN b->>'phase' = 'begin' THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN b->>'phase' = 'end' AND jsonb_typeof(b->'dropped_bytes') = 'number'"
            " AND (b->>'dropped_bytes')::numeric >= 0 THEN (b->>'dropped_bytes')::numeric ELSE 0 END)"
            " FROM (SELECT unit, body::jsonb AS b FROM enmei_records WHERE supervisor = %(sup)s"
            " AND kind = 'unit.event' AND seq <= %(upto)s) r WHERE b->>'event' = 'log_flood' GROUP BY 1, 2",
            {"upto": up_to_seq})
        return [(str(u), str(s), int(b or 0), int(d or 0)) for u, s, b, d in rows]

    def flood_phases(self, first_seq: int, last_seq: int) -> list[tuple[str, str, str]]:
        rows = self._q(
            "SELECT DISTINCT ON (unit, b->>'stream') unit, b->>'stream', b->>'phase' FROM (SELECT unit, seq,"
            " body::jsonb AS b FROM enmei_records WHERE supervisor = %(sup)s AND kind = 'unit.event'"
            " AND seq >= %(lo)s AND seq <= %(hi)s) r WHERE b->>'event' = 'log_flood'"
            " ORDER BY unit, b->>'stream', seq DESC", {"lo": first_seq, "hi": last_seq})
        return [(str(u), str(s), str(p)) for u, s, p in rows]


    def interrupted_remedies(self, lookback: int) -> list[dict[str, Any]]:
        """``enmei.box.intents.interrupted_remedies`` on this chain: ``remedy.start`` records of the last
        ``lookback`` records with no ``remedy.outcome`` of the same ``remedy_id``, oldest first."""
        low = max(0, self.last_seq() - lookback)
        started = self._q("SELECT seq, unit, body::jsonb->'remedy_id', body::jsonb->'action' FROM enmei_records"
                          " WHERE supervisor = %(sup)s AND kind = 'remedy.start' AND seq > %(low)s ORDER BY seq",
                          {"low": low})
        ended = {r[0] for r in self._q("SELECT body::jsonb->'remedy_id' FROM enmei_records WHERE supervisor = %(sup)s"
                                       " AND kind = 'remedy.outcome' AND seq > %(low)s", {"low": low})}
        return [{"seq": int(s), "unit": u, "remedy_id": r, "action": a} for s, u, r, a in started if r not in ended]


_WINDOW = ("FROM enmei_samples WHERE supervisor = %(sup)s AND unit = %(unit)s AND metric = %(metric)s"
           " AND wall >= %(since)s AND wall <= %(until)s")


def _win(unit: str, metric: str, since: float, until: float) -> dict[str, Any]:
    return {"unit": unit, "metric": metric, "since": since, "until": until}


def _field(name: str) -> str:
    # Field names are spliced into JSON operators: only plain identifiers, never text from outside.
    if not name.isidentifier():
        raise ValueError(f"not a field name: {name!r}")
    return name


def _bucket_case(expr: str, bounds: Sequence[float]) -> tuple[str, dict[str, float]]:
    whens = "".join(f" WHEN {expr} <= %(b{i})s THEN {i}" for i in range(len(bounds)))
    return f"CASE{whens} ELSE {len(bounds)} END", {f"b{i}": float(b) for i, b in enumerate(bounds)}


# -- verify -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetVerify:
    """Each chain's ``VerifyResult`` by supervisor, and the cross-links that do not hold."""

    chains: dict[str, VerifyResult]
    broken_links: tuple[str, ...] = ()
    links_checked: int = 0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.chains.values()) and not self.broken_links

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "links_checked": self.links_checked, "broken_links": list(self.broken_links),
                "chains": {name: {"ok": r.ok, "records": r.records, "last_seq": r.last_seq,
                                  "last_hash": r.last_hash.hex(), "first_bad": r.first_bad, "why": r.reason}
                           for name, r in self.chains.items()}}


def verify_pg(dsn: str, *, supervisor: str | None = None, anchors: Anchors | None = None) -> FleetVerify:
    """Verify the chain of ``supervisor`` (None: every chain) and all cross-links found in the chains
    checked. With ``anchors``, every anchor record must carry a valid signature of the hash it names.
    ``BoxError`` if the database cannot be read; a broken chain is a result, not an error."""
    conn = connect(dsn, autocommit=False, statement_timeout_s=None)
    where = redact(dsn)
    try:
        with _reading(where):
            with conn.cursor() as cur:
                names = supervisors_on(cur) if supervisor is None else [supervisor]
            conn.commit()
            chains: dict[str, VerifyResult] = {}
            for name in names:
                chains[name] = _verify_chain(conn, name, anchors)
            links, broken = _check_links(conn, names, chains)
    finally:
        conn.close()
    return FleetVerify(chains, tuple(broken), links)


def _verify_chain(conn: Any, name: str, anchors: Anchors | None) -> VerifyResult:
    # A server-side (named) cursor streams the chain in pages instead of loading it whole.
    with conn.cursor(name=f"enmei_verify_{abs(hash(name))}") as cur:
        cur.itersize = 20_000
        cur.execute(f"SELECT {_COLS} FROM enmei_records WHERE supervisor = %s ORDER BY seq", (name,))  # noqa: S608 - placeholders only
        res = verify_rows(cast(Any, _BytesRows(cur)))
    conn.commit()
    if not res.ok or anchors is None:
        return res
    with conn.cursor() as cur:
        cur.execute("SELECT seq, body FROM enmei_records WHERE supervisor = %s AND kind = 'anchor' ORDER BY seq",
                    (name,))
        for seq, body in cur.fetchall():
            try:
                a = json.loads(body)
                ok = anchors.valid(int(a["upto"]), bytes.fromhex(a["hash"]), str(a["hmac"]))
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                conn.commit()
                return VerifyResult(res.records, res.last_seq, res.last_hash, int(seq),
                                    f"anchor record {seq} does not carry a valid signature")
    conn.commit()
    return res


class _BytesRows:
    """A cursor whose BYTEA columns come back as ``bytes`` (psycopg may give ``memoryview``)."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def fetchmany(self, n: int) -> list[tuple[Any, ...]]:
        return [(*r[:6], bytes(r[6]), bytes(r[7])) for r in self.cur.fetchmany(n)]


def _check_links(conn: Any, names: list[str], chains: dict[str, VerifyResult]) -> tuple[int, list[str]]:
    """Every anchor's ``upto`` must name its own record's hash, and every peer it names must hold the
    record it named, with that hash."""
    broken: list[str] = []
    checked = 0
    with conn.cursor() as cur:
        for name in names:
            cur.execute("SELECT seq, body FROM enmei_records WHERE supervisor = %s AND kind = 'anchor' ORDER BY seq",
                        (name,))
            for seq, body in cur.fetchall():
                try:
                    a = json.loads(body)
                    targets = [(name, int(a["upto"]), str(a["hash"]))]
                    targets += [(str(p), int(v["seq"]), str(v["hash"])) for p, v in (a.get("peers") or {}).items()]
                except (ValueError, KeyError, TypeError, AttributeError):
                    broken.append(f"{name} record {seq}: an anchor that cannot be read")
                    continue
                for peer, pseq, phash in targets:
                    if pseq == 0:
                        continue
                    checked += 1
                    cur.execute("SELECT hash FROM enmei_records WHERE supervisor = %s AND seq = %s", (peer, pseq))
                    row = cur.fetchone()
                    if row is None:
                        broken.append(f"{name} record {seq} names {peer} record {pseq}, which is missing "
                                      "(cut or rolled back)")
                    elif bytes(row[0]).hex() != phash:
                        broken.append(f"{name} record {seq} names {peer} record {pseq} with another hash "
                                      "(rewritten)")
    conn.commit()
    del chains
    return checked, broken


# -- export and migrate -----------------------------------------------------------------------------


def export_pg(dsn: str, supervisor: str | None = None) -> Iterator[dict[str, Any]]:
    """Every record of one chain (None: every chain, one after the other) as ``Record.to_json()`` plus its
    ``supervisor``."""
    names = [supervisor] if supervisor is not None else supervisors(dsn)
    for name in names:
        with PgReader(dsn, name) as r:
            for rec in r.records():
                yield {"supervisor": name, **rec.to_json()}


@dataclass(frozen=True)
class MigrateResult:
    records: int
    samples: int
    last_seq: int
    last_hash: bytes
    verified: FleetVerify = field(repr=False)


def migrate(journal: Path, dsn: str, supervisor: str, *, anchors: Anchors | None = None,
            batch: int = 5000) -> MigrateResult:
    """Copy the SQLite journal at ``journal`` into ``supervisor``'s chain at ``dsn``, unchanged (the same
    seqs, times, bodies and hashes) with its samples, in one transaction, then verify the chain there and
    check that it ends with the SQLite journal's last hash.

    Refuses (``BoxError``, nothing written) a SQLite journal that does not verify (with ``anchors`` if
    given) and a supervisor that already has a chain in the database. If the check after fails, the
    ``BoxError`` says so; the copy stays for inspection."""
    from enmei.box.query import Reader

    src = verify(journal, anchors=anchors)
    if not src.ok:
        raise BoxError(f"{journal}: does not verify (record {src.first_bad}: {src.reason}); not migrated")
    conn = connect(dsn, statement_timeout_s=None)
    n_samples = 0
    try:
        ensure_schema(conn)
        with _reading(redact(dsn)):
            with conn.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM enmei_records WHERE supervisor = %s", (supervisor,))
                row = cur.fetchone()
                if row and int(row[0]):
                    raise BoxError(f"{redact(dsn)}: supervisor {supervisor!r} already has a chain of {row[0]} "
                                   "records there; not migrated (choose another --host)")
                with Reader(journal) as r:
                    rows: list[tuple[Any, ...]] = []
                    for rec in r.records():
                        rows.append((supervisor, rec.seq, rec.wall_ns, rec.mono_ns, rec.kind, rec.unit, rec.body,
                                     rec.prev, rec.hash))
                        if len(rows) >= batch:
                            cur.executemany(_INSERT_ALL, rows)
                            rows = []
                    if rows:
                        cur.executemany(_INSERT_ALL, rows)
                    for unit in r.units_between(0.0, 9.0e9):
                        for metric in r.metrics(unit):
                            pts = r.samples(unit, metric, limit=10_000_000)
                            cur.executemany("INSERT INTO enmei_samples VALUES (%s,%s,%s,%s,%s)",
                                            [(supervisor, unit, metric, w, v) for w, v in pts])
                            n_samples += len(pts)
            conn.commit()
    finally:
        conn.close()
    after = verify_pg(dsn, supervisor=supervisor, anchors=anchors)
    res = after.chains.get(supervisor)
    if res is None or not after.ok or res.last_seq != src.last_seq or res.last_hash != src.last_hash:
        why = res.reason if res is not None and not res.ok else "its end differs from the SQLite journal's"
        raise BoxError(f"{redact(dsn)}: the migrated chain of {supervisor!r} does not verify: {why}")
    return MigrateResult(res.records, n_samples, res.last_seq, res.last_hash or GENESIS, after)


_INSERT_ALL = ("INSERT INTO enmei_records (supervisor, seq, wall_ns, mono_ns, kind, unit, body, prev, hash)"
               " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)")
