"""The audit trail's hash chain (pure): each event's hash covers its content and the previous
event's hash, so a changed, deleted or reordered row breaks the chain at that row.

    hash_n = sha256(hash_{n-1} || canonical JSON of event n, its id included)

The store appends events under a lock (one chain, one writer at a time) and
:func:`verify` walks the chain and names the first event that does not hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEvent:
    id: int
    at: datetime
    event: str
    message_id: str | None
    agency: str | None
    actor: str | None
    detail: str | None  # canonical JSON text, as stored
    prev_hash: str
    hash: str


def event_hash(
    prev_hash: str, *, id: int, at: datetime, event: str, message_id: str | None,
    agency: str | None, actor: str | None, detail: str | None,
) -> str:
    content = orjson.dumps(
        [id, at.astimezone(UTC).isoformat(timespec="microseconds"), event, message_id, agency,
         actor, detail]
    )
    return hashlib.sha256(prev_hash.encode() + content).hexdigest()


@dataclass(frozen=True, slots=True)
class Break:
    """Where the chain stops holding, and why."""

    event_id: int
    event: str
    reason: str


def verify(events: Iterable[AuditEvent], start: str = GENESIS) -> tuple[int, Break | None]:
    """Check events in id order, the first following ``start``: (how many were checked, the
    first break or None)."""
    previous = start
    count = 0
    for ev in events:
        count += 1
        if ev.prev_hash != previous:
            return count, Break(ev.id, ev.event, "does not follow the event before it "
                                                 "(an event was deleted, inserted or reordered)")
        expected = event_hash(
            previous, id=ev.id, at=ev.at, event=ev.event, message_id=ev.message_id,
            agency=ev.agency, actor=ev.actor, detail=ev.detail,
        )
        if ev.hash != expected:
            return count, Break(ev.id, ev.event, "its content was changed after it was written")
        previous = ev.hash
    return count, None


def detail_text(detail: dict[str, Any] | None) -> str | None:
    return orjson.dumps(detail, option=orjson.OPT_SORT_KEYS).decode() if detail else None
