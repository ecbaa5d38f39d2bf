"""uploads: files an agency put in the blob store ahead of the JSON message that names them

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 06:20:00

A JSON client cannot carry a file above the inline limit in the message itself: it uploads
the file first (``POST /api/v1/attachments``) and names it by SHA-256. The row is what lets
that agency, and only it, name that digest in a message.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.store.tables import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("agency", sa.String(length=13), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("agency", "sha256", name=op.f("pk_uploads")),
    )
    op.create_index(op.f("ix_uploads_uploaded_at"), "uploads", ["uploaded_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_uploads_uploaded_at"), table_name="uploads")
    op.drop_table("uploads")
