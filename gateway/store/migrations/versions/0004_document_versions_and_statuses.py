"""document versions, per-recipient processing status and change answers

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 06:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("operation", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("status_code", sa.String(length=2), nullable=True))
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status_code", sa.String(length=2), nullable=True))
        batch_op.add_column(sa.Column("status_rank", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("status_at", gateway.store.tables.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("answer", sa.String(length=2), nullable=True))
        batch_op.add_column(
            sa.Column("answered_at", gateway.store.tables.UTCDateTime(timezone=True),
                      nullable=True)
        )
        batch_op.add_column(sa.Column("answer_comment", sa.Text(), nullable=True))
    op.create_table(
        "document_links",
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("sender", sa.String(length=13), nullable=False),
        sa.Column("document_key", sa.String(length=255), nullable=False),
        sa.Column("relation", sa.String(length=8), nullable=False),
        sa.Column("accepted_at", gateway.store.tables.UTCDateTime(timezone=True),
                  nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_document_links_message_id_messages")
        ),
        sa.PrimaryKeyConstraint(
            "message_id", "sender", "document_key", name=op.f("pk_document_links")
        ),
    )
    with op.batch_alter_table("document_links", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_document_links_sender_document_key_accepted_at"),
            ["sender", "document_key", "accepted_at"],
            unique=False,
        )
    # Messages accepted before this revision: each document is its own first version.
    op.execute(
        "UPDATE messages SET operation = 'new' WHERE kind = 'document' AND operation IS NULL"
    )
    op.execute(
        "INSERT INTO document_links (message_id, sender, document_key, relation, accepted_at) "
        "SELECT id, sender, id, 'self', accepted_at FROM messages WHERE kind = 'document'"
    )


def downgrade() -> None:
    with op.batch_alter_table("document_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_document_links_sender_document_key_accepted_at"))
    op.drop_table("document_links")
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        for name in ("answer_comment", "answered_at", "answer", "status_at", "status_rank",
                     "status_code"):
            batch_op.drop_column(name)
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("status_code")
        batch_op.drop_column("operation")
