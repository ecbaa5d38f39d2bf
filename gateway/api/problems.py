"""RFC 7807 problem details: the one place the error tree becomes HTTP."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.errors import GatewayError, Unauthorised

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(request: web.Request, body: dict[str, Any]) -> web.Response:
    body.setdefault("instance", request.path)
    headers = {}
    if body.get("status") == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="lienthong"'
    return web.Response(
        body=orjson.dumps(body), status=int(body["status"]), content_type=PROBLEM_JSON,
        headers=headers,
    )


def _http_problem(exc: web.HTTPException) -> dict[str, Any]:
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    if exc.status == 413:
        detail = f"request body too large: {exc.text}"
    return {
        "type": "about:blank",
        "title": exc.reason,
        "status": exc.status,
        "detail": detail,
    }


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        if exc.status >= 500:
            log.error("api.error", path=request.path, error=exc.detail, kind=type(exc).__name__)
        elif not isinstance(exc, Unauthorised):
            log.info("api.rejected", path=request.path, status=exc.status, error=exc.detail)
        return problem_response(request, exc.problem())
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(request, _http_problem(exc))
    except Exception:
        log.exception("api.unexpected", path=request.path)
        return problem_response(
            request,
            GatewayError("the gateway failed to handle this request; it was logged").problem(),
        )
