"""The policy page's data: the policy in force, its journal records (loads, reloads, rejections, errors),
and a dry-run replay.

**Dry-run replay.** ``enmei.policy.replay`` rebuilds the events and views a supervisor passed to its
policy from the journal and feeds them to a policy, beside the decisions that were taken. The web layer
calls it when that module is there (``replay_records`` and ``enmei.policy.manager.open_policy``): on a
*fresh* instance of the config's policy (its file, or the shipped default), never the running one —
replaying through the live policy would feed its history with old events — in the web pool, over the
records of a window, and closes that instance afterwards. When the module is absent the page says so.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enmei.report.incidents import Rec
from enmei.web.context import WebContext

__all__ = ["ReplayUnavailable", "policy_now", "replay_functions", "replay_status", "run_replay"]

#: At most this many records are replayed (the newest of the window).
MAX_REPLAY_RECORDS = 200_000


class ReplayUnavailable(Exception):
    """This enmei has no policy replay."""


def replay_functions() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(open_policy, replay_records)`` from ``enmei.policy``. Raises ``ReplayUnavailable``."""
    try:
        manager = importlib.import_module("enmei.policy.manager")
        replay = importlib.import_module("enmei.policy.replay")
        return manager.open_policy, replay.replay_records
    except (ImportError, AttributeError) as exc:
        raise ReplayUnavailable(f"enmei.policy offers no replay ({exc})") from None


def replay_status() -> dict[str, Any]:
    try:
        replay_functions()
    except ReplayUnavailable as exc:
        return {"available": False, "why": f"{exc}: the policy records below are what is known"}
    return {"available": True, "function": "enmei.policy.replay.replay_records"}


def run_replay(policy_path: Path | None, journal: Path, since_wall: float) -> dict[str, Any]:
    """Replay the journal's records since ``since_wall`` through a fresh instance of the policy at
    ``policy_path`` (None: the shipped default). Blocking: call it in the web pool.

    Raises ``ReplayUnavailable``, ``PolicyError`` (the policy does not load), ``BoxError``.
    """
    from enmei.box.readers import open_reader

    open_policy, replay_records = replay_functions()
    with open_reader(journal) as reader:
        first = reader.records(since_wall=since_wall, limit=1)
        start = next(iter(first), None)
        if start is None:
            records = []
        else:
            skip = max(0, reader.last_seq() - start.seq + 1 - MAX_REPLAY_RECORDS)
            records = list(reader.records(since_seq=start.seq - 1 + skip, limit=MAX_REPLAY_RECORDS))
    policy = open_policy(policy_path)
    try:
        t0 = time.monotonic()
        report = replay_records(policy, records, str(journal))
        took = time.monotonic() - t0
    finally:
        policy.close()
    disagree = [{"seq": p.seq, "kind": p.kind, "unit": p.unit, "original": p.original, "replayed": p.replayed}
                for p in report.points if not p.agree]
    return {"summary": report.summary(), "records": len(records), "seconds": round(took, 3),
            "disagreements": disagree[:50], "more_disagreements": max(0, len(disagree) - 50),
            "policy_errors": list(report.errors)[:20]}


async def policy_now(ctx: WebContext, limit: int) -> dict[str, Any]:
    """The policy's version and files (from the engine) and its newest ``limit`` journal records."""
    engine = ctx.engine
    policy_path = engine.loaded.policy_path

    def read() -> list[dict[str, Any]]:
        with ctx.reader() as r:
            recs = [Rec.of(x) for x in r.tail(limit, kinds=["policy"])]
        return [x.as_dict() for x in reversed(recs)]

    records = await ctx.blocking(read)
    return {"version": engine.policy.version, "kind": type(engine.policy).__name__,
            "config": str(engine.loaded.path), "file": str(policy_path) if policy_path else None,
            "records": records, "errors": [r for r in records if r["body"].get("event") in ("error", "rejected")],
            "replay": replay_status()}

