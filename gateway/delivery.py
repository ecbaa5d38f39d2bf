"""Delivery workers: take a message off a shard queue and make it take effect, exactly once.

For each AMQP delivery (one message for one recipient):

1. the store says whether this recipient already has it (``delivered``/``read``/``failed``):
   then it is a redelivery or a duplicate publish, acked and counted, nothing else happens;
2. otherwise the message is pushed to the agency's endpoint (push mode) and/or recorded in its
   inbox (both modes) and the recipient becomes ``delivered``, in one transaction;
3. a transient failure goes to the retry tier for its attempt (a delay queue that dead-letters
   back to the shard), a permanent one to the dead-letter queue; the broker copy is acked only
   after the store or the next queue has it, so a crash anywhere means a redelivery, never a
   loss, and the inbox's unique key makes the redelivery harmless.

A push endpoint may see a repeat (a crash between its 2xx and our commit); it always carries the
same ``X-Lienthong-Message-Id``, so the endpoint can deduplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from gateway.broker import Broker, Outgoing
from gateway.directory import DeliveryMode, Directory
from gateway.errors import GatewayError, PermanentFailure, RetryLater
from gateway.settings import Settings
from gateway.store.store import State, Store

log = structlog.get_logger(__name__)

H_RECIPIENT = "x-lienthong-recipient"
H_ATTEMPT = "x-lienthong-attempt"  # our own count: x-death changed meaning in RabbitMQ 3.13
H_FIRST_ATTEMPT = "x-lienthong-first-attempt"
H_REASON = "x-lienthong-reason"
H_ERROR = "x-lienthong-error"
H_SENDER = "x-lienthong-sender"

_RETRYABLE_STATUS = {408, 425, 429}


def first_delivery_headers(recipient: str, sender: str) -> dict[str, Any]:
    return {H_RECIPIENT: recipient, H_SENDER: sender, H_ATTEMPT: 1}


async def push(
    session: aiohttp.ClientSession,
    endpoint: str,
    body: bytes,
    *,
    message_id: str,
    sender: str,
    attempt: int,
    timeout: float,
) -> None:
    """POST one envelope to an agency's endpoint; map the outcome onto the error tree."""
    headers = {
        "Content-Type": "application/json",
        "X-Lienthong-Message-Id": message_id,
        "X-Lienthong-Sender": sender,
        "X-Lienthong-Attempt": str(attempt),
        "Idempotency-Key": message_id,
    }
    try:
        async with session.post(
            endpoint, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            await response.read()
            status = response.status
            retry_after = response.headers.get("Retry-After")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise RetryLater(f"push failed: {exc.__class__.__name__}: {exc}") from exc
    if 200 <= status < 300:
        return
    if status in _RETRYABLE_STATUS or status >= 500:
        delay = float(retry_after) if retry_after and retry_after.isdigit() else None
        raise RetryLater(f"push answered HTTP {status}", delay=delay)
    raise PermanentFailure(f"push answered HTTP {status}")


class DeliveryWorker:
    """Consumes every shard queue on one channel; :meth:`stop` drains what is in flight."""

    def __init__(
        self,
        *,
        store: Store,
        broker: Broker,
        directory: Directory,
        settings: Settings,
        http: aiohttp.ClientSession,
    ) -> None:
        self.store = store
        self.broker = broker
        self.directory = directory
        self.settings = settings
        self.http = http
        self.topology = broker.topology
        self.duplicates_absorbed = 0
        self._inflight: set[asyncio.Task[None]] = set()
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._channel_cm: contextlib.AbstractAsyncContextManager[Any] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._channel_cm = self.broker.consumer_channel(self.settings.prefetch)
        channel = await self._channel_cm.__aenter__()
        for shard in range(self.topology.shards):
            queue = await channel.get_queue(self.topology.shard_queue(shard), ensure=False)
            tag = await queue.consume(self._on_message)
            self._consumers.append((queue, tag))
        log.info("delivery.started", shards=self.topology.shards, prefetch=self.settings.prefetch)

    async def stop(self) -> None:
        """Stop taking messages, let in-flight ones finish (up to drain_timeout), close."""
        self._stopping = True
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        self._consumers.clear()
        if self._inflight:
            log.info("delivery.draining", in_flight=len(self._inflight))
            _done, pending = await asyncio.wait(
                self._inflight, timeout=self.settings.drain_timeout
            )
            for task in pending:  # unacked: the broker redelivers them to another worker
                task.cancel()
        if self._channel_cm is not None:
            await self._channel_cm.__aexit__(None, None, None)
            self._channel_cm = None
        log.info("delivery.stopped", duplicates_absorbed=self.duplicates_absorbed)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            await message.nack(requeue=True)
            return
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self.handle(message)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        message_id = message.message_id or ""
        recipient = str(headers.get(H_RECIPIENT, ""))
        attempt = int(str(headers.get(H_ATTEMPT, 1)))
        bound = log.bind(message_id=message_id, recipient=recipient, attempt=attempt)
        try:
            await self._deliver(message, message_id, recipient, attempt, bound)
        except GatewayError as exc:
            # The store or the broker is away: put the message back and slow down; the
            # quorum delivery-limit catches a message that keeps failing this way.
            bound.warning("delivery.deferred", error=exc.detail)
            await asyncio.sleep(1.0)
            await message.nack(requeue=True)

    async def _deliver(
        self, message: AbstractIncomingMessage, message_id: str, recipient: str, attempt: int,
        bound: Any,
    ) -> None:
        headers = message.headers or {}
        try:
            agency = self.directory.agencies.get(recipient)
            if agency is None:
                raise PermanentFailure(f"recipient {recipient} is not in the directory")
            push_to = agency.endpoint if agency.mode is DeliveryMode.PUSH else None
            # A pull delivery is one conditional, idempotent write: no need to read first. A
            # push must not be repeated for what was delivered already, so it reads first.
            state = await self.store.recipient_state(message_id, recipient) if push_to else None
            if push_to and state is None:
                raise PermanentFailure("no such message and recipient in the store")
            if state not in (None, State.PENDING):
                self.duplicates_absorbed += 1
                bound.info("delivery.duplicate_absorbed", state=state)
                await message.ack()
                return
            if push_to:
                sender = str(headers.get(H_SENDER, ""))
                await push(
                    self.http, push_to, message.body, message_id=message_id,
                    sender=sender, attempt=attempt, timeout=self.settings.push_timeout,
                )
            fresh = await self.store.record_delivery(
                message_id, recipient, mode=agency.mode.value, attempt=attempt
            )
            if fresh is None:
                raise PermanentFailure("no such message and recipient in the store")
            if not fresh:
                self.duplicates_absorbed += 1
            bound.info("delivery.delivered", mode=agency.mode.value, fresh=fresh)
            await message.ack()
        except RetryLater as exc:
            await self._retry_or_dead_letter(message, recipient, attempt, exc, bound)
        except PermanentFailure as exc:
            await self._dead_letter(message, recipient, attempt, "permanent", exc.detail, bound)

    async def _retry_or_dead_letter(
        self, message: AbstractIncomingMessage, recipient: str, attempt: int,
        exc: RetryLater, bound: Any,
    ) -> None:
        if attempt >= self.settings.max_attempts:
            await self._dead_letter(
                message, recipient, attempt, "max_attempts", exc.detail, bound
            )
            return
        tier = self.topology.retry_tier(attempt)
        headers = dict(message.headers or {})
        headers[H_ATTEMPT] = attempt + 1
        headers.setdefault(H_FIRST_ATTEMPT, _now_iso())
        headers[H_ERROR] = exc.detail[:500]
        await self.broker.publish(
            Outgoing(
                exchange=self.topology.retry_exchange(tier),
                routing_key=message.routing_key or self.topology.routing_key(recipient),
                body=message.body,
                message_id=message.message_id or "",
                headers=headers,
            )
        )
        await self.store.record_attempt_failure(
            message.message_id or "", recipient, attempt=attempt, error=exc.detail,
            permanent=False,
        )
        bound.warning(
            "delivery.retry", error=exc.detail,
            delay_ms=self.topology.retry_delays_ms[tier],
        )
        await message.ack()

    async def _dead_letter(
        self, message: AbstractIncomingMessage, recipient: str, attempt: int, reason: str,
        error: str, bound: Any,
    ) -> None:
        headers = dict(message.headers or {})
        headers |= {H_REASON: reason, H_ERROR: error[:500], H_ATTEMPT: attempt}
        headers.setdefault(H_FIRST_ATTEMPT, _now_iso())
        headers["x-lienthong-last-attempt"] = _now_iso()
        await self.broker.publish(
            Outgoing(
                exchange=self.topology.dead_exchange,
                routing_key=recipient,
                body=message.body,
                message_id=message.message_id or "",
                headers=headers,
            )
        )
        await self.store.record_attempt_failure(
            message.message_id or "", recipient, attempt=attempt, error=f"{reason}: {error}",
            permanent=True,
        )
        bound.error("delivery.dead_lettered", reason=reason, error=error)
        await message.ack()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
