"""The outbox relay: what the store accepted reaches the broker, even across a crash.

The API publishes a message's outbox rows right after the commit (the fast path); the relay's
loop publishes every row still unpublished ``relay_grace`` seconds after it was written (a
process killed between commit and confirm, a broker that was away). A row is marked published
only after the broker confirmed it; publishing one twice is harmless, receivers deduplicate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

import structlog

from gateway.broker import Broker, Outgoing
from gateway.delivery import first_delivery_headers
from gateway.errors import GatewayError
from gateway.settings import Settings
from gateway.store.store import OutboxRow, Store, utcnow

log = structlog.get_logger(__name__)


class OutboxRelay:
    def __init__(self, store: Store, broker: Broker, settings: Settings) -> None:
        self.store = store
        self.broker = broker
        self.settings = settings
        self.topology = broker.topology

    def outgoing(self, row: OutboxRow) -> Outgoing:
        return Outgoing(
            exchange=self.topology.delivery_exchange,
            routing_key=self.topology.routing_key(row.recipient),
            body=row.envelope,
            message_id=row.message_id,
            headers=first_delivery_headers(row.recipient, row.sender),
        )

    async def publish(self, rows: Sequence[OutboxRow]) -> int:
        """Publish rows concurrently; mark the confirmed ones. Returns how many were confirmed."""
        if not rows:
            return 0
        results = await self.broker.publish_many([self.outgoing(row) for row in rows])
        confirmed = [row for row, err in zip(rows, results, strict=True) if err is None]
        failed = [row for row, err in zip(rows, results, strict=True) if err is not None]
        if confirmed:
            await self.store.mark_published(confirmed)
        if failed:
            await self.store.note_publish_failure(failed)
            log.warning(
                "relay.publish_failed", count=len(failed),
                message_id=failed[0].message_id, error=str(results[rows.index(failed[0])]),
            )
        return len(confirmed)

    async def sweep(self) -> int:
        """Publish every row older than the grace period (one pass)."""
        rows = await self.store.outbox_rows(
            older_than=utcnow() - timedelta(seconds=self.settings.relay_grace)
        )
        if not rows:
            return 0
        count = await self.publish(rows)
        log.info("relay.swept", published=count, pending=len(rows))
        return count

    async def run(self) -> None:
        """Sweep forever (cancel to stop)."""
        while True:
            try:
                await self.sweep()
            except GatewayError as exc:
                log.warning("relay.sweep_failed", error=exc.detail)
            await asyncio.sleep(self.settings.relay_interval)
