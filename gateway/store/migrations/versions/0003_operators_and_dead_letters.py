"""operators and dead letters

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 04:38:52
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("recipient", sa.String(length=13), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "first_attempt_at", gateway.store.tables.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column(
            "last_attempt_at", gateway.store.tables.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("dead_at", gateway.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("resolved_at", gateway.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=64), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dead_letters_state_recipient_dead_at"),
            ["state", "recipient", "dead_at"],
            unique=False,
        )
        batch_op.create_index(
            "uq_dead_letters_open",
            ["message_id", "recipient"],
            unique=True,
            sqlite_where=sa.text("state = 'dead'"),
            postgresql_where=sa.text("state = 'dead'"),
        )

    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("role", sa.String(length=16), server_default="agency", nullable=False)
        )
        batch_op.alter_column("agency", existing_type=sa.VARCHAR(length=13), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.alter_column("agency", existing_type=sa.VARCHAR(length=13), nullable=False)
        batch_op.drop_column("role")

    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_dead_letters_open",
            sqlite_where=sa.text("state = 'dead'"),
            postgresql_where=sa.text("state = 'dead'"),
        )
        batch_op.drop_index(batch_op.f("ix_dead_letters_state_recipient_dead_at"))

    op.drop_table("dead_letters")
