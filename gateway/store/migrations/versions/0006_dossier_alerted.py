"""dossiers: the alert level already raised for the running step

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 06:00:00

The scheduler looks for dossiers to alert in the projection. Without this column it read the
soonest-due open dossiers and skipped the ones already alerted after folding them, so once more
than a page of dossiers was overdue and alerted, newer ones were never reached.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_RANK = {"due_soon": 1, "overdue": 2}


def upgrade() -> None:
    op.add_column("dossiers", sa.Column("alerted", sa.String(length=16), nullable=True))
    # Backfill open dossiers with a running step: that step began with the latest hand-over
    # (a return stops the clock and clears due_at), so its alerts are the ones about it.
    conn = op.get_bind()
    events = sa.table("dossier_events", sa.column("dossier_code"), sa.column("seq"),
                      sa.column("step"), sa.column("message_id"), sa.column("about"),
                      sa.column("alert"))
    dossiers = sa.table("dossiers", sa.column("code"), sa.column("phase"),
                        sa.column("due_at"), sa.column("alerted"))
    open_codes = [r.code for r in conn.execute(
        sa.select(dossiers.c.code).where(dossiers.c.phase != "completed",
                                         dossiers.c.due_at.is_not(None)))]
    for code in open_codes:
        rows = conn.execute(
            sa.select(events.c.step, events.c.message_id, events.c.about, events.c.alert)
            .where(events.c.dossier_code == code).order_by(events.c.seq)).all()
        key = next((r.message_id for r in reversed(rows) if r.step == "handover"), None)
        levels = [r.alert for r in rows if r.step == "alert" and r.about == key and key]
        if levels:
            top = max(levels, key=lambda level: _RANK.get(level or "", 0))
            conn.execute(dossiers.update().where(dossiers.c.code == code).values(alerted=top))


def downgrade() -> None:
    with op.batch_alter_table("dossiers") as batch:  # SQLite drops a column by copying
        batch.drop_column("alerted")
