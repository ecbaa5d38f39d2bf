"""Ingress: one path by which a message enters the gateway, whatever carried it.

The JSON API, the edXML adapter, the one-stop-shop adapter and the central hub's poller all
call :func:`admit`: decode, authorise (the caller may send only as itself), check the message
against what the store knows (a status goes back along the message it is about; a recall or
an update goes to the recipients of its document), persist the message with its outbox in one
transaction, publish. A repeated Idempotency-Key, or a repeated message id from the same sender
with the same bytes, returns the first answer and changes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from gateway.api.keys import BLOBS, BROKER, CALENDAR, DIRECTORY, RELAY, STORE
from gateway.blobs import UPLOAD_VALID
from gateway.codecs import encode
from gateway.directory import DeliveryMode
from gateway.dossiers import DossierState, Event, Step, WorkingDays, apply, fold
from gateway.envelope import (
    AnyEnvelope,
    DocumentEnvelope,
    DossierAction,
    DossierEnvelope,
    DossierStatusEnvelope,
    Operation,
    StatusCode,
    StatusEnvelope,
    stamp,
)
from gateway.errors import (
    Conflict,
    FieldError,
    Forbidden,
    NotFound,
    Unavailable,
    UnprocessableRequest,
)
from gateway.store.dossier_rows import DossierWrite
from gateway.store.store import (
    Accepted,
    DocumentFacts,
    IdempotencyKeyReused,
    StatusEffect,
    utcnow,
)

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
    stored: frozenset[str] = frozenset(),
) -> Accepted:
    """Accept one message from ``agency`` (already authenticated) or raise a GatewayError
    naming what was wrong; nothing is stored unless everything passed. ``stored``: the
    SHA-256 of the attachments this very request put in the blob store; an attachment by
    reference (no inline content) must be one of them."""
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
    stored = stored | await _uploaded(app, agency, envelope, stored)
    _claims_are_stored(envelope, stored)
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
    message_id = envelope.header.id or uuid.uuid4()
    recipients = resolution.recipients
    about: str | None = None
    status_code: str | None = None
    effect: StatusEffect | None = None
    document: DocumentFacts | None = None
    dossier: DossierWrite | None = None
    if isinstance(envelope, StatusEnvelope):
        about, status_code = str(envelope.body.about), envelope.body.code.value
        effect = await _status_effect(app, agency, envelope, recipients)
    elif isinstance(envelope, DocumentEnvelope):
        try:
            recipients, document = await _document_facts(
                app, agency, envelope, recipients, str(message_id)
            )
        except Conflict:
            # The same package may have been committed since the lookup above: a replay.
            earlier = await store.find_message(agency, str(message_id))
            if earlier is not None and earlier[1] == request_hash:
                return earlier[0]
            raise
    elif isinstance(envelope, DossierEnvelope | DossierStatusEnvelope):
        recipients, dossier = await _dossier_step(
            app, agency, envelope, recipients, str(message_id)
        )
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
        recipients_=recipients,
        redirects=dict(resolution.redirects),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        status_code=status_code,
        notes=[(n.event, n.detail) for n in notes],
        document=document,
        effect=effect,
        dossier=dossier,
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


#: Processing statuses by how far they go: a recipient's status only moves forwards, so a late
#: or repeated report changes nothing. 02 (rejected) and 03 (accepted) are the same step: the
#: first decision stands.
PROCESSING_RANK = {
    StatusCode.RECEIVED: 1,
    StatusCode.REJECTED: 2,
    StatusCode.ACCEPTED: 2,
    StatusCode.ASSIGNED: 3,
    StatusCode.PROCESSING: 4,
    StatusCode.COMPLETED: 5,
}
ANSWERS = {StatusCode.RECALL_AGREED, StatusCode.RECALL_REFUSED}


async def _status_effect(
    app: web.Application, agency: str, envelope: StatusEnvelope, recipients: tuple[str, ...]
) -> StatusEffect | None:
    """Where a status may go and what it changes.

    * 01 to 06: from a recipient of the message back to its sender; moves that recipient's
      processing status forwards.
    * 13 (thu hồi, a recall request): from the message's sender to its recipients; each of
      them answers it.
    * 15 / 16: from a recipient back to the sender; the first answer to the recall or update
      the recipient has open (the status may name the change itself or, as edXML does, the
      document it changes)."""
    about, code = str(envelope.body.about), envelope.body.code
    try:
        original = await app[STORE].message(about)
    except NotFound:
        raise UnprocessableRequest(
            f"status about unknown message {about}",
            errors=[FieldError("/body/about", "no such message")],
        ) from None
    addressees = {r.agency for r in original.recipients}
    if code is StatusCode.RECALL_REQUESTED:
        if agency != original.sender:
            raise Forbidden(
                f"only the sender of message {about} can ask to recall it",
                errors=[FieldError("/body/about", "not a message sent by the calling agency")],
            )
        strangers = sorted(set(recipients) - addressees)
        if strangers:
            raise UnprocessableRequest(
                f"a recall request goes to recipients of {about} only; "
                f"{', '.join(strangers)} did not receive it",
                errors=[FieldError("/header/to", "not a recipient of the message")],
            )
        return None
    if code in ANSWERS and agency not in addressees:
        # An answer may name the document by its first version (edXML's ResponseFor/DocumentId
        # does): an agency that an update added received a version of it too.
        for sender, key in (await app[STORE].document_keys(about))[:1]:
            addressees |= await app[STORE].document_recipients(sender, key)
    if agency not in addressees:
        raise Forbidden(
            f"agency {agency} was not a recipient of message {about}",
            errors=[FieldError("/body/about", "not a message sent to the calling agency")],
        )
    if recipients != (original.sender,):
        raise UnprocessableRequest(
            f"a status about {about} goes to its sender {original.sender} only",
            errors=[FieldError("/header/to", f"must be [{{'agency': '{original.sender}'}}]")],
        )
    if code in ANSWERS:
        change = about if original.is_change_request else await app[STORE].open_change(
            about, agency
        )
        if change is None:
            raise UnprocessableRequest(
                f"no recall or update of message {about} waits for an answer from {agency}",
                errors=[FieldError("/body/code", "15 and 16 answer a recall or an update")],
            )
        return StatusEffect(change, agency, code.value, comment=envelope.body.comment)
    return StatusEffect(about, agency, code.value, rank=PROCESSING_RANK[code])


async def _document_facts(
    app: web.Application,
    agency: str,
    envelope: DocumentEnvelope,
    recipients: tuple[str, ...],
    message_id: str,
) -> tuple[tuple[str, ...], DocumentFacts]:
    """A document's place among the versions of its document, and who it goes to: a new
    document or a replacement starts a document of its own; a recall goes to everyone who
    received a version of its document, and only to them; an update goes to them and to
    anyone it adds."""
    store = app[STORE]
    body = envelope.body
    key = body.document_id or message_id
    if body.operation in {Operation.NEW, Operation.REPLACE}:
        # A replacement may keep the DocumentId of what it replaces (real packages do): it is
        # then a new version of that document; a new document may not reuse one.
        if body.operation is Operation.NEW and await store.versions(agency, key):
            raise Conflict(
                f"document {key} was already sent by {agency}; send an update or a replace",
                errors=[FieldError("/body/document_id", "a document of the sender already")],
            )
        for index, replaced in enumerate(body.replaces):
            if not await store.versions(agency, replaced):
                raise UnprocessableRequest(
                    f"document {replaced} was not sent by {agency}, so it cannot be replaced",
                    errors=[FieldError(f"/body/replaces/{index}", "no such document")],
                )
        return recipients, DocumentFacts(key, body.operation.value, tuple(body.replaces))
    addressees = await store.document_recipients(agency, key)
    if not addressees:
        raise UnprocessableRequest(
            f"document {key} was not sent by {agency}, so it cannot be "
            f"{'recalled' if body.operation is Operation.RECALL else 'updated'}",
            errors=[FieldError("/body/document_id", "no such document of the sender")],
        )
    strangers = sorted(set(recipients) - addressees)
    if body.operation is Operation.RECALL and strangers:
        raise UnprocessableRequest(
            f"a recall goes to the recipients of document {key} only; "
            f"{', '.join(strangers)} did not receive it",
            errors=[FieldError("/header/to", "not a recipient of the document")],
        )
    return tuple(sorted(addressees)) + tuple(strangers), DocumentFacts(key, body.operation.value)


async def _dossier_step(
    app: web.Application,
    agency: str,
    envelope: DossierEnvelope | DossierStatusEnvelope,
    recipients: tuple[str, ...],
    message_id: str,
) -> tuple[tuple[str, ...], DossierWrite | None]:
    """A dossier step is legal only on the dossier's history (:func:`gateway.dossiers.apply`),
    and the gateway decides where it goes: a hand-over to the one agency it names; an accept
    or a return to who handed it over; a result or an apology to the receiving agency (from
    the receiving agency itself: to everyone else who held the dossier)."""
    store = app[STORE]
    now = utcnow()
    if isinstance(envelope, DossierEnvelope):
        body = envelope.body
        code = body.code
        portals = [r for r in recipients if app[DIRECTORY].get(r).mode is DeliveryMode.PORTAL]
        if portals:
            # Progress reported to a public-service portal (đồng bộ hồ sơ): the portal
            # follows the dossier, it never holds it, so this is not a hand-over.
            if len(portals) != len(recipients):
                raise UnprocessableRequest(
                    "a dossier goes either to a portal (progress) or to one agency "
                    "(hand-over), not both at once",
                    errors=[FieldError("/header/to", "portals and agencies mixed")],
                )
            return recipients, None
        if len(recipients) != 1:
            raise UnprocessableRequest(
                f"a dossier is handed over to one agency, not {len(recipients)}",
                errors=[FieldError("/header/to", "exactly one agency")],
            )
        history = await store.dossier_events(code)
        state = fold(code, history)
        state, preceding = _successor_takes_over(app, state, agency, now, message_id)
        event = Event(
            seq=len(history) + len(preceding) + 1, step=Step.HANDOVER, actor=agency, at=now,
            message_id=message_id, to=recipients[0],
            due_at=_step_due(app, envelope, recipients[0], now),
            appointment_at=body.appointment_at, received_at=body.received_at,
        )
        new = apply(state, event, code)
        return recipients, DossierWrite(event, new, body.procedure_code, preceding)
    sbody = envelope.body
    code = sbody.dossier
    history = await store.dossier_events(code)
    state = fold(code, history)
    if state is None:
        raise NotFound(f"no dossier {code}")
    if sbody.action in {DossierAction.ALERT, DossierAction.TRANSFER}:
        raise Forbidden(f"a {sbody.action.value} is the gateway's own step",
                        errors=[FieldError("/body/action", "not sent by agencies")])
    taken, preceding = _successor_takes_over(app, state, agency, now, message_id)
    assert taken is not None
    state = taken
    event = Event(
        seq=len(history) + len(preceding) + 1, step=Step(sbody.action.value), actor=agency,
        at=now,
        message_id=message_id, about=str(sbody.about) if sbody.about else None,
        appointment_at=sbody.appointment_at, reason=sbody.reason,
    )
    if sbody.action is DossierAction.RESULT:
        event = dataclasses.replace(event, to=state.receiving_agency)
    new = apply(state, event, code)
    if sbody.action in {DossierAction.ACCEPT, DossierAction.RETURN}:
        assert state.pending is not None
        wanted: set[str] = {state.pending.sender}
    elif agency != state.receiving_agency:
        wanted = {state.receiving_agency}
    else:
        wanted = set(new.involved) - {agency}
    strangers = sorted(set(recipients) - wanted)
    if strangers:
        raise UnprocessableRequest(
            f"this {sbody.action.value} of dossier {code} goes to {', '.join(sorted(wanted))}, "
            f"not to {', '.join(strangers)}",
            errors=[FieldError("/header/to", "not where this step goes")],
        )
    return tuple(sorted(wanted)), DossierWrite(event, new, None, preceding)


async def _uploaded(app: web.Application, agency: str, envelope: AnyEnvelope,
                    stored: frozenset[str]) -> frozenset[str]:
    """The claim checks of ``envelope`` that name files ``agency`` itself uploaded ahead
    (``POST /api/v1/attachments``) within :data:`UPLOAD_VALID`, still stored, with the size
    the envelope says; each is claimed (made young) so the collector keeps it."""
    files = getattr(envelope.body, "attachments", [])
    wanted = {a.sha256 for a in files if a.content is None and a.sha256 not in stored}
    blobs = app.get(BLOBS)
    if not wanted or blobs is None:
        return frozenset()
    found = await app[STORE].uploads_of(agency, sorted(wanted), utcnow() - UPLOAD_VALID)
    for i, att in enumerate(files):
        size = found.get(att.sha256)
        if att.content is None and size is not None and att.size != size:
            raise UnprocessableRequest(
                f"attachment {i + 1} ({att.name}): the uploaded file has {size} bytes",
                errors=[FieldError(f"/body/attachments/{i}/size", f"{size}, as uploaded")])
    claimed: set[str] = set()
    for digest in found:
        try:
            await asyncio.to_thread(blobs.claim, digest)
        except NotFound:
            continue  # collected since: not stored, refused below like any unknown digest
        claimed.add(digest)
    return frozenset(claimed)


def _claims_are_stored(envelope: AnyEnvelope, stored: frozenset[str]) -> None:
    """A claim check must be for a file this request stored, or one the same agency
    uploaded. The blob store is shared and addressed by digest: accepting any digest a client
    names would let an agency that learnt a digest attach (and then read back) another
    agency's file, or send a reference to nothing, which its recipients could never open."""
    for i, att in enumerate(getattr(envelope.body, "attachments", [])):
        if att.content is None and att.sha256 not in stored:
            raise UnprocessableRequest(
                f"attachment {i + 1} ({att.name}) has no content and is not a file this agency "
                "uploaded in the last 24 hours: send the file inline (base64), upload it first "
                "(POST /api/v1/attachments) and name it by its SHA-256, or send an edXML "
                "package, whose large files the gateway streams into its store",
                errors=[FieldError(f"/body/attachments/{i}/content", "required")],
            )


def _successor_takes_over(
    app: web.Application, state: DossierState | None, agency: str, now: datetime,
    message_id: str,
) -> tuple[DossierState | None, tuple[Event, ...]]:
    """A hand-over queued for an agency that was dissolved meanwhile reached its successor
    (the delivery worker redirects it), but the dossier still names the old agency until the
    scheduler's next pass. When the successor acts first, the transfer is recorded right
    before its step, in the same transaction, so the successor is never refused and the
    trace shows who took over from whom."""
    if state is None or state.responsible is None or state.responsible == agency:
        return state, ()
    directory = app[DIRECTORY]
    old = directory.agencies.get(state.responsible)
    if old is None or old.successor is None or directory.current(old.code) != agency:
        return state, ()
    transfer = Event(seq=state.seq + 1, step=Step.TRANSFER, actor=old.code, at=now,
                     message_id=message_id, to=agency, due_at=state.due_at,
                     reason=f"{old.code} dissolved; {agency} is its successor")
    return apply(state, transfer, state.code), (transfer,)


def _step_due(
    app: web.Application, envelope: DossierEnvelope, to: str, at: datetime
) -> datetime:
    """When the receiver's step falls due: its working days on the route when the route's
    current step is the receiver's (or a dissolved agency's whose successor the receiver is),
    else the dossier's appointment date (ngày hẹn trả)."""
    calendar: WorkingDays | None = app.get(CALENDAR)
    body = envelope.body
    if calendar is not None and body.route and body.current_step < len(body.route):
        step = body.route[body.current_step]
        directory = app[DIRECTORY]
        named = (directory.current(step.agency) if step.agency in directory.agencies
                 else step.agency)
        if to in {step.agency, named}:
            return calendar.add_working_days(at, step.working_days)
    return body.appointment_at
