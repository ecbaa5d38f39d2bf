"""dossier events, the dossiers' folded state and who held them

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.store.tables import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dossier_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("dossier_code", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=13), nullable=False),
        sa.Column("to_agency", sa.String(length=13), nullable=True),
        sa.Column("at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("about", sa.String(length=36), nullable=True),
        sa.Column("due_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("appointment_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("received_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("alert", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dossier_events")),
        sa.UniqueConstraint("dossier_code", "seq",
                            name=op.f("uq_dossier_events_dossier_code_seq")),
    )
    op.create_index(op.f("ix_dossier_events_at"), "dossier_events", ["at"])
    op.create_table(
        "dossiers",
        sa.Column("code", sa.String(length=40), nullable=False),
        sa.Column("receiving_agency", sa.String(length=13), nullable=False),
        sa.Column("procedure_code", sa.String(length=40), nullable=False),
        sa.Column("received_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("appointment_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("new_appointment_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("holder", sa.String(length=13), nullable=True),
        sa.Column("responsible", sa.String(length=13), nullable=True),
        sa.Column("pending_message", sa.String(length=36), nullable=True),
        sa.Column("due_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("handovers", sa.Integer(), nullable=False),
        sa.Column("returns", sa.Integer(), nullable=False),
        sa.Column("apologies", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_dossiers")),
    )
    op.create_index(op.f("ix_dossiers_phase_due_at"), "dossiers", ["phase", "due_at"])
    op.create_index(op.f("ix_dossiers_receiving_agency"), "dossiers", ["receiving_agency"])
    op.create_index(op.f("ix_dossiers_responsible"), "dossiers", ["responsible"])
    op.create_table(
        "dossier_holds",
        sa.Column("dossier_code", sa.String(length=40), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("agency", sa.String(length=13), nullable=False),
        sa.Column("since", UTCDateTime(timezone=True), nullable=False),
        sa.Column("until", UTCDateTime(timezone=True), nullable=True),
        sa.Column("due_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("dossier_code", "n", name=op.f("pk_dossier_holds")),
    )
    op.create_index(op.f("ix_dossier_holds_agency_since"), "dossier_holds", ["agency", "since"])


def downgrade() -> None:
    op.drop_table("dossier_holds")
    op.drop_table("dossiers")
    op.drop_table("dossier_events")
