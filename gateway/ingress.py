"""Ingress: one path by which a message enters the gateway, whatever carried it.

The JSON API, the edXML adapter, the one-stop-shop adapter and the central hub's poller all
call :func:`admit`: decode, authorise (the caller may send only as itself), check the message
against what the store knows (a status goes back along the message it is about; a recall or
an update goes to the recipients of its document), persist the message with its outbox in one
transaction, publish. A repeated Idempotency-Key, or a repeated message id from the same sender
with the same bytes, returns the first answer and changes nothing.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web

from gateway.api.keys import BROKER, DIRECTORY, RELAY, STORE
from gateway.codecs import encode
from gateway.envelope import AnyEnvelope, StatusEnvelope, stamp
from gateway.errors import (
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    Unavailable,
    UnprocessableRequest,
)
from gateway.store.store import Accepted, IdempotencyKeyReused, utcnow

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AuditNote:
    """An extra audit event recorded with the message, in the same transaction (e.g. the
    outcome of its signature check)."""

    event: str
    detail: dict[str, Any] = field(default_factory=dict)


#: A check run on the decoded envelope and the raw bytes before anything is stored: it may
#: refuse (raise a GatewayError), amend the envelope (a trace entry) and add audit notes.
Check = Callable[[bytes, AnyEnvelope], tuple[AnyEnvelope, Sequence[AuditNote]]]


async def admit(
    app: web.Application,
    *,
    agency: str,
    body: bytes,
    decoder: Callable[[bytes], AnyEnvelope],
    sender_at: str,
    idempotency_key: str | None = None,
    check: Check | None = None,
    via: str = "api",
) -> Accepted:
    """Accept one message from ``agency`` (already authenticated) or raise a GatewayError
    naming what was wrong; nothing is stored unless everything passed."""
    store = app[STORE]
    request_hash = hashlib.sha256(body).hexdigest()
    if idempotency_key is not None:
        found = await store.find_idempotent(agency, idempotency_key)
        if found is not None:
            accepted, first_hash = found
            if first_hash != request_hash:
                raise IdempotencyKeyReused()
            return accepted
    envelope = decoder(body)
    header = envelope.header
    if header.sender != agency:
        raise Forbidden(
            f"agency {agency} cannot send as {header.sender}",
            errors=[FieldError(sender_at, "must be the calling agency")],
        )
    if header.id is not None:
        earlier = await store.find_message(agency, str(header.id))
        if earlier is not None:
            accepted, first_hash = earlier
            if first_hash != request_hash:
                raise Conflict(f"message {header.id} was already sent with other content")
            return accepted
    notes: Sequence[AuditNote] = ()
    if check is not None:
        envelope, notes = check(body, envelope)
    directory = app[DIRECTORY]
    resolution = directory.resolve(envelope.header.to, sender=agency)
    about: str | None = None
    status_code: str | None = None
    if isinstance(envelope, StatusEnvelope):
        about, status_code = str(envelope.body.about), envelope.body.code.value
        await _check_status_route(app, agency, about, resolution.recipients)
    message_id = envelope.header.id or uuid.uuid4()
    stamped = stamp(envelope, message_id=message_id, now=utcnow())
    created = stamped.header.created
    assert created is not None
    accepted = await store.accept(
        message_id=str(message_id),
        kind=stamped.kind,
        sender=agency,
        about=about,
        created_at=created,
        envelope=encode(stamped),
        recipients_=resolution.recipients,
        redirects=dict(resolution.redirects),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        status_code=status_code,
        notes=[(n.event, n.detail) for n in notes],
    )
    log.info("message.accepted", message_id=accepted.message_id, sender=agency,
             recipients=len(accepted.recipients), kind=stamped.kind, via=via)
    if accepted.created and BROKER in app:
        try:
            await app[RELAY].publish(accepted.outbox)
        except Unavailable as exc:  # stored: the relay publishes it when the broker is back
            log.warning("message.publish_deferred", message_id=accepted.message_id,
                        error=exc.detail)
    return accepted


async def _check_status_route(
    app: web.Application, agency: str, about: str, recipients: tuple[str, ...]
) -> None:
    """A status goes from a recipient of a message back to that message's sender, only."""
    try:
        original = await app[STORE].message(about)
    except NotFound:
        raise UnprocessableRequest(
            f"status about unknown message {about}",
            errors=[FieldError("/body/about", "no such message")],
        ) from None
    if agency not in {r.agency for r in original.recipients}:
        raise Forbidden(
            f"agency {agency} was not a recipient of message {about}",
            errors=[FieldError("/body/about", "not a message sent to the calling agency")],
        )
    if recipients != (original.sender,):
        raise UnprocessableRequest(
            f"a status about {about} goes to its sender {original.sender} only",
            errors=[FieldError("/header/to", f"must be [{{'agency': '{original.sender}'}}]")],
        )
