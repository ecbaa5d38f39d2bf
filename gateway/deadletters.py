"""The dead-letter keeper: moves what reaches the dead-letter queue into the store.

Two roads lead to ``ns.dead``: the delivery worker gives up (a permanent failure, attempts or
age exhausted) and publishes there with ``x-lienthong-*`` headers saying why; or RabbitMQ
dead-letters a message itself (the quorum ``delivery-limit`` caught a poison message), with
``x-death`` saying why. The keeper records each one once (``Store.record_dead_letter``), so
that the sender sees ``failed`` with the reason and operators can list, replay or discard it,
and only then acks it. While the keeper is down, dead letters wait in the queue.
"""

from __future__ import annotations

import contextlib
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from gateway.broker import Broker, close_quietly
from gateway.delivery import (
    H_ATTEMPT,
    H_ERROR,
    H_FIRST_ATTEMPT,
    H_LAST_ATTEMPT,
    H_REASON,
    H_RECIPIENT,
    header_instant,
    header_text,
)
from gateway.errors import GatewayError
from gateway.store.store import Store

log = structlog.get_logger(__name__)

def _attempts(value: Any) -> int:
    """Our attempt header: an int as we publish it, text if someone re-published it."""
    if isinstance(value, int):
        return value
    text = header_text(value)
    return int(text) if text and text.isdigit() else 0


def why(headers: dict[str, Any]) -> tuple[str, str | None]:
    """(reason, error) of a dead letter, from our headers or else from the broker's x-death."""
    reason = header_text(headers.get(H_REASON))
    if reason:
        return reason, header_text(headers.get(H_ERROR))
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        broker_reason = header_text(death.get("reason")) or "unknown"
        return broker_reason, f"dead-lettered by RabbitMQ from {header_text(death.get('queue'))}"
    return "unknown", None


class DeadLetterKeeper:
    def __init__(self, store: Store, broker: Broker, *, prefetch: int = 16) -> None:
        self.store = store
        self.broker = broker
        self.prefetch = prefetch
        self._consumer: tuple[AbstractQueue, str] | None = None
        self._channel_cm: contextlib.AbstractAsyncContextManager[Any] | None = None

    async def start(self) -> None:
        self._channel_cm = self.broker.consumer_channel(self.prefetch)
        channel = await self._channel_cm.__aenter__()
        # Passive declare, so that the robust channel re-consumes after a reconnect.
        queue = await channel.declare_queue(self.broker.topology.dead_queue, passive=True)
        self._consumer = (queue, await queue.consume(self.handle))

    async def stop(self) -> None:
        if self._consumer is not None:
            queue, tag = self._consumer
            if self.broker.connected:
                await close_quietly(queue.cancel(tag))
            self._consumer = None
        if self._channel_cm is not None:
            await self._channel_cm.__aexit__(None, None, None)
            self._channel_cm = None

    async def handle(self, message: AbstractIncomingMessage) -> None:
        headers = dict(message.headers or {})
        message_id = message.message_id or ""
        recipient = header_text(headers.get(H_RECIPIENT)) or ""
        reason, error = why(headers)
        bound = log.bind(message_id=message_id, recipient=recipient, reason=reason)
        try:
            fresh = await self.store.record_dead_letter(
                message_id=message_id, recipient=recipient, reason=reason, error=error,
                attempts=_attempts(headers.get(H_ATTEMPT)),
                first_attempt_at=header_instant(headers.get(H_FIRST_ATTEMPT)),
                last_attempt_at=header_instant(headers.get(H_LAST_ATTEMPT)),
            )
        except GatewayError as exc:  # the store is away: leave it in the DLQ for later
            bound.warning("dead_letter.deferred", error=exc.detail)
            await message.nack(requeue=True)
            return
        bound.error("dead_letter.kept", error=error, fresh=fresh)
        await message.ack()
