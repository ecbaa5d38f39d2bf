"""The operator API (``/api/v1/ops/``): dead letters, listed, replayed or discarded, audited
with who and why. Operator tokens only (``lienthong credentials issue --operator NAME``)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import orjson
from aiohttp import web

from gateway.api.keys import BROKER, PRINCIPAL, RELAY, STORE
from gateway.api.routes import int_param, json_response
from gateway.errors import FieldError, MalformedInput, SchemaViolation
from gateway.settings import parse_duration
from gateway.store.store import DeadLetter, DeadLetterFilter, utcnow

routes = web.RouteTableDef()


def dead_letter_view(d: DeadLetter) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(d).items() if v is not None}


def _filter(source: dict[str, Any], where: str) -> DeadLetterFilter:
    """A filter from query parameters or a JSON body; errors name the field."""
    def text(name: str) -> str | None:
        value = source.get(name)
        if value is not None and not isinstance(value, str):
            raise SchemaViolation(f"{name} must be a string",
                                  errors=[FieldError(f"{where}{name}", "a string")])
        return value

    older = text("older_than")
    try:
        older_than = utcnow() - timedelta(seconds=parse_duration(older)) if older else None
    except ValueError as exc:
        raise SchemaViolation(str(exc), errors=[FieldError(f"{where}older_than", str(exc))]
                              ) from None
    ids = source.get("ids")
    if ids is not None and (not isinstance(ids, list)
                            or not all(isinstance(i, int) and not isinstance(i, bool)
                                       for i in ids)):
        raise SchemaViolation("ids must be a list of integers",
                              errors=[FieldError(f"{where}ids", "a list of integers")])
    return DeadLetterFilter(ids=ids, agency=text("agency"), reason=text("reason"),
                            older_than=older_than)


@routes.get("/api/v1/ops/dead-letters")
async def list_dead_letters(request: web.Request) -> web.Response:
    """Open dead letters (state ``dead``, or ``state=replayed|discarded|any``), oldest first."""
    where = _filter(dict(request.query), "query:")
    state = request.query.get("state", "dead")
    if state not in {"dead", "replayed", "discarded", "any"}:
        raise SchemaViolation("state must be dead, replayed, discarded or any",
                              errors=[FieldError("query:state", "dead|replayed|discarded|any")])
    where = dataclasses.replace(where, state=None if state == "any" else state)
    after = int_param(request, "after", 0, 0, 2**62)
    limit = int_param(request, "limit", 100, 1, 1000)
    rows = await request.app[STORE].dead_letters(where, after=after, limit=limit)
    return json_response({
        "items": [dead_letter_view(d) for d in rows],
        "next_after": rows[-1].id if len(rows) == limit else None,
    })


@routes.get("/api/v1/ops/dead-letters/{id:\\d+}")
async def get_dead_letter(request: web.Request) -> web.Response:
    dead = await request.app[STORE].dead_letter(int(request.match_info["id"]))
    return json_response(dead_letter_view(dead))


async def _action_body(request: web.Request) -> tuple[DeadLetterFilter, str]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise MalformedInput(f"invalid JSON: {exc.msg}") from None
    if not isinstance(body, dict):
        raise SchemaViolation("the body must be a JSON object", errors=[FieldError("", "object")])
    comment = body.get("comment")
    if not isinstance(comment, str) or not comment.strip():
        raise SchemaViolation("a comment saying why is required",
                              errors=[FieldError("/comment", "a non-empty string")])
    where = _filter(body, "/")
    chosen = where.ids or where.agency or where.reason or where.older_than
    if not chosen and body.get("all") is not True:
        raise SchemaViolation(
            "choose dead letters: ids, agency, reason, older_than, or all: true",
            errors=[FieldError("/all", "true, or another filter")],
        )
    return where, comment.strip()


@routes.post("/api/v1/ops/dead-letters/replay")
async def replay(request: web.Request) -> web.Response:
    """Send the chosen dead letters again, with their message ids; audited with who and why."""
    where, comment = await _action_body(request)
    operator = request[PRINCIPAL].name
    rows = await request.app[STORE].replay_dead_letters(where, by=operator, comment=comment)
    if rows and BROKER in request.app:
        await request.app[RELAY].publish(rows)  # else the relay's sweep publishes them
    return json_response({"replayed": len(rows),
                          "messages": sorted({r.message_id for r in rows})})


@routes.post("/api/v1/ops/dead-letters/discard")
async def discard(request: web.Request) -> web.Response:
    """Give the chosen dead letters up for good; audited with who and why."""
    where, comment = await _action_body(request)
    operator = request[PRINCIPAL].name
    ids = await request.app[STORE].discard_dead_letters(where, by=operator, comment=comment)
    return json_response({"discarded": len(ids), "ids": ids})
