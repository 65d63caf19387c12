"""Request dependencies shared by the API and the pages: the context, the token check, a unit by name,
and the JSON response that survives non-finite numbers."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from enmei.engine.unit import UnitRuntime
from enmei.web.auth import token_matches
from enmei.web.context import WebContext

__all__ = ["Ctx", "SafeJSON", "Token", "ctx_of", "require_token", "unit_or_404"]

_bearer = HTTPBearer(auto_error=False, description="The token enmei wrote to the state dir (web.token) "
                                                   "on first start. Required by every request that changes "
                                                   "something.")


def ctx_of(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


Ctx = Annotated[WebContext, Depends(ctx_of)]


def require_token(ctx: Ctx, creds: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
    """401 without ``Authorization: Bearer <token>``; 403 with a wrong token."""
    if creds is None or not creds.credentials:
        raise HTTPException(401, f"this request changes something and needs the token: send 'Authorization: "
                                 f"Bearer <token>' (the token is in {ctx.token_path})",
                            headers={"WWW-Authenticate": "Bearer"})
    if not token_matches(ctx.token, creds.credentials):
        raise HTTPException(403, f"wrong token (the token is in {ctx.token_path})")


Token = Depends(require_token)


def unit_or_404(ctx: WebContext, name: str) -> UnitRuntime:
    unit = ctx.engine.units.get(name)
    if unit is None:
        known = ", ".join(sorted(ctx.engine.units)) or "none"
        raise HTTPException(404, f"no unit named {name!r} (units: {known})")
    return unit


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class SafeJSON(JSONResponse):
    """JSON where NaN and infinities become null (browsers' JSON.parse rejects them)."""

    def render(self, content: Any) -> bytes:
        try:
            text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str)
        except ValueError:
            text = json.dumps(_finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                              default=str)
        return text.encode("utf-8")
