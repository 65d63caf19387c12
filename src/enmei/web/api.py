"""The HTTP API (JSON, described at ``/openapi.json``), the event stream and ``/metrics``.

Reads need no token; every request that changes something needs ``Authorization: Bearer <token>``
(401 without, 403 with a wrong one). Unknown units are 404; bad parameters 422 with a sentence saying
which and why; an action the unit's backend does not support, or arguments its remedy does not take,
422 as well. Actions are queued (202): the engine journals them as decisions of ``operator:web`` and
runs them in order with everything else, so the answer returns at once with ``after_seq``, the journal
position after which the decision will appear.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from enmei import __version__
from enmei.engine.loop import RESET
from enmei.errors import BoxError, PolicyError, VisorError
from enmei.monitor.procstats import StatsProbe
from enmei.remedy import REMEDIES
from enmei.report.data import incidents_between, unit_figures
from enmei.report.incidents import filter_incidents
from enmei.visor.base import Capability, need
from enmei.web.deps import Ctx, Token, unit_or_404
from enmei.web.events import TooManyClients
from enmei.web.limits import GateTally
from enmei.web.metrics import Snapshot, journal_size, render
from enmei.web.policy import ReplayUnavailable, policy_now, run_replay
from enmei.web.views import action_problem, live_limits_now, log_tail, unit_now

__all__ = ["router"]

router = APIRouter()

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_WORD = r"^[a-z][a-z0-9_.-]{0,39}$"
UnitName = Annotated[str, Path(pattern=_NAME, description="A unit's name")]
Window = Annotated[float, Query(gt=0, le=30 * 86400, description="How far back, in seconds")]


class ActionRequest(BaseModel):
    """Arguments for the action's remedy (see ``actions`` in ``GET /api/units/{name}``)."""

    args: dict[str, Any] = Field(default_factory=dict, examples=[{"delay_s": 0}])


class ActionAccepted(BaseModel):
    queued: bool
    unit: str
    action: str
    args: dict[str, Any]
    after_seq: int = Field(description="The decision appears in the journal after this seq")


class JournalStatus(BaseModel):
    path: str
    status: Literal["ok", "degraded"]
    error: str | None
    last_seq: int
    durable_seq: int
    pending: int
    dropped_samples: int
    size_bytes: int
    verify: dict[str, Any] | None = Field(description="The newest verification of the hash chain, if any")


# -- units -----------------------------------------------------------------------------------------

@router.get("/api/units", tags=["units"], summary="Every unit: state, health, remedy, actions")
async def list_units(ctx: Ctx) -> list[dict[str, Any]]:
    return [unit_now(ctx.engine, name) for name in ctx.engine.units]


@router.get("/api/units/{name}", tags=["units"], summary="One unit")
async def get_unit(ctx: Ctx, name: UnitName) -> dict[str, Any]:
    unit_or_404(ctx, name)
    return unit_now(ctx.engine, name)


@router.get("/api/units/{name}/charts", tags=["units"],
            summary="Plotly figures of the unit's metrics with detections, remedies and control limits")
async def unit_charts(ctx: Ctx, name: UnitName, window_s: Window = 900.0,
                      metric: Annotated[list[str] | None, Query(description="Only these metrics")] = None,
                      ) -> dict[str, Any]:
    unit_or_404(ctx, name)
    limits = live_limits_now(ctx.engine, name)
    now = time.time()

    def build() -> dict[str, Any]:
        with ctx.reader() as r:
            return unit_figures(r, name, now - window_s, now, live_limits=lambda _u, p: limits.get(p),
                                only=metric)
    return {"since": now - window_s, "until": now, "figures": await ctx.blocking(build)}


@router.get("/api/units/{name}/logs", tags=["units"], summary="The newest lines of a captured log")
async def unit_logs(ctx: Ctx, name: UnitName, stream: Literal["stdout", "stderr", "console"] = "stderr",
                    lines: Annotated[int, Query(ge=1, le=2000)] = 100) -> dict[str, Any]:
    unit = unit_or_404(ctx, name)
    return await ctx.blocking(log_tail, unit.backend.log_path(name, stream), lines)


@router.get("/api/units/{name}/snapshots", tags=["units"], summary="The unit's snapshots (VM backends)")
async def unit_snapshots(ctx: Ctx, name: UnitName) -> dict[str, Any]:
    unit = unit_or_404(ctx, name)
    if Capability.SNAPSHOT not in unit.backend.capabilities:
        return {"supported": False, "tags": []}
    try:
        async with asyncio.timeout(5.0):
            tags = await need(unit.backend, Capability.SNAPSHOT, name).snapshot_list(name)
    except VisorError as exc:
        raise HTTPException(409, str(exc)) from exc
    except TimeoutError:
        raise HTTPException(504, f"unit {name!r}: listing snapshots took longer than 5 s") from None
    return {"supported": True, "tags": list(tags)}


@router.post("/api/units/{name}/actions/{action}", tags=["actions"], status_code=202, dependencies=[Token],
             summary="Ask for an action now (restart, rejuvenate, stop, start, reset, snapshot, restore...)",
             responses={401: {"description": "No token"}, 403: {"description": "Wrong token"},
                        404: {"description": "No such unit"},
                        422: {"description": "Unsupported action or bad arguments"}})
async def unit_action(ctx: Ctx, name: UnitName, action: Annotated[str, Path(pattern=_WORD)],
                      req: Annotated[ActionRequest | None, Body()] = None) -> ActionAccepted:
    unit = unit_or_404(ctx, name)
    args = dict(req.args) if req is not None else {}
    if action == RESET:  # not a remedy: the unit's budget, backoff and breakers are forgotten (enmei ctl reset)
        problem = "reset takes no arguments" if args else None
    else:
        problem = action_problem(unit, action) or REMEDIES[action].check_args(args)
    if problem is not None:
        raise HTTPException(422, problem)
    after = ctx.engine.journal.last_seq
    ctx.engine.submit(action, name, args, by="operator:web")
    return ActionAccepted(queued=True, unit=name, action=action, args=args, after_seq=after)


# -- journal ---------------------------------------------------------------------------------------

@router.get("/api/incidents", tags=["journal"],
            summary="Incidents as chains: observed -> judged -> decided -> repaired (newest first)")
async def list_incidents(
    ctx: Ctx, window_s: Window = 3600.0,
    unit: Annotated[str | None, Query(pattern=_NAME)] = None,
    kind: Annotated[str | None, Query(pattern=_WORD, description="probe_failed, anomaly, exited, manual...")] = None,
    action: Annotated[str | None, Query(pattern=_WORD)] = None,
    state: Annotated[str | None, Query(pattern=_WORD, description="succeeded, failed, running...")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[dict[str, Any]]:
    since = time.time() - window_s

    def build() -> list[dict[str, Any]]:
        with ctx.reader() as r:
            incs = filter_incidents(incidents_between(r, since, unit=unit), unit=unit, kind=kind, action=action,
                                    state=state)
        return [i.as_dict() for i in reversed(incs[-limit:])]
    return await ctx.blocking(build)


@router.get("/api/records", tags=["journal"], summary="Raw journal records (newest, or after since_seq)")
async def list_records(
    ctx: Ctx, unit: Annotated[str | None, Query(pattern=_NAME)] = None,
    kind: Annotated[list[str] | None, Query(description="Record kinds: verdict, decision, remedy.start...")] = None,
    since_seq: Annotated[int | None, Query(ge=0, description="Records after this seq, oldest first")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
) -> list[dict[str, Any]]:
    for k in kind or []:
        if len(k) > 40 or not k.replace(".", "").replace("_", "").isalnum():
            raise HTTPException(422, f"query parameter 'kind': {k!r} is not a record kind")

    def read() -> list[dict[str, Any]]:
        from enmei.report.incidents import Rec

        with ctx.reader() as r:
            if since_seq is None:
                recs = r.tail(limit, unit=unit, kinds=kind)
            else:
                recs = list(r.records(unit=unit, kinds=kind, since_seq=since_seq, limit=limit))
            return [Rec.of(x).as_dict() for x in recs]
    return await ctx.blocking(read)


def journal_status(ctx: Ctx) -> JournalStatus:
    j = ctx.engine.journal
    size = journal_size(j.path)
    v = ctx.verified
    verify = None if v is None else {"ok": v.ok, "records": v.records, "last_seq": v.last_seq,
                                     "first_bad": v.first_bad, "reason": v.reason, "wall": ctx.verified_wall}
    if ctx.verify_error is not None:
        verify = {"ok": None, "error": ctx.verify_error, "wall": ctx.verified_wall}
    return JournalStatus(path=j.location, status="degraded" if j.status != "ok" else "ok", error=j.error,
                         last_seq=j.last_seq, durable_seq=j.durable_seq, pending=j.pending,
                         dropped_samples=j.dropped_samples, size_bytes=size, verify=verify)


@router.get("/api/journal", tags=["journal"], summary="The journal's write status and newest verification")
async def get_journal(ctx: Ctx) -> JournalStatus:
    return journal_status(ctx)


@router.post("/api/journal/verify", tags=["journal"], dependencies=[Token],
             summary="Verify the hash chain now (runs off the supervisor's loop)",
             responses={401: {"description": "No token"}, 403: {"description": "Wrong token"}})
async def verify_journal(ctx: Ctx) -> JournalStatus:
    try:
        await ctx.verify()
    except BoxError as exc:
        raise HTTPException(500, str(exc)) from exc
    return journal_status(ctx)


@router.get("/api/policy", tags=["policy"], summary="The policy in force and its journal records")
async def get_policy(ctx: Ctx, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
    return await policy_now(ctx, limit)


@router.post("/api/policy/replay", tags=["policy"], dependencies=[Token],
             summary="Dry-run replay: what the config's policy would have decided over a window of the journal",
             responses={401: {"description": "No token"}, 403: {"description": "Wrong token"},
                        409: {"description": "The policy does not load, or a replay is running"},
                        501: {"description": "This enmei has no policy replay"}})
async def replay_policy(ctx: Ctx, window_s: Window = 3600.0) -> dict[str, Any]:
    if ctx.replaying:
        raise HTTPException(409, "a replay is running; try again when it is done")
    ctx.replaying = True
    try:
        return await ctx.blocking(run_replay, ctx.engine.loaded.policy_path, ctx.engine.journal,
                                  time.time() - window_s)
    except ReplayUnavailable as exc:
        raise HTTPException(501, str(exc)) from None
    except PolicyError as exc:
        raise HTTPException(409, f"the policy does not load: {exc}") from exc
    finally:
        ctx.replaying = False


# -- live ------------------------------------------------------------------------------------------

@router.get("/api/events", tags=["live"], summary="Server-sent events: every journal record as it is written",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}, 503: {"description": "Too many streams"}})
async def events(ctx: Ctx, unit: Annotated[str | None, Query(pattern=_NAME)] = None,
                 kind: Annotated[list[str] | None, Query()] = None) -> StreamingResponse:
    try:
        client = ctx.events.connect(unit=unit, kinds=frozenset(kind) if kind else None)
    except TooManyClients as exc:
        raise HTTPException(503, str(exc)) from exc
    return StreamingResponse(ctx.events.stream(client, ctx.engine.journal.last_seq), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/metrics", tags=["live"], summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(ctx: Ctx, request: Request) -> Response:
    tally = await ctx.counters()
    if tally is None:
        raise HTTPException(503, "the counters are still being read from the journal; try again")
    e = ctx.engine
    view = e.view()
    v = ctx.verified
    snap = Snapshot(
        version=__version__, policy=e.policy.version, units=dict(view.units),
        probes={u: [p.name for p in ps] for u, ps in e.probes.items()}, tally=tally,
        journal_path=e.journal.path, journal_source=e.journal, journal_last_seq=e.journal.last_seq,
        journal_durable_seq=e.journal.durable_seq,
        journal_pending=e.journal.pending, journal_ok=e.journal.status == "ok",
        journal_dropped_samples=e.journal.dropped_samples, verify_ok=None if v is None else v.ok,
        verify_wall=ctx.verified_wall, web_refused=dict(getattr(request.app.state, "gate_tally", GateTally()).counts),
        timed={u: [p.name for p in ps if p.timed] for u, ps in e.probes.items()},
        stats_units=frozenset(u for u, ps in e.probes.items() if any(isinstance(p, StatsProbe) for p in ps)))
    return Response(await ctx.blocking(render, snap), media_type=CONTENT_TYPE_LATEST)

