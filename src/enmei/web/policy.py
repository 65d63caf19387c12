"""The policy page's data: the policy in force, its journal records (loads, reloads, rejections, errors),
and what a dry-run replay can say.

A dry-run replay (feed the journaled events and views to a policy and compare its decisions with the
ones taken) belongs to ``enmei.policy``; when that package offers ``replay``, the page lists it as
available, else it says so plainly rather than guess at a signature.
"""

from __future__ import annotations

from typing import Any

import enmei.policy
from enmei.report.incidents import Rec
from enmei.web.context import WebContext

__all__ = ["policy_now"]


def replay_status() -> dict[str, Any]:
    fn = getattr(enmei.policy, "replay", None)
    if callable(fn):
        return {"available": True, "function": "enmei.policy.replay", "doc": (fn.__doc__ or "").strip()}
    return {"available": False,
            "why": "enmei.policy offers no replay function yet: the policy records below are what is known"}


async def policy_now(ctx: WebContext, limit: int) -> dict[str, Any]:
    """The policy's version and files (from the engine) and its newest ``limit`` journal records."""
    engine = ctx.engine
    policy_path = engine.loaded.policy_path

    def read() -> list[dict[str, Any]]:
        with ctx.reader() as r:
            recs = [Rec.of(x) for x in r.tail(limit, kinds=["policy"])]
            starts = [Rec.of(x) for x in r.tail(5, kinds=["supervisor"])]
        return [x.as_dict() for x in reversed(recs)] + [
            {**x.as_dict(), "note": "supervisor record"} for x in reversed(starts) if x.body.get("policy")]

    records = await ctx.blocking(read)
    return {"version": engine.policy.version, "kind": type(engine.policy).__name__,
            "config": str(engine.loaded.path), "file": str(policy_path) if policy_path else None,
            "records": records, "errors": [r for r in records if r["kind"] == "policy"
                                           and r["body"].get("event") in ("error", "rejected")],
            "replay": replay_status()}
