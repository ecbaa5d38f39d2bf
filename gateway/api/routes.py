"""The agencies' API: send messages, follow them, read and acknowledge the inbox."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

import orjson
import structlog
from aiohttp import web

from gateway.api.keys import AGENCY, BLOBS, BROKER, SETTINGS, STORE
from gateway.blobs import DIGEST, UPLOAD_VALID
from gateway.codecs import decode
from gateway.envelope import AnyEnvelope
from gateway.errors import (
    FieldError,
    Forbidden,
    MalformedInput,
    NotFound,
    SchemaViolation,
    Unavailable,
    UnprocessableRequest,
)
from gateway.ingress import Check, admit
from gateway.store.store import (
    Accepted,
    InboxEntry,
    MessageRow,
    RecipientRow,
    utcnow,
)

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

_KEY_MAX = 255


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def message_id_param(request: web.Request) -> str:
    raw = request.match_info["id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise MalformedInput(
            f"{raw!r} is not a message id (a UUID)",
            errors=[FieldError("path:id", "not a UUID")],
        ) from None


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= _KEY_MAX or not key.isprintable():
        raise MalformedInput(
            "Idempotency-Key must be 1 to 255 printable characters",
            errors=[FieldError("header:Idempotency-Key", "1 to 255 printable characters")],
        )
    return key


def _accepted_body(accepted: Accepted) -> dict[str, Any]:
    return {
        "id": accepted.message_id,
        "recipients": list(accepted.recipients),
        "accepted_at": accepted.accepted_at,
        "links": {"self": f"/api/v1/messages/{accepted.message_id}"},
    }


@routes.post("/api/v1/messages")
async def post_message(request: web.Request) -> web.Response:
    """Accept one JSON envelope."""
    return await ingest(request, decode, sender_at="/header/sender")


async def ingest(
    request: web.Request,
    decoder: Callable[[bytes], AnyEnvelope],
    *,
    sender_at: str,
    check: Check | None = None,
    body: bytes | None = None,
    stored: frozenset[str] = frozenset(),
) -> web.Response:
    """Accept one message in any wire format through :func:`gateway.ingress.admit`; answer
    202, or the first answer again for a repeated Idempotency-Key or message id. ``body``:
    the message when the caller read the request itself (a streamed edXML package's
    skeleton), with the attachments it ``stored``."""
    key = _idempotency_key(request)
    if body is None:
        body = await request.read()
    accepted = await admit(
        request.app, agency=request[AGENCY], body=body, decoder=decoder, sender_at=sender_at,
        idempotency_key=key, check=check, stored=stored,
    )
    return _accepted_response(accepted)


def _accepted_response(accepted: Accepted) -> web.Response:
    headers = {"Location": f"/api/v1/messages/{accepted.message_id}"}
    if not accepted.created:
        headers["Idempotent-Replayed"] = "true"
    return json_response(_accepted_body(accepted), status=202, headers=headers)


def _recipient_view(r: RecipientRow) -> dict[str, Any]:
    view: dict[str, Any] = {"agency": r.agency, "state": r.state, "attempts": r.attempts}
    for name in ("addressed_as", "delivered_at", "read_at", "failed_at", "last_error"):
        value: str | datetime | None = getattr(r, name)
        if value is not None:
            view[name] = value
    if r.status_code is not None:  # the furthest processing status it reported (01..06)
        view["status"] = {"code": r.status_code, "at": r.status_at}
    if r.answer is not None:  # its answer to a recall or update (15 agreed, 16 refused)
        view["answer"] = {"code": r.answer, "at": r.answered_at, "comment": r.answer_comment}
    return view


async def _document_view(
    request: web.Request, row: MessageRow, agency: str
) -> dict[str, Any] | None:
    """The document a message belongs to and its versions the caller may see (what the sender
    sent; a recipient sees the versions sent to it)."""
    store = request.app[STORE]
    keys = await store.document_keys(row.id)
    if not keys:
        return None
    sender, key = keys[0]
    shown = []
    for version in await store.versions(sender, key):
        if version.message_id != row.id and agency != sender:
            other = await store.message(version.message_id)
            if agency not in {r.agency for r in other.recipients}:
                continue
        shown.append({"id": version.message_id, "operation": version.operation,
                      "relation": version.relation, "accepted_at": version.accepted_at})
    return {"document_id": key, "versions": shown}


def _message_view(row: MessageRow, agency: str) -> dict[str, Any]:
    is_sender = row.sender == agency
    shown = [r for r in row.recipients if is_sender or r.agency == agency]
    return {
        "id": row.id,
        "kind": row.kind,
        "sender": row.sender,
        "accepted_at": row.accepted_at,
        "recipients": [_recipient_view(r) for r in shown],
        "envelope": orjson.Fragment(row.envelope),
        **({"operation": row.operation} if row.operation else {}),
        **({"about": row.about, "code": row.status_code} if row.about else {}),
    }


async def visible_message(request: web.Request) -> tuple[str, MessageRow]:
    """The message of the path, if the caller is its sender or one of its recipients."""
    agency: str = request[AGENCY]
    row = await request.app[STORE].message(message_id_param(request))
    if agency != row.sender and agency not in {r.agency for r in row.recipients}:
        raise Forbidden(f"agency {agency} is neither the sender nor a recipient of {row.id}")
    return agency, row


_SHA256_HEADER = "X-Content-SHA256"
_READ = 256 * 1024


async def receive_bounded(request: web.Request, limit: int,
                          write: Callable[[bytes], object]) -> int:
    """Stream the request body into ``write`` (blocking file I/O: run in a worker thread),
    a piece at a time; 413 as soon as it passes ``limit`` bytes, before reading on when the
    request says its length. Returns the number of bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    size = 0
    async for piece in request.content.iter_chunked(_READ):
        size += len(piece)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        await asyncio.to_thread(write, piece)
    return size


@routes.post("/api/v1/attachments")
async def upload_attachment(request: web.Request) -> web.Response:
    """A file too large to inline in a JSON message (the portal's TaiLieuNop without DuLieu,
    or any ``body.attachments`` entry without ``content``): streamed into the blob store,
    never held whole; the calling agency may then name it by SHA-256 and size in its
    messages for :data:`UPLOAD_VALID`. An ``X-Content-SHA256`` header, when given, must be
    the digest of what arrived (a cut upload is refused, not stored)."""
    app = request.app
    blobs, limit = app[BLOBS], app[SETTINGS].max_package_bytes
    expected = request.headers.get(_SHA256_HEADER)
    if expected is not None and not DIGEST.fullmatch(expected.lower()):
        raise MalformedInput(f"{_SHA256_HEADER} is not a hex SHA-256",
                             errors=[FieldError(f"header:{_SHA256_HEADER}", "64 hex digits")])
    sink = await asyncio.to_thread(blobs.sink)
    try:
        await receive_bounded(request, limit, sink.write)
        if expected is not None and sink.sha256 != expected.lower():
            raise UnprocessableRequest(
                f"the {sink.size} bytes received do not have the SHA-256 {_SHA256_HEADER} "
                "names (cut or altered on the way): nothing was stored",
                errors=[FieldError(f"header:{_SHA256_HEADER}", "not the received bytes'")])
        digest = await asyncio.to_thread(sink.commit)
    finally:
        await asyncio.to_thread(sink.discard)  # after a commit: nothing left to remove
    agency: str = request[AGENCY]
    await app[STORE].record_upload(agency, digest, sink.size)
    valid_until = utcnow() + UPLOAD_VALID
    log.info("attachment.uploaded", agency=agency, sha256=digest, size=sink.size)
    return json_response({"sha256": digest, "size": sink.size, "valid_until": valid_until},
                         status=201)


@routes.get("/api/v1/messages/{id}/attachments/{n}")
async def get_attachment(request: web.Request) -> web.StreamResponse:
    """File ``n`` (from 0, as in ``/body/attachments/n``) of a message, as bytes, for its
    sender or a recipient: how a JSON system gets a file the envelope carries by reference
    (claim check), streamed from the blob store."""
    _agency, row = await visible_message(request)
    files = getattr(decode(row.envelope).body, "attachments", [])
    raw = request.match_info["n"]
    if not raw.isdigit() or int(raw) >= len(files):
        raise NotFound(f"message {row.id} has {len(files)} attachment(s); no {raw!r}",
                       errors=[FieldError("path:n", f"0 to {len(files) - 1}")])
    att = files[int(raw)]
    headers = {
        "Content-Type": att.media_type,
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(att.name, safe='')}",
        "ETag": f'"{att.sha256}"',
        "X-Content-SHA256": att.sha256,
    }
    if att.content is not None:
        return web.Response(body=base64.b64decode(att.content), headers=headers)
    blobs = request.app[BLOBS]
    blobs.size(att.sha256)  # NotFound (404 problem) before any byte goes out
    return web.FileResponse(blobs.path(att.sha256), headers=headers)


@routes.get("/api/v1/messages/{id}")
async def get_message(request: web.Request) -> web.Response:
    """The message and its per-recipient state, for its sender (all) or a recipient (its own)."""
    agency, row = await visible_message(request)
    view = _message_view(row, agency)
    document = await _document_view(request, row, agency)
    if document is not None:
        view["document"] = document
    return json_response(view)


@routes.get("/api/v1/messages/{id}/trace")
async def get_trace(request: web.Request) -> web.Response:
    """The message's timeline from the audit trail: its sender sees every event, a recipient
    the acceptance and the events about itself."""
    agency, row = await visible_message(request)
    events = await request.app[STORE].events(row.id)
    if agency != row.sender:
        events = [e for e in events if e["event"] == "accepted" or e["agency"] == agency]
    return json_response({"message_id": row.id, "sender": row.sender, "events": events})


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise SchemaViolation(
            f"query parameter {name} must be an integer from {low} to {high}",
            errors=[FieldError(f"query:{name}", f"integer from {low} to {high}")],
        )
    return value


def _inbox_item(entry: InboxEntry) -> dict[str, Any]:
    item: dict[str, Any] = {
        "seq": entry.seq,
        "message_id": entry.message_id,
        "received_at": entry.received_at,
        "envelope": orjson.Fragment(entry.envelope),
    }
    if entry.acked_at is not None:
        item["acked_at"] = entry.acked_at
    return item


async def inbox_page(
    request: web.Request, item: Callable[[InboxEntry], dict[str, Any]]
) -> web.Response:
    """One page of the calling agency's inbox, oldest first, paged by ``after`` (the last
    ``seq`` seen), each entry shown by ``item``: the rules of every inbox route."""
    agency: str = request[AGENCY]
    wanted = request.query.get("agency", agency)
    if wanted != agency:
        raise Forbidden(f"agency {agency} cannot read the inbox of {wanted}")
    after = int_param(request, "after", 0, 0, 2**62)
    limit = int_param(request, "limit", 50, 1, 500)
    unread = request.query.get("unread", "false")
    if unread not in {"true", "false"}:
        raise SchemaViolation(
            "query parameter unread must be true or false",
            errors=[FieldError("query:unread", "true or false")],
        )
    entries = await request.app[STORE].inbox_page(
        agency, after=after, limit=limit, unread_only=unread == "true"
    )
    next_after = entries[-1].seq if len(entries) == limit else None
    return json_response(
        {"agency": agency, "items": [item(e) for e in entries], "next_after": next_after}
    )


@routes.get("/api/v1/inbox")
async def get_inbox(request: web.Request) -> web.Response:
    """The calling agency's inbox, oldest first, paged by ``after`` (the last ``seq`` seen)."""
    return await inbox_page(request, _inbox_item)


@routes.post("/api/v1/inbox/{id}/ack")
async def ack_inbox(request: web.Request) -> web.Response:
    """The calling agency has read the message: its sender sees ``read``. Idempotent."""
    agency: str = request[AGENCY]
    message_id = message_id_param(request)
    store = request.app[STORE]
    try:
        acked_at = await store.ack(agency, message_id)
    except NotFound:
        row = await store.message(message_id)  # NotFound when there is no such message
        if agency not in {r.agency for r in row.recipients}:
            raise Forbidden(f"message {message_id} was not sent to agency {agency}") from None
        raise NotFound(f"message {message_id} has not reached the inbox of {agency} yet"
                       ) from None
    log.info("inbox.acked", message_id=message_id, agency=agency)
    return json_response({"message_id": message_id, "agency": agency, "acked_at": acked_at})


@routes.get("/health/live")
async def live(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    """Ready when the store answers and the broker connection is open."""
    checks: dict[str, str] = {}
    try:
        await request.app[STORE].ping()
        checks["store"] = "ok"
    except Unavailable as exc:
        checks["store"] = exc.detail
    if BROKER in request.app:
        checks["broker"] = "ok" if request.app[BROKER].connected else "reconnecting"
    ok = all(v == "ok" for v in checks.values())
    return json_response({"status": "ok" if ok else "unavailable", "checks": checks},
                         status=200 if ok else 503)
