"""The store: messages, per-recipient delivery state, outbox, inbox, credentials, audit events.

SQLAlchemy 2 async Core over SQLite (WAL, the embedded default) or PostgreSQL, through the same
code. Every method that changes state does so in one transaction, and writes its audit event in
that same transaction: what the store says happened, happened, and nothing else did.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.audit import GENESIS, AuditEvent, Break, detail_text, event_hash, verify
from gateway.dossiers import Event
from gateway.errors import Conflict, FieldError, NotFound, Unavailable, UnprocessableRequest
from gateway.store import dossier_rows, migrate
from gateway.store.dossier_rows import DossierRow, DossierWrite
from gateway.store.tables import (
    audit_events,
    audit_head,
    credentials,
    dead_letters,
    document_links,
    dossiers,
    inbox,
    messages,
    outbox,
    recipients,
    uploads,
)

TOKEN_PREFIX = "lt_"  # noqa: S105 - a prefix that makes leaked tokens recognisable


def utcnow() -> datetime:
    return datetime.now(UTC)


def hash_token(token: str) -> str:
    """Tokens are 256-bit random values: a plain SHA-256 is enough (no password stretching)."""
    return hashlib.sha256(token.encode()).hexdigest()


class IdempotencyKeyReused(UnprocessableRequest):
    def __init__(self) -> None:
        super().__init__(
            "this Idempotency-Key was used for a different request",
            errors=[FieldError("header:Idempotency-Key", "reused with another body")],
        )


class DeadState:
    DEAD = "dead"
    REPLAYED = "replayed"
    DISCARDED = "discarded"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    message_id: str
    recipient: str
    reason: str
    error: str | None
    attempts: int
    first_attempt_at: datetime | None
    last_attempt_at: datetime | None
    dead_at: datetime
    state: str
    resolved_at: datetime | None
    resolved_by: str | None
    comment: str | None


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters: by id, recipient agency, reason, age; ``state=None`` for any."""

    ids: Sequence[int] | None = None
    agency: str | None = None
    reason: str | None = None
    older_than: datetime | None = None  # died before this instant
    state: str | None = DeadState.DEAD

    def clauses(self) -> list[Any]:
        c = dead_letters.c
        found: list[Any] = []
        if self.ids is not None:
            found.append(c.id.in_(list(self.ids)))
        if self.agency is not None:
            found.append(c.recipient == self.agency)
        if self.reason is not None:
            found.append(c.reason == self.reason)
        if self.older_than is not None:
            found.append(c.dead_at < self.older_than)
        if self.state is not None:
            found.append(c.state == self.state)
        return found


class Role:
    AGENCY = "agency"  # sends as, and reads for, one agency
    OPERATOR = "operator"  # runs the gateway: dead letters, never an agency's messages


@dataclass(frozen=True, slots=True)
class Principal:
    role: str
    agency: str | None  # set for an agency
    name: str  # the agency code, or the operator's name


class State:
    PENDING = "pending"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    REDIRECTED = "redirected"  # the agency was dissolved while the message waited: see redirect


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    message_id: str
    sender: str
    recipient: str
    envelope: bytes


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: str
    recipients: tuple[str, ...]
    accepted_at: datetime
    created: bool  # False: an earlier request with the same Idempotency-Key
    outbox: tuple[OutboxRow, ...] = ()  # the rows to publish (only when created)


@dataclass(frozen=True, slots=True)
class RecipientRow:
    agency: str
    state: str
    addressed_as: str | None
    attempts: int
    delivered_at: datetime | None
    read_at: datetime | None
    failed_at: datetime | None
    last_error: str | None
    status_code: str | None = None
    status_at: datetime | None = None
    answer: str | None = None
    answered_at: datetime | None = None
    answer_comment: str | None = None


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: str
    kind: str
    sender: str
    about: str | None
    accepted_at: datetime
    envelope: bytes
    recipients: tuple[RecipientRow, ...]
    operation: str | None = None
    status_code: str | None = None

    @property
    def is_change_request(self) -> bool:
        """A recall or an update (document) or a recall request (status 13): each recipient
        answers it with 15 or 16."""
        return self.operation in {"recall", "update"} or self.status_code == "13"


@dataclass(frozen=True, slots=True)
class DocumentFacts:
    """What links a document message to its versions."""

    key: str  # the document's key: its edXML DocumentId, or its first message's id
    operation: str  # new | recall | update | replace
    replaces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StatusEffect:
    """What a status message changes on the recipient row it reports from: a processing status
    by rank (only forwards), or the first answer to a change request."""

    message_id: str  # the message whose recipient row changes
    agency: str  # the recipient that reports
    code: str
    rank: int | None = None  # processing statuses; None for an answer (15/16)
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Version:
    message_id: str
    sender: str
    operation: str | None
    relation: str  # self | replaces
    accepted_at: datetime


@dataclass(frozen=True, slots=True)
class InboxEntry:
    seq: int
    message_id: str
    received_at: datetime
    acked_at: datetime | None
    envelope: bytes


def _insert_ignore(conn: AsyncConnection, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


class Store:
    """Open with :meth:`open` (an async context manager); all methods are safe to call
    concurrently from many tasks and from several processes on the same database."""

    def __init__(self, engine: AsyncEngine, read_engine: AsyncEngine) -> None:
        self._engine = engine
        self._read_engine = read_engine

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, *, migrate_schema: bool = True) -> AsyncIterator[Store]:
        engine, read_engine = _engines(url)
        try:
            if migrate_schema:
                await migrate.upgrade(engine)
            yield cls(engine, read_engine)
        finally:
            await engine.dispose()
            if read_engine is not engine:
                await read_engine.dispose()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.begin() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, IntegrityError):
                raise
            raise Unavailable(f"store unavailable: {exc.orig.__class__.__name__}") from exc

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._read_engine.connect() as conn:
                yield conn
        except (OperationalError, DBAPIError) as exc:
            raise Unavailable(f"store unavailable: {exc.orig.__class__.__name__}") from exc

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    # -- credentials --------------------------------------------------------------------------
    async def issue_credential(self, agency: str, label: str | None = None) -> tuple[str, str]:
        """A new bearer token for ``agency``: returns (credential id, token). Only the hash is
        kept, so the token cannot be shown again."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        cred_id = str(uuid.uuid4())
        async with self.write() as conn:
            await conn.execute(
                credentials.insert().values(
                    id=cred_id, agency=agency, token_hash=hash_token(token), label=label,
                    created_at=utcnow(),
                )
            )
            await _audit(conn, "credential.issued", agency=agency, detail={"credential": cred_id})
        return cred_id, token

    async def revoke_credentials(self, agency: str, credential_id: str | None = None) -> int:
        now = utcnow()
        query = credentials.update().where(
            credentials.c.agency == agency, credentials.c.revoked_at.is_(None)
        )
        if credential_id is not None:
            query = query.where(credentials.c.id == credential_id)
        async with self.write() as conn:
            result = await conn.execute(query.values(revoked_at=now))
            if result.rowcount:
                await _audit(
                    conn, "credential.revoked", agency=agency,
                    detail={"credential": credential_id or "all", "count": result.rowcount},
                )
        return int(result.rowcount)

    async def issue_operator_credential(self, name: str) -> tuple[str, str]:
        """A bearer token for an operator (the ``/api/v1/ops`` routes); ``name`` is who."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        cred_id = str(uuid.uuid4())
        async with self.write() as conn:
            await conn.execute(
                credentials.insert().values(
                    id=cred_id, role=Role.OPERATOR, agency=None, token_hash=hash_token(token),
                    label=name, created_at=utcnow(),
                )
            )
            await _audit(conn, "credential.issued", actor=name,
                         detail={"credential": cred_id, "role": Role.OPERATOR})
        return cred_id, token

    async def revoke_operator_credentials(self, name: str) -> int:
        async with self.write() as conn:
            result = await conn.execute(
                credentials.update()
                .where(credentials.c.role == Role.OPERATOR, credentials.c.label == name,
                       credentials.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            if result.rowcount:
                await _audit(conn, "credential.revoked", actor=name,
                             detail={"role": Role.OPERATOR, "count": result.rowcount})
        return int(result.rowcount)

    async def authenticate(self, token: str) -> Principal | None:
        """Who a bearer token belongs to, or None when unknown or revoked."""
        async with self.read() as conn:
            row = (
                await conn.execute(
                    sa.select(credentials.c.role, credentials.c.agency, credentials.c.label)
                    .where(
                        credentials.c.token_hash == hash_token(token),
                        credentials.c.revoked_at.is_(None),
                    )
                )
            ).first()
        if row is None:
            return None
        if row.role == Role.OPERATOR:
            return Principal(Role.OPERATOR, None, str(row.label))
        return Principal(Role.AGENCY, str(row.agency), str(row.agency))

    # -- accepting ----------------------------------------------------------------------------
    async def find_idempotent(self, sender: str, key: str) -> tuple[Accepted, str] | None:
        """The first answer to (sender, Idempotency-Key), with its request hash."""
        async with self.read() as conn:
            return await _find_idempotent(conn, sender, key)

    async def find_message(self, sender: str, message_id: str) -> tuple[Accepted, str] | None:
        """The first answer for a message id the sender already used, with its request hash."""
        async with self.read() as conn:
            return await _find_by(conn, messages.c.id == message_id, messages.c.sender == sender)

    async def accept(
        self,
        *,
        message_id: str,
        kind: str,
        sender: str,
        about: str | None,
        created_at: datetime,
        envelope: bytes,
        recipients_: Sequence[str],
        redirects: dict[str, str],
        idempotency_key: str | None,
        request_hash: str,
        status_code: str | None = None,
        notes: Sequence[tuple[str, dict[str, Any]]] = (),
        document: DocumentFacts | None = None,
        effect: StatusEffect | None = None,
        dossier: DossierWrite | None = None,
    ) -> Accepted:
        """Persist the message, its recipients and their outbox rows in one transaction, with
        its audit events (``notes``: extra ones about it, e.g. its signature check)."""
        now = utcnow()
        try:
            async with self.write() as conn:
                await conn.execute(
                    messages.insert().values(
                        id=message_id, kind=kind, sender=sender, about=about,
                        created_at=created_at, accepted_at=now,
                        idempotency_key=idempotency_key, request_hash=request_hash,
                        envelope=envelope.decode(),
                        operation=document.operation if document else None,
                        status_code=status_code,
                    )
                )
                if document is not None:
                    await conn.execute(document_links.insert(), [
                        {"message_id": message_id, "sender": sender, "document_key": key,
                         "relation": relation, "accepted_at": now}
                        for key, relation in ((document.key, "self"),
                                              *((k, "replaces")
                                                for k in dict.fromkeys(document.replaces)
                                                if k != document.key))
                    ])
                addressed = {final: original for original, final in redirects.items()}
                await conn.execute(
                    recipients.insert(),
                    [
                        {
                            "message_id": message_id, "agency": agency, "state": State.PENDING,
                            "addressed_as": addressed.get(agency), "attempts": 0,
                            "updated_at": now,
                        }
                        for agency in recipients_
                    ],
                )
                # RETURNING hands the relay its rows without reading them back.
                inserted = await conn.execute(
                    outbox.insert().returning(outbox.c.id, outbox.c.recipient,
                                              sort_by_parameter_order=True),
                    [
                        {"message_id": message_id, "recipient": agency, "created_at": now,
                         "publish_attempts": 0}
                        for agency in recipients_
                    ],
                )
                rows = tuple(
                    OutboxRow(r.id, message_id, sender, r.recipient, envelope)
                    for r in inserted.all()
                )
                events = [_Event(
                    "accepted", message_id, sender, sender,
                    {"kind": kind, "recipients": list(recipients_),
                     **({"redirects": redirects} if redirects else {})},
                )]
                if dossier is not None:
                    await dossier_rows.write(conn, dossier, now)
                    events.extend(_Event(
                        f"dossier_{e.step.value}", message_id, sender, sender,
                        {"dossier": dossier.state.code, "seq": e.seq, "from": e.actor,
                         "to": e.to},
                    ) for e in dossier.preceding)
                    events.append(_Event(
                        f"dossier_{dossier.event.step.value}", message_id, sender, sender,
                        {"dossier": dossier.state.code, "seq": dossier.event.seq,
                         **({"to": dossier.event.to} if dossier.event.to else {})},
                    ))
                if about is not None:  # a status report joins the timeline of its message
                    applied = await _apply(conn, effect, now) if effect is not None else False
                    events.append(_Event("status_received", about, sender, sender,
                                         {"code": status_code, "status_message": message_id,
                                          "applied": applied}))
                    if effect is not None and effect.message_id != about:
                        events.append(_Event("change_answered", effect.message_id, sender,
                                             sender, {"code": status_code, "applied": applied,
                                                      "status_message": message_id}))
                events.extend(_Event(name, message_id, sender, sender, detail)
                              for name, detail in notes)
                await _audit_many(conn, events)
        except IntegrityError:
            # Two requests with one Idempotency-Key raced: the other one won; answer as it did.
            if idempotency_key is not None:
                found = await self.find_idempotent(sender, idempotency_key)
                if found is not None:
                    if found[1] != request_hash:
                        raise IdempotencyKeyReused() from None
                    return found[0]
            else:  # the same message id raced (a package resent at once): replay if equal
                found = await self.find_message(sender, message_id)
                if found is not None and found[1] == request_hash:
                    return found[0]
            if dossier is not None:
                raise Conflict(
                    f"dossier {dossier.state.code} changed while this step was decided; "
                    "send it again", errors=[FieldError("/body", "concurrent step")],
                ) from None
            raise Conflict(f"message {message_id} already exists") from None
        return Accepted(message_id, tuple(sorted(recipients_)), now, created=True, outbox=rows)

    # -- outbox -------------------------------------------------------------------------------
    async def outbox_rows(self, ids: Sequence[int] | None = None, *, older_than: datetime | None
                          = None, limit: int = 500) -> list[OutboxRow]:
        """Unpublished outbox rows: the given ones, or every one created before ``older_than``."""
        query = (
            sa.select(
                outbox.c.id, outbox.c.message_id, messages.c.sender, outbox.c.recipient,
                messages.c.envelope,
            )
            .join(messages, messages.c.id == outbox.c.message_id)
            .where(outbox.c.published_at.is_(None))
            .order_by(outbox.c.id)
            .limit(limit)
        )
        if ids is not None:
            query = query.where(outbox.c.id.in_(ids))
        if older_than is not None:
            query = query.where(outbox.c.created_at < older_than)
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            OutboxRow(r.id, r.message_id, r.sender, r.recipient, r.envelope.encode())
            for r in rows
        ]

    async def mark_published(self, rows: Sequence[OutboxRow]) -> None:
        if not rows:
            return
        now = utcnow()
        async with self.write() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.id.in_([r.id for r in rows]), outbox.c.published_at.is_(None))
                .values(published_at=now)
            )
            await _audit_many(
                conn, [_Event("published", row.message_id, row.recipient) for row in rows]
            )

    async def note_publish_failure(self, rows: Sequence[OutboxRow]) -> None:
        async with self.write() as conn:
            await conn.execute(
                outbox.update()
                .where(outbox.c.id.in_([r.id for r in rows]))
                .values(publish_attempts=outbox.c.publish_attempts + 1)
            )

    # -- delivery -----------------------------------------------------------------------------
    async def recipient_state(self, message_id: str, agency: str) -> str | None:
        async with self.read() as conn:
            return (
                await conn.execute(
                    sa.select(recipients.c.state).where(
                        recipients.c.message_id == message_id, recipients.c.agency == agency
                    )
                )
            ).scalar_one_or_none()

    async def record_delivery(self, message_id: str, agency: str, *, mode: str,
                              attempt: int) -> bool | None:
        """The delivery took effect: the message enters the agency's inbox (once, ever) and
        the recipient becomes ``delivered``. False when it had already been recorded; None
        when the message has no such recipient (nothing is written)."""
        now = utcnow()
        async with self.write() as conn:
            changed = await conn.execute(
                recipients.update()
                .where(
                    recipients.c.message_id == message_id,
                    recipients.c.agency == agency,
                    recipients.c.state == State.PENDING,
                )
                .values(state=State.DELIVERED, delivered_at=now, updated_at=now, attempts=attempt,
                        last_error=None)
            )
            if not changed.rowcount:
                known = (
                    await conn.execute(
                        sa.select(recipients.c.state).where(
                            recipients.c.message_id == message_id, recipients.c.agency == agency
                        )
                    )
                ).first()
                return None if known is None else False
            inserted = await conn.execute(
                _insert_ignore(conn, inbox).values(
                    agency=agency, message_id=message_id, received_at=now
                )
            )
            await _audit(
                conn, "delivered", message_id=message_id, agency=agency,
                detail={"mode": mode, "attempt": attempt, "inbox": bool(inserted.rowcount)},
            )
        return True

    async def redirect(self, message_id: str, agency: str, successor: str
                       ) -> tuple[OutboxRow, ...]:
        """A message waiting for ``agency``, which has since been dissolved or merged, goes to
        its ``successor`` instead: the old recipient becomes ``redirected``, the successor a
        recipient (addressed as the old code) with its outbox row, in one transaction. Nothing
        happens (and nothing is returned) if the old recipient is no longer pending; no new
        row if the successor already is a recipient."""
        now = utcnow()
        async with self.write() as conn:
            changed = await conn.execute(
                recipients.update()
                .where(recipients.c.message_id == message_id, recipients.c.agency == agency,
                       recipients.c.state == State.PENDING)
                .values(state=State.REDIRECTED, updated_at=now,
                        last_error=f"redirected to {successor}")
            )
            if not changed.rowcount:
                return ()
            message = (await conn.execute(
                sa.select(messages.c.sender, messages.c.envelope)
                .where(messages.c.id == message_id)
            )).one()
            inserted = await conn.execute(
                _insert_ignore(conn, recipients).values(
                    message_id=message_id, agency=successor, state=State.PENDING,
                    addressed_as=agency, attempts=0, updated_at=now,
                )
            )
            rows: tuple[OutboxRow, ...] = ()
            if inserted.rowcount:
                outbox_id = (await conn.execute(
                    outbox.insert().returning(outbox.c.id).values(
                        message_id=message_id, recipient=successor, created_at=now,
                        publish_attempts=0,
                    )
                )).scalar_one()
                rows = (OutboxRow(outbox_id, message_id, message.sender, successor,
                                  message.envelope.encode()),)
            await _audit(conn, "redirected", message_id=message_id, agency=agency,
                         detail={"to": successor, "new_recipient": bool(rows)})
        return rows

    async def record_retry(self, message_id: str, agency: str, *, attempt: int,
                           error: str) -> None:
        """Attempt ``attempt`` failed and will be tried again: the sender sees why."""
        now = utcnow()
        async with self.write() as conn:
            await conn.execute(
                recipients.update()
                .where(
                    recipients.c.message_id == message_id,
                    recipients.c.agency == agency,
                    recipients.c.state == State.PENDING,
                )
                .values(attempts=attempt, last_error=error, updated_at=now)
            )
            await _audit(conn, "retried", message_id=message_id, agency=agency,
                         detail={"attempt": attempt, "error": error})

    # -- inbox --------------------------------------------------------------------------------
    async def inbox_page(self, agency: str, *, after: int = 0, limit: int = 50,
                         unread_only: bool = False) -> list[InboxEntry]:
        query = (
            sa.select(inbox.c.seq, inbox.c.message_id, inbox.c.received_at, inbox.c.acked_at,
                      messages.c.envelope)
            .join(messages, messages.c.id == inbox.c.message_id)
            .where(inbox.c.agency == agency, inbox.c.seq > after)
            .order_by(inbox.c.seq)
            .limit(limit)
        )
        if unread_only:
            query = query.where(inbox.c.acked_at.is_(None))
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            InboxEntry(r.seq, r.message_id, r.received_at, r.acked_at, r.envelope.encode())
            for r in rows
        ]

    async def ack(self, agency: str, message_id: str) -> datetime:
        """The agency has read the message: idempotent, returns when it was first acked."""
        now = utcnow()
        async with self.write() as conn:
            row = (
                await conn.execute(
                    sa.select(inbox.c.acked_at).where(
                        inbox.c.agency == agency, inbox.c.message_id == message_id
                    )
                )
            ).first()
            if row is None:
                raise NotFound(f"message {message_id} is not in the inbox of {agency}")
            if row.acked_at is not None:
                acked_at: datetime = row.acked_at
                return acked_at
            await conn.execute(
                inbox.update()
                .where(inbox.c.agency == agency, inbox.c.message_id == message_id)
                .values(acked_at=now)
            )
            await conn.execute(
                recipients.update()
                .where(recipients.c.message_id == message_id, recipients.c.agency == agency)
                .values(state=State.READ, read_at=now, updated_at=now)
            )
            await _audit(conn, "read", message_id=message_id, agency=agency, actor=agency)
        return now

    # -- dead letters -------------------------------------------------------------------------
    async def record_dead_letter(
        self, *, message_id: str, recipient: str, reason: str, error: str | None,
        attempts: int, first_attempt_at: datetime | None, last_attempt_at: datetime | None,
    ) -> bool:
        """Keep a dead letter (once, however often the DLQ hands it over) and show the sender
        ``failed`` with the reason. False when it was already kept."""
        now = utcnow()
        async with self.write() as conn:
            open_row = (
                await conn.execute(
                    sa.select(dead_letters.c.id).where(
                        dead_letters.c.message_id == message_id,
                        dead_letters.c.recipient == recipient,
                        dead_letters.c.state == DeadState.DEAD,
                    )
                )
            ).first()
            if open_row is not None:
                return False
            await conn.execute(
                dead_letters.insert().values(
                    message_id=message_id, recipient=recipient, reason=reason, error=error,
                    attempts=attempts, first_attempt_at=first_attempt_at,
                    last_attempt_at=last_attempt_at, dead_at=now, state=DeadState.DEAD,
                )
            )
            await conn.execute(
                recipients.update()
                .where(
                    recipients.c.message_id == message_id,
                    recipients.c.agency == recipient,
                    recipients.c.state == State.PENDING,
                )
                .values(state=State.FAILED, failed_at=now, updated_at=now, attempts=attempts,
                        last_error=f"{reason}: {error}" if error else reason)
            )
            await _audit(conn, "dead_lettered", message_id=message_id, agency=recipient,
                         detail={"reason": reason, "error": error, "attempts": attempts})
        return True

    async def dead_letters(self, where: DeadLetterFilter, *, after: int = 0, limit: int = 100
                           ) -> list[DeadLetter]:
        query = (
            sa.select(dead_letters)
            .where(*where.clauses(), dead_letters.c.id > after)
            .order_by(dead_letters.c.id)
            .limit(limit)
        )
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [DeadLetter(**row._asdict()) for row in rows]

    async def dead_letter(self, dead_id: int) -> DeadLetter:
        found = await self.dead_letters(DeadLetterFilter(ids=(dead_id,), state=None))
        if not found:
            raise NotFound(f"no dead letter {dead_id}")
        return found[0]

    async def replay_dead_letters(
        self, where: DeadLetterFilter, *, by: str, comment: str
    ) -> list[OutboxRow]:
        """Send dead letters again, with their message ids (so recipients still deduplicate):
        the recipient is pending again and a new outbox row goes to the relay."""
        now = utcnow()
        async with self.write() as conn:
            rows = await _take_open(conn, where, DeadState.REPLAYED, by=by, comment=comment,
                                    now=now)
            if not rows:
                return []
            for row in rows:
                # A message the agency's own consumer refused (an AMQP agency rejects it after
                # delivery) is still ``delivered``: it must be pending again, or the worker
                # would take the replay for a duplicate and drop it.
                replayable = [State.FAILED] + ([State.DELIVERED] if row.reason == "rejected"
                                               else [])
                await conn.execute(
                    recipients.update()
                    .where(recipients.c.message_id == row.message_id,
                           recipients.c.agency == row.recipient,
                           recipients.c.state.in_(replayable))
                    .values(state=State.PENDING, attempts=0, failed_at=None, updated_at=now)
                )
            inserted = await conn.execute(
                outbox.insert().returning(outbox.c.id, outbox.c.message_id, outbox.c.recipient,
                                          sort_by_parameter_order=True),
                [{"message_id": r.message_id, "recipient": r.recipient, "created_at": now,
                  "publish_attempts": 0} for r in rows],
            )
            outbox_ids = inserted.all()
            await _audit_many(conn, [
                _Event("replayed", r.message_id, r.recipient, by,
                       {"dead_letter": r.id, "comment": comment})
                for r in rows
            ])
            found = (
                await conn.execute(
                    sa.select(messages.c.id, messages.c.sender, messages.c.envelope).where(
                        messages.c.id.in_({r.message_id for r in rows})
                    )
                )
            ).all()
        by_id = {m.id: m for m in found}
        return [
            OutboxRow(o.id, o.message_id, by_id[o.message_id].sender, o.recipient,
                      by_id[o.message_id].envelope.encode())
            for o in outbox_ids
        ]

    async def discard_dead_letters(
        self, where: DeadLetterFilter, *, by: str, comment: str
    ) -> list[int]:
        """Give dead letters up for good; the recipient stays ``failed``."""
        async with self.write() as conn:
            rows = await _take_open(conn, where, DeadState.DISCARDED, by=by, comment=comment,
                                    now=utcnow())
            if rows:
                await _audit_many(conn, [
                    _Event("discarded", r.message_id, r.recipient, by,
                           {"dead_letter": r.id, "comment": comment})
                    for r in rows
                ])
        return [r.id for r in rows]

    # -- dossiers -----------------------------------------------------------------------------
    async def dossier_events(self, code: str) -> list[Event]:
        async with self.read() as conn:
            return await dossier_rows.events(conn, code)

    async def open_dossiers(self, *, responsible: Sequence[str] | None = None,
                            due_before: datetime | None = None,
                            due_after: datetime | None = None,
                            to_alert_at: datetime | None = None, limit: int = 1000
                            ) -> list[str]:
        """Codes of dossiers still open (neither completed nor withdrawn): those some of
        ``responsible`` must act on, or those whose running step falls due before
        ``due_before`` (and after ``due_after``), soonest first. ``to_alert_at``: only those
        still owed an alert at that instant (none raised for the running step yet, or only
        ``due_soon`` and now overdue), so that what was alerted never crowds out what was
        not."""
        where: list[sa.ColumnElement[bool]] = [
            dossiers.c.phase.not_in(("completed", "withdrawn"))]
        if responsible is not None:
            if not responsible:
                return []
            where.append(dossiers.c.responsible.in_(list(responsible)))
        if due_before is not None:
            where.append(dossiers.c.due_at <= due_before)
        if due_after is not None:
            where.append(dossiers.c.due_at > due_after)
        if to_alert_at is not None:
            where.append(sa.or_(
                dossiers.c.alerted.is_(None),
                sa.and_(dossiers.c.alerted == "due_soon", dossiers.c.due_at <= to_alert_at),
            ))
        async with self.read() as conn:
            rows = await conn.execute(
                sa.select(dossiers.c.code).where(*where)
                .order_by(dossiers.c.due_at, dossiers.c.code).limit(limit)
            )
            return [r.code for r in rows]

    async def dossier_rows(self, codes: Sequence[str]) -> list[DossierRow]:
        async with self.read() as conn:
            found = [await dossier_rows.row(conn, code) for code in codes]
        return [r for r in found if r is not None]

    async def dossier(self, code: str) -> DossierRow:
        async with self.read() as conn:
            found = await dossier_rows.row(conn, code)
        if found is None:
            raise NotFound(f"no dossier {code}")
        return found

    # -- documents ----------------------------------------------------------------------------
    async def versions(self, sender: str, key: str) -> list[Version]:
        """Every message of a document (its versions, its recalls, what replaced it), oldest
        first."""
        async with self.read() as conn:
            return await _versions(conn, sender, key)

    async def document_keys(self, message_id: str) -> list[tuple[str, str]]:
        """The (sender, key) of the documents a message belongs to (``self`` first)."""
        async with self.read() as conn:
            rows = (await conn.execute(
                sa.select(document_links.c.sender, document_links.c.document_key,
                          document_links.c.relation)
                .where(document_links.c.message_id == message_id)
            )).all()
        ordered = sorted(rows, key=lambda r: r.relation != "self")
        return [(r.sender, r.document_key) for r in ordered]

    async def document_recipients(self, sender: str, key: str) -> set[str]:
        """Everyone a version of the document went to (recalls and updates go to them)."""
        async with self.read() as conn:
            rows = await conn.execute(
                sa.select(recipients.c.agency).distinct()
                .join(document_links, document_links.c.message_id == recipients.c.message_id)
                .where(document_links.c.sender == sender, document_links.c.document_key == key,
                       document_links.c.relation == "self")
            )
            return {r.agency for r in rows}

    async def open_change(self, about: str, agency: str) -> str | None:
        """The latest recall or update of the document of ``about`` (a document message, or a
        recall request, status 13, about one of its versions) that ``agency`` received and has
        not answered yet."""
        async with self.read() as conn:
            keys = (await conn.execute(
                sa.select(document_links.c.sender, document_links.c.document_key)
                .where(document_links.c.message_id == about, document_links.c.relation == "self")
            )).all()
            if not keys:
                return None
            sender, key = keys[0]
            version_ids = sa.select(document_links.c.message_id).where(
                document_links.c.sender == sender, document_links.c.document_key == key,
                document_links.c.relation == "self",
            )
            is_change = sa.or_(
                sa.and_(messages.c.id.in_(version_ids),
                        messages.c.operation.in_(("recall", "update"))),
                sa.and_(messages.c.about.in_(version_ids), messages.c.status_code == "13"),
            )
            row = (await conn.execute(
                sa.select(messages.c.id)
                .join(recipients, recipients.c.message_id == messages.c.id)
                .where(is_change, recipients.c.agency == agency, recipients.c.answer.is_(None))
                .order_by(messages.c.accepted_at.desc(), messages.c.id.desc())
                .limit(1)
            )).first()
            return None if row is None else str(row.id)

    # -- queries ------------------------------------------------------------------------------
    async def message(self, message_id: str) -> MessageRow:
        async with self.read() as conn:
            row = (
                await conn.execute(sa.select(messages).where(messages.c.id == message_id))
            ).first()
            if row is None:
                raise NotFound(f"no message {message_id}")
            recips = (
                await conn.execute(
                    sa.select(recipients)
                    .where(recipients.c.message_id == message_id)
                    .order_by(recipients.c.agency)
                )
            ).all()
        return MessageRow(
            id=row.id, kind=row.kind, sender=row.sender, about=row.about,
            accepted_at=row.accepted_at, envelope=row.envelope.encode(),
            recipients=tuple(
                RecipientRow(r.agency, r.state, r.addressed_as, r.attempts, r.delivered_at,
                             r.read_at, r.failed_at, r.last_error, r.status_code, r.status_at,
                             r.answer, r.answered_at, r.answer_comment)
                for r in recips
            ),
            operation=row.operation, status_code=row.status_code,
        )

    async def events(self, message_id: str) -> list[dict[str, Any]]:
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(audit_events)
                    .where(audit_events.c.message_id == message_id)
                    .order_by(audit_events.c.id)
                )
            ).all()
        return [
            {"at": r.at, "event": r.event, "agency": r.agency, "actor": r.actor,
             "detail": orjson.loads(r.detail) if r.detail else None}
            for r in rows
        ]

    async def verify_audit(self, batch: int = 5000) -> tuple[int, Break | None]:
        """Walk the whole hash chain in id order; (events checked, first break or None).
        The head row must name the last event, so deleting the newest events shows too."""
        checked, after, previous = 0, 0, GENESIS
        async with self.read() as conn:
            while True:
                rows = (
                    await conn.execute(
                        sa.select(audit_events)
                        .where(audit_events.c.id > after)
                        .order_by(audit_events.c.id)
                        .limit(batch)
                    )
                ).all()
                if not rows:
                    break
                chunk = [
                    AuditEvent(r.id, r.at, r.event, r.message_id, r.agency, r.actor, r.detail,
                               r.prev_hash or "", r.hash or "")
                    for r in rows
                ]
                count, broken = verify(chunk, start=previous)
                checked += count
                if broken is not None:
                    return checked, broken
                previous, after = chunk[-1].hash, chunk[-1].id
            head = (await conn.execute(sa.select(audit_head))).one()
        if head.last_hash != previous:
            return checked, Break(
                head.last_id, "?", f"events after {after} were deleted (the head names "
                                   f"event {head.last_id})"
            )
        return checked, None

    async def record_upload(self, agency: str, sha256: str, size: int) -> None:
        """``agency`` uploaded this file: it may name it in a message (again, if it had)."""
        now = utcnow()
        async with self.write() as conn:
            await conn.execute(_insert_ignore(conn, uploads).values(
                agency=agency, sha256=sha256, size=size, uploaded_at=now))
            await conn.execute(uploads.update().where(
                uploads.c.agency == agency, uploads.c.sha256 == sha256).values(uploaded_at=now))

    async def uploads_of(self, agency: str, digests: Sequence[str], since: datetime
                         ) -> dict[str, int]:
        """Of ``digests``, those ``agency`` uploaded at ``since`` or later, with their size."""
        if not digests:
            return {}
        async with self.read() as conn:
            rows = await conn.execute(
                sa.select(uploads.c.sha256, uploads.c.size).where(
                    uploads.c.agency == agency, uploads.c.sha256.in_(list(digests)),
                    uploads.c.uploaded_at >= since))
            return {r.sha256: int(r.size) for r in rows}

    async def forget_uploads(self, before: datetime) -> int:
        """Drop the uploads older than ``before`` (no longer nameable); how many."""
        async with self.write() as conn:
            result = await conn.execute(uploads.delete().where(uploads.c.uploaded_at < before))
        return int(result.rowcount or 0)

    async def referenced_blobs(self, batch: int = 1000, *,
                               uploads_since: datetime | None = None) -> set[str]:
        """The SHA-256 of every file a stored message names (its attachments'), read a page
        at a time in id order, and of the uploads since ``uploads_since`` (still nameable):
        what the blob collector must keep."""
        found: set[str] = set()
        after: str | None = None
        async with self.read() as conn:
            if uploads_since is not None:
                found.update((await conn.execute(sa.select(uploads.c.sha256).where(
                    uploads.c.uploaded_at >= uploads_since))).scalars())
            while True:
                query = (sa.select(messages.c.id, messages.c.envelope)
                         .where(messages.c.envelope.contains('"sha256":"'))
                         .order_by(messages.c.id).limit(batch))
                if after is not None:
                    query = query.where(messages.c.id > after)
                rows = (await conn.execute(query)).all()
                for row in rows:
                    found.update(_CLAIM.findall(row.envelope))
                if len(rows) < batch:
                    return found
                after = rows[-1].id

    async def counts(self) -> dict[str, int]:
        """Recipient rows per delivery state (for the demo summary and the benchmark)."""
        async with self.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(recipients.c.state, sa.func.count()).group_by(recipients.c.state)
                )
            ).all()
        return {str(state): int(n) for state, n in rows}


#: An attachment's digest in a message's canonical JSON (orjson: no spaces).
_CLAIM = re.compile(r'"sha256":"([0-9a-f]{64})"')


async def _take_open(
    conn: AsyncConnection, where: DeadLetterFilter, new_state: str, *, by: str, comment: str,
    now: datetime,
) -> list[Any]:
    """Close the open dead letters that match: (re)read under the write lock, then update."""
    where = dataclasses.replace(where, state=DeadState.DEAD)
    rows = (
        await conn.execute(sa.select(dead_letters).where(*where.clauses())
                           .order_by(dead_letters.c.id))
    ).all()
    if rows:
        await conn.execute(
            dead_letters.update()
            .where(dead_letters.c.id.in_([r.id for r in rows]))
            .values(state=new_state, resolved_at=now, resolved_by=by, comment=comment)
        )
    return list(rows)


async def _find_idempotent(
    conn: AsyncConnection, sender: str, key: str
) -> tuple[Accepted, str] | None:
    return await _find_by(conn, messages.c.sender == sender, messages.c.idempotency_key == key)


async def _find_by(conn: AsyncConnection, *where: Any) -> tuple[Accepted, str] | None:
    """The first answer (as a replay) for the message that matches, with its request hash."""
    row = (
        await conn.execute(
            sa.select(messages.c.id, messages.c.accepted_at, messages.c.request_hash).where(
                *where
            )
        )
    ).first()
    if row is None:
        return None
    agencies = (
        await conn.execute(
            sa.select(recipients.c.agency)
            .where(recipients.c.message_id == row.id)
            .order_by(recipients.c.agency)
        )
    ).scalars().all()
    return Accepted(row.id, tuple(agencies), row.accepted_at, created=False), row.request_hash


@dataclass(frozen=True, slots=True)
class _Event:
    event: str
    message_id: str | None = None
    agency: str | None = None
    actor: str | None = None
    detail: dict[str, Any] | None = None


async def _versions(conn: AsyncConnection, sender: str, key: str) -> list[Version]:
    rows = (await conn.execute(
        sa.select(document_links.c.message_id, document_links.c.relation,
                  document_links.c.accepted_at, messages.c.operation, messages.c.sender)
        .join(messages, messages.c.id == document_links.c.message_id)
        .where(document_links.c.sender == sender, document_links.c.document_key == key)
        .order_by(document_links.c.accepted_at, document_links.c.message_id)
    )).all()
    return [Version(r.message_id, r.sender, r.operation, r.relation, r.accepted_at)
            for r in rows]


async def _apply(conn: AsyncConnection, effect: StatusEffect, now: datetime) -> bool:
    """Apply a status to the recipient row it reports from, atomically and only forwards;
    False when it changes nothing (a repeat, a late arrival, a second answer)."""
    where = [recipients.c.message_id == effect.message_id, recipients.c.agency == effect.agency]
    if effect.rank is not None:
        values: dict[str, Any] = {"status_code": effect.code, "status_rank": effect.rank,
                                  "status_at": now}
        where.append(sa.or_(recipients.c.status_rank.is_(None),
                            recipients.c.status_rank < effect.rank))
    else:
        values = {"answer": effect.code, "answered_at": now, "answer_comment": effect.comment}
        where.append(recipients.c.answer.is_(None))
    result = await conn.execute(recipients.update().where(*where).values(**values))
    return bool(result.rowcount)


async def _audit(
    conn: AsyncConnection,
    event_name: str,
    *,
    message_id: str | None = None,
    agency: str | None = None,
    actor: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    await _audit_many(conn, [_Event(event_name, message_id, agency, actor, detail)])


async def _audit_many(conn: AsyncConnection, events: Sequence[_Event]) -> None:
    """Append events to the hash chain, in the caller's transaction (so an event exists exactly
    when what it records happened; if it cannot be written, nothing is).

    The head row is locked first: on PostgreSQL chain writers queue on it until commit; SQLite
    serialises writers anyway. Ids are taken from the head under that lock, not from a
    sequence, so they follow the chain order."""
    head = (
        await conn.execute(sa.select(audit_head).where(audit_head.c.id == 1).with_for_update())
    ).one()
    previous, next_id = head.last_hash, head.last_id + 1
    rows: list[dict[str, Any]] = []
    for ev in events:
        at = utcnow()
        text = detail_text(ev.detail)
        digest = event_hash(
            previous, id=next_id, at=at, event=ev.event, message_id=ev.message_id,
            agency=ev.agency, actor=ev.actor, detail=text,
        )
        rows.append({
            "id": next_id, "at": at, "event": ev.event, "message_id": ev.message_id,
            "agency": ev.agency, "actor": ev.actor, "detail": text, "prev_hash": previous,
            "hash": digest,
        })
        previous, next_id = digest, next_id + 1
    await conn.execute(audit_events.insert(), rows)
    await conn.execute(
        audit_head.update()
        .where(audit_head.c.id == 1)
        .values(last_id=next_id - 1, last_hash=previous)
    )


def _engines(url: str) -> tuple[AsyncEngine, AsyncEngine]:
    if not url.startswith("sqlite"):
        # No pre-ping (a round trip per checkout, ~7% of CPU in the benchmark): a connection
        # that died is an error once, which the callers already retry; recycle the old ones.
        engine = create_async_engine(url, pool_size=20, max_overflow=20, pool_recycle=1800)
        return engine, engine
    # SQLite: writers take the write lock when they begin (BEGIN IMMEDIATE), so two writers
    # queue on busy_timeout instead of deadlocking on a read-to-write upgrade; readers use a
    # second engine with plain deferred transactions, which WAL lets run beside the writer.
    # One write connection: writers of this process queue on the pool, in order, instead of
    # on SQLite's busy handler, which sleeps in growing steps (seen: p50 400 ms under load).
    engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=60)
    read_engine = create_async_engine(url, pool_size=8, max_overflow=8)
    _sqlite_pragmas(engine, immediate=True)
    _sqlite_pragmas(read_engine, immediate=False)
    return engine, read_engine


def _sqlite_pragmas(engine: AsyncEngine, *, immediate: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below decide
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # a 202 promises the row survives a crash
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
