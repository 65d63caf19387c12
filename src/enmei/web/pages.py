"""The dashboard's pages: server-rendered HTML (Jinja2) that a little JavaScript keeps live.

Pages: ``/`` (units, their state and health, last verdict, remedies in the last hour, recent incidents),
``/units/{name}`` (charts, actions, incidents, logs, snapshots), ``/timeline`` (incidents, filterable),
``/journal`` (integrity), ``/policy``, ``/api`` (the endpoints). Each live part is also served alone as
a fragment (``/fragments/...``), which the page re-fetches when the event stream says something
changed; ``after=SEQ`` makes a fragment wait (up to 2 s) until record SEQ is readable. Templates are
rendered in the web pool, never on the supervisor's loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse

from enmei import __version__
from enmei.errors import VisorError
from enmei.report.charts import when
from enmei.report.data import incidents_between
from enmei.report.incidents import Incident, Rec, filter_incidents
from enmei.visor.base import Capability, need
from enmei.web.api import journal_status
from enmei.web.context import WebContext
from enmei.web.deps import Ctx, unit_or_404
from enmei.web.policy import policy_now
from enmei.web.views import last_verdicts, log_tail, remedies_since, unit_now

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

_env = jinja2.Environment(loader=jinja2.PackageLoader("enmei.web", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_env.filters["when"] = lambda w: when(float(w))[:-4] if w is not None else "–"
_env.filters["clock"] = lambda w: when(float(w))[11:-4] if w is not None else "–"
_env.filters["dur"] = lambda s: "–" if s is None else (f"{s:.2f} s" if s < 120 else
                                                       f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
UnitName = Annotated[str, Path(pattern=_NAME)]
After = Annotated[int | None, Query(ge=0, description="Wait until this record is readable")]
#: The windows the timeline offers (seconds).
WINDOWS = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800}


async def _render(ctx: WebContext, name: str, **data: Any) -> HTMLResponse:
    data.setdefault("version", __version__)
    html = await ctx.blocking(lambda: _env.get_template(name).render(**data))
    return HTMLResponse(html)


async def _wait(ctx: WebContext, after: int | None) -> None:
    if after is not None:
        await ctx.visible(min(after, ctx.engine.journal.last_seq))


def _units_block(ctx: WebContext) -> tuple[list[dict[str, Any]], list[str]]:
    units = [unit_now(ctx.engine, n) for n in ctx.engine.units]
    return units, [u["name"] for u in units]


async def _overview_data(ctx: WebContext) -> dict[str, Any]:
    units, names = _units_block(ctx)
    hour_ago = time.time() - 3600

    def read() -> dict[str, Any]:
        with ctx.reader() as r:
            return {"verdicts": last_verdicts(r, names), "remedies": remedies_since(r, hour_ago),
                    "incidents": list(reversed(incidents_between(r, hour_ago)[-10:]))}
    return {"units": units, **await ctx.blocking(read), "journal": journal_status(ctx)}


@router.get("/", response_class=HTMLResponse)
async def overview(ctx: Ctx) -> HTMLResponse:
    return await _render(ctx, "overview.html", page="overview", **await _overview_data(ctx))


@router.get("/fragments/units", response_class=HTMLResponse)
async def units_fragment(ctx: Ctx, after: After = None) -> HTMLResponse:
    await _wait(ctx, after)
    return await _render(ctx, "_units.html", **await _overview_data(ctx))


# -- a unit ----------------------------------------------------------------------------------------

async def _snapshots(ctx: WebContext, name: str) -> dict[str, Any]:
    unit = ctx.engine.units[name]
    if Capability.SNAPSHOT not in unit.backend.capabilities:
        return {"supported": False, "tags": [], "error": None}
    try:
        async with asyncio.timeout(5.0):
            tags = await need(unit.backend, Capability.SNAPSHOT, name).snapshot_list(name)
            return {"supported": True, "tags": tags, "error": None}
    except (VisorError, TimeoutError) as exc:
        return {"supported": True, "tags": [], "error": str(exc) or "listing snapshots timed out"}


async def _unit_data(ctx: WebContext, name: str) -> dict[str, Any]:
    unit = unit_or_404(ctx, name)
    info = unit_now(ctx.engine, name)
    paths = {s: unit.backend.log_path(name, s) for s in info["logs"]}
    day_ago = time.time() - 86400

    def read() -> dict[str, Any]:
        with ctx.reader() as r:
            incs = incidents_between(r, day_ago, unit=name)
        return {"incidents": list(reversed(incs[-20:])), "logs": {s: log_tail(p, 60) for s, p in paths.items()}}
    return {"unit": info, **await ctx.blocking(read), "snapshots": await _snapshots(ctx, name)}


@router.get("/units/{name}", response_class=HTMLResponse)
async def unit_page(ctx: Ctx, name: UnitName) -> HTMLResponse:
    return await _render(ctx, "unit.html", page="unit", **await _unit_data(ctx, name))


@router.get("/fragments/units/{name}", response_class=HTMLResponse)
async def unit_fragment(ctx: Ctx, name: UnitName, after: After = None) -> HTMLResponse:
    await _wait(ctx, after)
    return await _render(ctx, "_unit_live.html", **await _unit_data(ctx, name))


# -- timeline --------------------------------------------------------------------------------------

async def _timeline_data(ctx: WebContext, window: str, unit: str | None, kind: str | None, action: str | None,
                         state: str | None) -> dict[str, Any]:
    if window not in WINDOWS:
        raise HTTPException(422, f"query parameter 'window': {window!r} is not one of {', '.join(WINDOWS)}")
    since = time.time() - WINDOWS[window]
    unit, kind, action, state = (v or None for v in (unit, kind, action, state))

    def read() -> tuple[list[Incident], list[Incident]]:
        with ctx.reader() as r:
            every = incidents_between(r, since, unit=unit)
        return every, filter_incidents(every, kind=kind, action=action, state=state)
    every, shown = await ctx.blocking(read)
    return {"incidents": list(reversed(shown[-300:])), "total": len(every), "matching": len(shown),
            "filters": {"window": window, "unit": unit or "", "kind": kind or "", "action": action or "",
                        "state": state or ""},
            "choices": {"window": list(WINDOWS), "unit": sorted(ctx.engine.units),
                        "kind": sorted({i.kind for i in every}),
                        "action": sorted({s.action for i in every for s in i.steps}),
                        "state": sorted({i.state for i in every})}}


# The filter form sends every field, "" for "any": empty is allowed and means no filter.
Filter = Annotated[str | None, Query(pattern=r"^(|[a-z][a-z0-9_.-]{0,39})$")]
UnitFilter = Annotated[str | None, Query(pattern=r"^(|[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")]


@router.get("/timeline", response_class=HTMLResponse)
async def timeline(ctx: Ctx, window: str = "1h", unit: UnitFilter = None, kind: Filter = None, action: Filter = None,
                   state: Filter = None) -> HTMLResponse:
    return await _render(ctx, "timeline.html", page="timeline",
                         **await _timeline_data(ctx, window, unit, kind, action, state))


@router.get("/fragments/incidents", response_class=HTMLResponse)
async def incidents_fragment(ctx: Ctx, window: str = "1h", unit: UnitFilter = None, kind: Filter = None,
                             action: Filter = None, state: Filter = None, after: After = None) -> HTMLResponse:
    await _wait(ctx, after)
    return await _render(ctx, "_timeline_list.html", **await _timeline_data(ctx, window, unit, kind, action, state))


# -- journal, policy, api --------------------------------------------------------------------------

@router.get("/journal", response_class=HTMLResponse)
async def journal_page(ctx: Ctx, kind: Annotated[str | None, Query(pattern=r"^[a-z][a-z._]{0,39}$")] = None,
                       ) -> HTMLResponse:
    def read() -> list[Rec]:
        with ctx.reader() as r:
            return [Rec.of(x) for x in reversed(r.tail(100, kinds=[kind] if kind else None))]
    return await _render(ctx, "journal.html", page="journal", journal=journal_status(ctx),
                         records=await ctx.blocking(read), kind=kind or "",
                         kinds=["verdict", "decision", "remedy.start", "remedy.outcome", "unit.state", "unit.event",
                                "unit.health", "alert", "policy", "supervisor", "samples", "anchor"])


@router.get("/policy", response_class=HTMLResponse)
async def policy_page(ctx: Ctx) -> HTMLResponse:
    return await _render(ctx, "policy.html", page="policy", policy=await policy_now(ctx, 50))


@router.get("/api", response_class=HTMLResponse)
async def api_page(ctx: Ctx, request: Request) -> HTMLResponse:
    spec = request.app.openapi()
    endpoints = [{"method": m.upper(), "path": p, "summary": op.get("summary", ""),
                  "token": any("HTTPBearer" in s for s in op.get("security", [])),
                  "params": [q["name"] for q in op.get("parameters", [])]}
                 for p, ops in spec.get("paths", {}).items() for m, op in ops.items()]
    return await _render(ctx, "api.html", page="api", endpoints=endpoints, title=spec["info"]["title"])


def record_line(rec: Rec) -> str:
    """A one-line rendering of a record's body for tables."""
    b = rec.body
    if rec.kind in ("unit.state", "unit.health") and "to" in b:
        return f"{b.get('from')} → {b.get('to')}: {b.get('reason', '')}"
    if rec.kind == "decision":
        return f"{b.get('action')} by {b.get('policy')} ({b.get('rule')}): {b.get('reason', '')}"
    for key in ("summary", "reason", "message", "detail"):
        if b.get(key):
            return str(b[key])
    return ", ".join(f"{k}={v}" for k, v in list(b.items())[:6])


_env.filters["line"] = record_line
