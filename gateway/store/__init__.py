"""The store (SQLAlchemy 2 async Core, SQLite or PostgreSQL, Alembic migrations)."""

from gateway.store.store import Accepted, InboxEntry, MessageRow, RecipientRow, State, Store

__all__ = ["Accepted", "InboxEntry", "MessageRow", "RecipientRow", "State", "Store"]
