"""Alembic environment: runs on the connection the gateway hands over (``run_sync``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from gateway.store.tables import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the gateway's own runner is supported
    raise RuntimeError("run migrations through `lienthong db upgrade` (gateway.store.migrate)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
