"""audit hash chain

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 04:45:00
"""

from __future__ import annotations

from datetime import UTC

import sqlalchemy as sa
from alembic import op

import gateway.store.tables
from gateway.audit import GENESIS, event_hash

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "last_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    # Chain the events written before this migration, in their order.
    bind = op.get_bind()
    events = sa.table(
        "audit_events",
        sa.column("id"), sa.column("at", gateway.store.tables.UTCDateTime()), sa.column("event"),
        sa.column("message_id"), sa.column("agency"), sa.column("actor"), sa.column("detail"),
        sa.column("prev_hash"), sa.column("hash"),
    )
    previous, last_id = GENESIS, 0
    for row in bind.execute(sa.select(events).order_by(events.c.id)).all():
        at = row.at if row.at.tzinfo else row.at.replace(tzinfo=UTC)
        digest = event_hash(
            previous, id=row.id, at=at, event=row.event, message_id=row.message_id,
            agency=row.agency, actor=row.actor, detail=row.detail,
        )
        bind.execute(
            events.update().where(events.c.id == row.id).values(prev_hash=previous, hash=digest)
        )
        previous, last_id = digest, row.id
    op.bulk_insert(head, [{"id": 1, "last_id": last_id, "last_hash": previous}])


def downgrade() -> None:
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
