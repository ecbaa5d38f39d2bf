"""Bearer-token authentication and the first cut of authorisation.

Every call names an agency or an operator, or gets 401. Agencies use the agency routes;
operators use ``/api/v1/ops/`` and nothing else: an operator never acts as an agency, and an
agency never runs the gateway (403 either way).
"""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.api.keys import AGENCY, PRINCIPAL, STORE
from gateway.errors import Forbidden, Unauthorised
from gateway.store.store import Role

PUBLIC_PATHS = frozenset({"/health/live", "/health/ready"})
OPS_PREFIX = "/api/v1/ops/"
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
    principal = await request.app[STORE].authenticate(match.group(1))
    if principal is None:
        raise Unauthorised("unknown or revoked token")
    request[PRINCIPAL] = principal
    if request.path.startswith(OPS_PREFIX):
        if principal.role != Role.OPERATOR:
            raise Forbidden(f"agency {principal.name} cannot use the operator API")
    elif principal.agency is None:
        raise Forbidden(f"operator {principal.name} cannot act as an agency")
    else:
        request[AGENCY] = principal.agency
    return await handler(request)
