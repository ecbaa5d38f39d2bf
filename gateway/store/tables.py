"""The store's tables (SQLAlchemy Core). Alembic migrations in ``migrations/`` create them.

Timestamps are UTC and timezone-aware on both SQLite and PostgreSQL (:class:`UTCDateTime`).
Agency codes are the 13-character national identifiers; message ids are UUID strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy import text as sa_text
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL wants a 64-bit identity.
SerialId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, whatever the dialect keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


AgencyCode = String(13)
MessageId = String(36)

messages = Table(
    "messages",
    metadata,
    Column("id", MessageId, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("sender", AgencyCode, nullable=False),
    Column("about", MessageId, nullable=True),  # a status message: the message it reports on
    Column("created_at", UTCDateTime(), nullable=False),
    Column("accepted_at", UTCDateTime(), nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    Column("request_hash", String(64), nullable=False),
    Column("envelope", Text, nullable=False),  # canonical JSON, as accepted
    # documents: new | recall | update | replace (edXML BussinessDocType); statuses: None
    Column("operation", String(8), nullable=True),
    Column("status_code", String(2), nullable=True),  # statuses: their code (01..16)
    UniqueConstraint("sender", "idempotency_key"),
    Index(None, "sender", "accepted_at"),
)

recipients = Table(
    "recipients",
    metadata,
    Column("message_id", MessageId, ForeignKey("messages.id"), primary_key=True),
    Column("agency", AgencyCode, primary_key=True),
    Column("addressed_as", AgencyCode, nullable=True),  # set when redirected to a successor
    Column("state", String(16), nullable=False),  # pending | delivered | read | failed
    Column("attempts", Integer, nullable=False, default=0),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Column("read_at", UTCDateTime(), nullable=True),
    Column("failed_at", UTCDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The furthest processing status (01..06) this recipient reported about the message: a
    # conditional update by rank, so a late or repeated status never moves it backwards.
    Column("status_code", String(2), nullable=True),
    Column("status_rank", Integer, nullable=True),
    Column("status_at", UTCDateTime(), nullable=True),
    # For a recall or update (a change request): the recipient's answer, 15 agreed or 16
    # refused; the first answer is final.
    Column("answer", String(2), nullable=True),
    Column("answered_at", UTCDateTime(), nullable=True),
    Column("answer_comment", Text, nullable=True),
    Index(None, "agency", "state"),
)

#: The versions of a document (văn bản): each document message is linked to its document key
#: (the edXML DocumentId, or the first message's id) with relation ``self``, and a replacement
#: also to each document it replaces (``replaces``). Keys are per sender.
document_links = Table(
    "document_links",
    metadata,
    Column("message_id", MessageId, ForeignKey("messages.id"), primary_key=True),
    Column("sender", AgencyCode, primary_key=True),
    Column("document_key", String(255), primary_key=True),
    Column("relation", String(8), nullable=False),  # self | replaces
    Column("accepted_at", UTCDateTime(), nullable=False),
    Index(None, "sender", "document_key", "accepted_at"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", SerialId, primary_key=True, autoincrement=True),
    Column("message_id", MessageId, ForeignKey("messages.id"), nullable=False),
    Column("recipient", AgencyCode, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("published_at", UTCDateTime(), nullable=True),
    Column("publish_attempts", Integer, nullable=False, default=0),
    Index(None, "published_at", "created_at"),
)

inbox = Table(
    "inbox",
    metadata,
    Column("seq", SerialId, primary_key=True, autoincrement=True),
    Column("agency", AgencyCode, nullable=False),
    Column("message_id", MessageId, ForeignKey("messages.id"), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("acked_at", UTCDateTime(), nullable=True),
    # The receiver-side deduplication: a message enters an agency's inbox once, ever.
    UniqueConstraint("agency", "message_id"),
)

credentials = Table(
    "credentials",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("role", String(16), nullable=False, server_default="agency"),  # agency | operator
    Column("agency", AgencyCode, nullable=True, index=True),  # None for an operator
    Column("token_hash", String(64), nullable=False, unique=True),  # sha256 hex; never the token
    Column("label", String(255), nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime(), nullable=True),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", SerialId, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("event", String(32), nullable=False),
    Column("message_id", MessageId, nullable=True, index=True),
    Column("agency", AgencyCode, nullable=True),
    Column("actor", String(64), nullable=True),
    Column("detail", Text, nullable=True),  # JSON
    # The hash chain (gateway.audit): nullable only for rows written before migration 0002.
    Column("prev_hash", String(64), nullable=True),
    Column("hash", String(64), nullable=True),
)

#: One row, the chain's head: appending locks it, so the chain has one writer at a time on
#: every database (SQLite's write lock; PostgreSQL's row lock).
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("last_id", SerialId, nullable=False),
    Column("last_hash", String(64), nullable=False),
)

#: Dead letters at rest: the keeper moves each message that reaches the dead-letter queue here,
#: with why it died; operators replay or discard it. A message may die, be replayed and die
#: again: one row each time, at most one of them ``dead`` at once.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", SerialId, primary_key=True, autoincrement=True),
    Column("message_id", MessageId, nullable=False),
    Column("recipient", AgencyCode, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("first_attempt_at", UTCDateTime(), nullable=True),
    Column("last_attempt_at", UTCDateTime(), nullable=True),
    Column("dead_at", UTCDateTime(), nullable=False),
    Column("state", String(16), nullable=False),  # dead | replayed | discarded
    Column("resolved_at", UTCDateTime(), nullable=True),
    Column("resolved_by", String(64), nullable=True),
    Column("comment", Text, nullable=True),
    Index(None, "state", "recipient", "dead_at"),
    Index(
        "uq_dead_letters_open",
        "message_id",
        "recipient",
        unique=True,
        sqlite_where=sa_text("state = 'dead'"),
        postgresql_where=sa_text("state = 'dead'"),
    ),
)


#: The raw history of each dossier (hồ sơ): one row per step, numbered from 1. The number is
#: unique, so two steps decided on the same state cannot both be written (the second retries
#: on the new state). Statistics are recomputed from these rows by ``lienthong stats verify``.
dossier_events = Table(
    "dossier_events",
    metadata,
    Column("id", SerialId, primary_key=True, autoincrement=True),
    Column("dossier_code", String(40), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("step", String(16), nullable=False),
    Column("actor", AgencyCode, nullable=False),
    Column("to_agency", AgencyCode, nullable=True),
    Column("at", UTCDateTime(), nullable=False),
    Column("message_id", MessageId, nullable=False),
    Column("about", MessageId, nullable=True),
    Column("due_at", UTCDateTime(), nullable=True),
    Column("appointment_at", UTCDateTime(), nullable=True),
    Column("received_at", UTCDateTime(), nullable=True),
    Column("reason", Text, nullable=True),
    Column("alert", String(16), nullable=True),
    UniqueConstraint("dossier_code", "seq"),
    Index(None, "at"),
)

#: The folded state of each dossier, written with each step (the API, the scheduler and the
#: statistics read it).
dossiers = Table(
    "dossiers",
    metadata,
    Column("code", String(40), primary_key=True),
    Column("receiving_agency", AgencyCode, nullable=False),
    Column("procedure_code", String(40), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("appointment_at", UTCDateTime(), nullable=False),
    Column("new_appointment_at", UTCDateTime(), nullable=True),
    Column("phase", String(16), nullable=False),
    Column("holder", AgencyCode, nullable=True),
    Column("responsible", AgencyCode, nullable=True),
    Column("pending_message", MessageId, nullable=True),
    Column("due_at", UTCDateTime(), nullable=True),
    Column("completed_at", UTCDateTime(), nullable=True),
    Column("handovers", Integer, nullable=False),
    Column("returns", Integer, nullable=False),
    Column("apologies", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # The alert level (due_soon, overdue) already raised for the running step, so that the
    # scheduler's query skips what it has done instead of folding it again every pass.
    Column("alerted", String(16), nullable=True),
    Index(None, "phase", "due_at"),
    Index(None, "receiving_agency"),
    Index(None, "responsible"),
)

#: Who held each dossier and when (one row per stretch), rewritten with each step.
dossier_holds = Table(
    "dossier_holds",
    metadata,
    Column("dossier_code", String(40), primary_key=True),
    Column("n", Integer, primary_key=True),
    Column("agency", AgencyCode, nullable=False),
    Column("since", UTCDateTime(), nullable=False),
    Column("until", UTCDateTime(), nullable=True),
    Column("due_at", UTCDateTime(), nullable=True),
    Column("accepted", Integer, nullable=False),  # 0: a hand-over not yet answered
    Index(None, "agency", "since"),
)

#: Files an agency uploaded to name in a JSON message (``POST /api/v1/attachments``): the
#: only digests, besides those of files the same request brought, a message may claim.
uploads = Table(
    "uploads",
    metadata,
    Column("agency", AgencyCode, primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("uploaded_at", UTCDateTime(), nullable=False),
    Index(None, "uploaded_at"),
)
