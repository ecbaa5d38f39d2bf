"""Bearer-token authentication: every API call names an agency, or gets 401."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.api.keys import AGENCY, STORE
from gateway.errors import Unauthorised

PUBLIC_PATHS = frozenset({"/health/live", "/health/ready"})
_BEARER = re.compile(r"^Bearer ([A-Za-z0-9._~+/=-]{16,512})$")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization")
    if not header:
        raise Unauthorised("missing Authorization: Bearer <token> header")
    match = _BEARER.match(header)
    if match is None:
        raise Unauthorised("the Authorization header is not a bearer token")
    agency = await request.app[STORE].authenticate(match.group(1))
    if agency is None:
        raise Unauthorised("unknown or revoked token")
    request[AGENCY] = agency
    return await handler(request)
