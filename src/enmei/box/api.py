"""The journal's two seams: what a writer (the engine's D-Box) and a reader (dashboard, CLI, report) promise.

Two implementations exist: the embedded default on SQLite (``enmei.box.store.Journal``,
``enmei.box.query.Reader``) and the shared one on PostgreSQL (``enmei.box.pgstore.PgJournal``,
``enmei.box.pgread.PgReader``). Both keep the same record model (``enmei.box.record``: seq, wall and
monotonic times, kind, unit, canonical JSON body, and the SHA-256 chain) and the same meaning of
*acknowledged*: a record is acknowledged once ``durable_seq >= seq`` (what ``flush`` waits for); only
acknowledged records are promised to survive a crash of the supervisor. Where that durability comes
from is the implementation's to say in its docstring.

``tests/unit/test_journal_api.py`` checks that both keep to these protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from enmei.box.record import Record

if TYPE_CHECKING:
    from enmei.box.anchor import Anchors

__all__ = ["JournalReader", "JournalWriter", "is_dsn"]


def is_dsn(location: str) -> bool:
    """True when a ``[supervisor] journal`` value names a PostgreSQL database rather than a file."""
    return location.startswith(("postgresql://", "postgres://"))


@runtime_checkable
class JournalWriter(Protocol):
    """The writer side of a journal: ``append`` chains and queues a record and returns its seq at once;
    the record is acknowledged when ``durable_seq`` reaches it. ``status`` is ``"ok"`` or ``"degraded"``
    (``error`` says why); while degraded, appends still succeed and nothing acknowledged is lost.
    ``path`` is the journal's file on this host (for PostgreSQL: its local spool), ``location`` what to
    show a person (a file name, or the redacted DSN and the supervisor's name)."""

    path: Path
    location: str
    anchors: Anchors | None
    on_trouble: Callable[[str | None], None] | None

    def open(self) -> Any: ...
    def close(self, timeout_s: float = 10.0) -> None: ...
    def append(self, kind: str, unit: str | None, body: Mapping[str, Any]) -> int: ...
    def append_many(self, items: Iterable[tuple[str, str | None, Mapping[str, Any]]]) -> int: ...
    def add_samples(self, rows: Sequence[tuple[str, str, float, float]]) -> None: ...
    def flush(self, timeout_s: float | None = None) -> bool: ...
    async def aflush(self, timeout_s: float | None = None) -> bool: ...

    @property
    def last_seq(self) -> int: ...
    @property
    def durable_seq(self) -> int: ...
    @property
    def pending(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def dropped_samples(self) -> int: ...


@runtime_checkable
class JournalReader(Protocol):
    """A read-only view of one hash chain; every method raises ``BoxError`` (never a driver's error)
    when the journal cannot be read. ``location`` names it for a person."""

    location: str

    def close(self) -> None: ...
    def get(self, seq: int) -> Record | None: ...
    def last_seq(self) -> int: ...
    def count(self) -> int: ...
    def tail(self, n: int = 20, *, unit: str | None = None, kinds: list[str] | None = None) -> list[Record]: ...
    def records(self, *, unit: str | None = None, kinds: list[str] | None = None,
                since_seq: int | None = None, since_wall: float | None = None,
                limit: int | None = None) -> Iterator[Record]: ...
    def samples(self, unit: str, metric: str, *, since_wall: float = 0.0,
                limit: int = 10_000) -> list[tuple[float, float]]: ...
    def metrics(self, unit: str) -> list[str]: ...
    def counts_by_kind_unit(self) -> list[tuple[str, str, int]]: ...
