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

When a retry happens
--------------------
A failed attempt n goes to the delay tier of its attempt (``LIENTHONG_RETRY_DELAYS``, the last
tier repeats). When the failure carries a delay (the endpoint's ``Retry-After``, seconds or an
HTTP date), the retry goes to the shortest tier at least that long, unless the attempt's own tier
is longer: ``Retry-After`` is the least the endpoint asks us to wait (RFC 9110), and taking it
as a floor, never as a shortcut, keeps an endpoint that always answers ``Retry-After: 1`` from
burning every attempt in seconds. A wait longer than the longest tier gets the longest tier.

No jitter, on purpose. Per-message TTLs (the ``expiration`` property) cannot add it: a queue
expires messages only at its head, so a message with a long TTL holds back every shorter one
behind it. In one tier queue whose messages draw their TTL from [lo, T], a message leaves at the
largest TTL drawn before it (counting from arrival), never later than T; for a burst of failures
(precisely the case jitter is for) that running maximum is close to T after a handful of
messages, so the burst leaves the queue together anyway. Drawing the tier instead (attempt n
uniformly on tier n-1 or n) was considered and left out: it splits a burst into only two groups
per round; it changes the back-off curve rather than blurring it (the tiers are 6 to 10 times
apart, so half the waits shrink that much, and the time the attempts cover becomes random:
anywhere from 4.6 h to 6.6 h with the defaults); and what a burst can do to an endpoint is
bounded already, by the prefetch and by the agency's circuit breaker, which after F failures
lets one probe through and no more.

Limits
------
A delivery is given up (dead-lettered) after ``max_attempts`` attempts (reason
``max_attempts``) or when it fails ``max_age`` after its first failed attempt (``max_age``),
both per priority (``LIENTHONG_PRIORITY_LIMITS``). The priority comes from the
``x-lienthong-priority`` header, or else from the envelope in the body; the clock starts at the
first failure (header ``x-lienthong-first-attempt``), not at the envelope's ``header.created``,
which a sender may set to any time (the time its document was drafted, say), and which would
then dead-letter a message after one failure. Limits are checked when an attempt fails (or is
deferred), so a message is never given up without its attempts, and is given up at most one
tier after ``max_age``.

Circuit breakers
----------------
Each push agency has a breaker (:mod:`gateway.circuit`). While it is open, or half-open with its
one probe under way, a message for that agency is not pushed: it goes back to the shortest delay
tier at least as long as the rest of the cool-down, with the same attempt number (an endpoint
being down must not use up the message's attempts, though its age still counts), and is acked.
Nothing waits in the handler, so other agencies' messages go on at full speed. A failure that
opens or keeps a breaker open is a :class:`RetryLater` from the push (connection error,
timeout, 5xx, 408, 425, 429); any other answer, a 4xx included, proves the endpoint is up.
"At least as long" overshoots where the tiers are far apart (with the defaults a 60 s rest
waits 5 min; tiers near the cool-downs in ``LIENTHONG_RETRY_DELAYS`` tighten it); the other
choice, the longest tier not past the rest, would bring the message back sooner but republish
every waiting message several times per open period, work taken from the other agencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from gateway.blobs import BlobStore
from gateway.broker import Broker, Outgoing, close_quietly
from gateway.circuit import Breakers, CircuitBreaker, Permit
from gateway.codecs import decode, encode_edxml
from gateway.codecs.edxml import iter_edxml, stored_attachments
from gateway.directory import Agency, DeliveryMode, Directory, WireFormat
from gateway.envelope import AnyEnvelope, Priority
from gateway.errors import GatewayError, PermanentFailure, RetryLater
from gateway.settings import Settings
from gateway.store.store import State, Store
from gateway.topology import Topology

if TYPE_CHECKING:  # the relay imports this module's header helpers
    from gateway.relay import OutboxRelay

log = structlog.get_logger(__name__)

H_RECIPIENT = "x-lienthong-recipient"
H_ATTEMPT = "x-lienthong-attempt"  # our own count: x-death changed meaning in RabbitMQ 3.13
H_FIRST_ATTEMPT = "x-lienthong-first-attempt"
H_REASON = "x-lienthong-reason"
H_ERROR = "x-lienthong-error"
H_SENDER = "x-lienthong-sender"
H_PRIORITY = "x-lienthong-priority"
H_LAST_ATTEMPT = "x-lienthong-last-attempt"

_RETRYABLE_STATUS = {408, 425, 429}


def first_delivery_headers(
    recipient: str, sender: str, *, priority: str | None = None
) -> dict[str, Any]:
    headers: dict[str, Any] = {H_RECIPIENT: recipient, H_SENDER: sender, H_ATTEMPT: 1}
    if priority is not None:
        headers[H_PRIORITY] = str(priority)
    return headers


def header_text(value: Any) -> str | None:
    """An AMQP header value as text (headers may arrive as bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def message_priority(headers: Mapping[str, Any], body: bytes) -> str:
    """The ``x-lienthong-priority`` header if present, else the envelope's ``header.priority``
    (the AMQP body is the canonical JSON envelope); ``normal`` when neither says."""
    value = header_text(headers.get(H_PRIORITY))
    if value:
        return value
    try:
        priority = orjson.loads(body)["header"].get("priority")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        priority = None
    return priority if isinstance(priority, str) and priority else Priority.NORMAL.value


def header_instant(value: Any) -> datetime | None:
    text = header_text(value)
    if not text:
        return None
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        return None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def delivery_age(headers: Mapping[str, Any], now: datetime) -> float:
    """Seconds since the first failed attempt (0 before one, or if the header is unreadable)."""
    start = header_instant(headers.get(H_FIRST_ATTEMPT))
    return 0.0 if start is None else max(0.0, (now - start).total_seconds())


def tier_at_least(delays_ms: Sequence[int], seconds: float) -> int:
    """The index of the shortest tier lasting at least ``seconds``; the longest if none does."""
    fitting = [i for i, ms in enumerate(delays_ms) if ms >= seconds * 1000]
    if fitting:
        return min(fitting, key=lambda i: delays_ms[i])
    return max(range(len(delays_ms)), key=lambda i: delays_ms[i])


def retry_tier(topology: Topology, attempt: int, delay: float | None) -> int:
    """The tier after failed ``attempt``: its own, or a longer one if ``delay`` asks for it."""
    tier = topology.retry_tier(attempt)
    if delay is None:
        return tier
    asked = tier_at_least(topology.retry_delays_ms, delay)
    return max(tier, asked, key=lambda i: topology.retry_delays_ms[i])


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def wire_body(
    wire: WireFormat, canonical: bytes, *, sign: Callable[[bytes], bytes] | None = None
) -> tuple[bytes, str]:
    """The body in the format the agency's system speaks (its directory entry says which);
    edXML signed with ``sign`` (the gateway's key, :mod:`gateway.signing`) when given."""
    if wire is WireFormat.EDXML:
        try:
            package = encode_edxml(decode(canonical))
            return (sign(package) if sign is not None else package), "application/xml"
        except GatewayError as exc:
            raise PermanentFailure(f"cannot write this message as edXML: {exc.detail}") from exc
    return canonical, "application/json"


def streamed_edxml(canonical: bytes, blobs: BlobStore) -> AsyncIterator[bytes] | None:
    """An edXML push body that carries stored attachments (claim checks), streamed from the
    blob store piece by piece; None when the message has none (the usual, in-memory path).
    Not signed: XML-DSig's enveloped signature digests the whole document, which this path
    never holds (the README says so)."""
    envelope = decode(canonical)
    if not stored_attachments(envelope):
        return None
    stored_files_exist(envelope, blobs)
    return pieces_of(envelope, blobs)


def stored_files_exist(envelope: AnyEnvelope, blobs: BlobStore) -> None:
    """Checked before the first byte goes out: a clear reason, not a broken request."""
    missing = [a.sha256 for a in stored_attachments(envelope) if not blobs.exists(a.sha256)]
    if missing:
        raise PermanentFailure(f"stored file(s) missing from the blob store: {', '.join(missing)}")


async def pieces_of(envelope: AnyEnvelope, blobs: BlobStore) -> AsyncIterator[bytes]:
    """The edXML package of ``envelope`` with its stored files read back in, a piece at a
    time, each read in a worker thread (file I/O never blocks the event loop)."""
    pieces = iter_edxml(envelope, blobs.chunks)
    while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
        yield piece


async def push(
    session: aiohttp.ClientSession,
    endpoint: str,
    body: bytes | AsyncIterator[bytes],
    *,
    message_id: str,
    sender: str,
    attempt: int,
    timeout: float,
    content_type: str = "application/json",
) -> None:
    """POST one envelope to an agency's endpoint; map the outcome onto the error tree."""
    headers = {
        "Content-Type": content_type,
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
        raise RetryLater(f"push answered HTTP {status}", delay=parse_retry_after(retry_after))
    raise PermanentFailure(f"push answered HTTP {status}")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message for one recipient, as a transport needs it."""

    message_id: str
    sender: str
    attempt: int
    body: bytes  # the canonical JSON envelope; a transport translates it for its system


class Transport(Protocol):
    """How a message reaches an agency that does not read its inbox through the API (push,
    the central hub, its own AMQP queue). ``send`` returns once the other side has it, or
    raises :class:`RetryLater` (worth another attempt) or :class:`PermanentFailure`; it may be
    called again for a message it already sent (a crash before the commit), with the same
    message id for the other side to deduplicate."""

    async def send(self, agency: Agency, delivery: Delivery) -> None: ...


class HttpPush:
    """Push mode: POST to the agency's endpoint, in the format its directory entry names."""

    def __init__(
        self, session: aiohttp.ClientSession, timeout: float,
        sign: Callable[[bytes], bytes] | None = None, blobs: BlobStore | None = None,
    ) -> None:
        self.session = session
        self.timeout = timeout
        self.sign = sign
        self.blobs = blobs

    async def send(self, agency: Agency, delivery: Delivery) -> None:
        if agency.endpoint is None:
            raise PermanentFailure(f"agency {agency.code} has no push endpoint")
        body: bytes | AsyncIterator[bytes] | None = None
        if agency.format is WireFormat.EDXML and self.blobs is not None:
            body, content_type = streamed_edxml(delivery.body, self.blobs), "application/xml"
        if body is None:
            body, content_type = wire_body(agency.format, delivery.body, sign=self.sign)
        await push(
            self.session, agency.endpoint, body, message_id=delivery.message_id,
            sender=delivery.sender, attempt=delivery.attempt, timeout=self.timeout,
            content_type=content_type,
        )


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
        transports: Mapping[DeliveryMode, Transport] | None = None,
        relay: OutboxRelay | None = None,
        sign: Callable[[bytes], bytes] | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.store = store
        self.relay = relay
        self.transports: dict[DeliveryMode, Transport] = {
            DeliveryMode.PUSH: HttpPush(http, settings.push_timeout, sign=sign, blobs=blobs),
            **(transports or {}),
        }
        self.broker = broker
        self.directory = directory
        self.settings = settings
        self.http = http
        self.topology = broker.topology
        self.duplicates_absorbed = 0
        self.breakers = Breakers(
            failures=settings.breaker_failures, cooldown=settings.breaker_cooldown,
            max_cooldown=settings.breaker_max_cooldown,
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._channel_cm: contextlib.AbstractAsyncContextManager[Any] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._channel_cm = self.broker.consumer_channel(self.settings.prefetch)
        channel = await self._channel_cm.__aenter__()
        for shard in range(self.topology.shards):
            # declare_queue (passive), not get_queue: aio-pika's robust channel restores the
            # consumers of declared queues only, so after a broker restart a get_queue consumer
            # would be gone for good (found by the chaos suite).
            queue = await channel.declare_queue(self.topology.shard_queue(shard), passive=True)
            tag = await queue.consume(self._on_message)
            self._consumers.append((queue, tag))
        log.info("delivery.started", shards=self.topology.shards, prefetch=self.settings.prefetch)

    async def stop(self) -> None:
        """Stop taking messages, let in-flight ones finish (up to drain_timeout), close."""
        self._stopping = True
        if self.broker.connected:  # with the broker away there is nothing to cancel
            await asyncio.gather(*(close_quietly(q.cancel(tag)) for q, tag in self._consumers))
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
        breaker: CircuitBreaker | None = None
        permit: Permit | None = None
        try:
            agency = self.directory.agencies.get(recipient)
            if agency is None:
                raise PermanentFailure(f"recipient {recipient} is not in the directory")
            if agency.successor is not None:
                # Dissolved or merged while the message waited (the directory was reloaded).
                await self._redirect(message, message_id, recipient, bound)
                return
            transport = None
            if agency.mode is not DeliveryMode.PULL:
                transport = self.transports.get(agency.mode)
                if transport is None:
                    raise PermanentFailure(f"no {agency.mode.value} transport is configured")
            push_to = transport is not None
            if push_to:
                # Before the store is read: a message for an agency that is down costs no I/O
                # but its republishing.
                breaker = self.breakers[recipient]
                permit = breaker.acquire()
                if not permit.allowed:
                    await self._defer(message, recipient, attempt, permit.wait, bound)
                    return
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
            if transport is not None and breaker is not None and permit is not None:
                sender = str(headers.get(H_SENDER, ""))
                try:
                    await transport.send(
                        agency, Delivery(message_id, sender, attempt, message.body)
                    )
                except RetryLater:
                    if breaker.failure(permit):
                        bound.warning(
                            "circuit.opened", agency=recipient, cooldown=breaker.cooldown
                        )
                    raise
                except PermanentFailure:
                    self._breaker_success(breaker, permit, recipient, bound)  # it answered
                    raise
                self._breaker_success(breaker, permit, recipient, bound)
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
        finally:
            if breaker is not None and permit is not None:
                breaker.release(permit)

    @staticmethod
    def _breaker_success(
        breaker: CircuitBreaker, permit: Permit, recipient: str, bound: Any
    ) -> None:
        if breaker.success(permit):
            bound.info("circuit.closed", agency=recipient)

    async def _redirect(self, message: AbstractIncomingMessage, message_id: str,
                        recipient: str, bound: Any) -> None:
        successor = self.directory.current(recipient)
        rows = await self.store.redirect(message_id, recipient, successor)
        bound.info("delivery.redirected", successor=successor, new_recipient=bool(rows))
        if rows and self.relay is not None:  # else the relay's sweep publishes them
            try:
                await self.relay.publish(rows)
            except GatewayError as exc:  # committed: the relay's sweep publishes it later
                bound.warning("delivery.redirect_publish_deferred", error=exc.detail)
        await message.ack()

    async def _defer(
        self, message: AbstractIncomingMessage, recipient: str, attempt: int, wait: float,
        bound: Any,
    ) -> None:
        """The agency's breaker is open: back to a delay tier with the same attempt number
        (or to the dead letters, if the message is past its age)."""
        headers = dict(message.headers or {})
        now = datetime.now(UTC)
        priority = message_priority(headers, message.body)
        headers[H_PRIORITY] = priority
        headers.setdefault(H_FIRST_ATTEMPT, now.isoformat())
        if delivery_age(headers, now) >= self.settings.limits(priority).max_age:
            last = header_text(headers.get(H_ERROR)) or "none"
            await self._dead_letter(
                message, recipient, attempt - 1, "max_age",
                f"given up while the agency's circuit breaker was open (last error: {last})",
                bound,
            )
            return
        tier = tier_at_least(self.topology.retry_delays_ms, wait)
        await self._to_tier(message, recipient, tier, headers)
        bound.info(
            "delivery.deferred", reason="circuit_open",
            delay_ms=self.topology.retry_delays_ms[tier],
        )
        await message.ack()

    async def _to_tier(self, message: AbstractIncomingMessage, recipient: str, tier: int,
                       headers: dict[str, Any]) -> None:
        """Park the message in a delay tier; it comes back to its own shard after the TTL."""
        await self.broker.publish(
            Outgoing(
                exchange=self.topology.retry_exchange(tier),
                routing_key=message.routing_key or self.topology.routing_key(recipient),
                body=message.body,
                message_id=message.message_id or "",
                headers=headers,
            )
        )

    async def _retry_or_dead_letter(
        self, message: AbstractIncomingMessage, recipient: str, attempt: int,
        exc: RetryLater, bound: Any,
    ) -> None:
        headers = dict(message.headers or {})
        now = datetime.now(UTC)
        priority = message_priority(headers, message.body)
        limits = self.settings.limits(priority)
        if attempt >= limits.max_attempts:
            await self._dead_letter(
                message, recipient, attempt, "max_attempts", exc.detail, bound
            )
            return
        if delivery_age(headers, now) >= limits.max_age:
            await self._dead_letter(message, recipient, attempt, "max_age", exc.detail, bound)
            return
        tier = retry_tier(self.topology, attempt, exc.delay)
        headers[H_ATTEMPT] = attempt + 1
        headers[H_PRIORITY] = priority
        headers.setdefault(H_FIRST_ATTEMPT, now.isoformat())
        headers[H_ERROR] = exc.detail[:500]
        await self._to_tier(message, recipient, tier, headers)
        await self.store.record_retry(
            message.message_id or "", recipient, attempt=attempt, error=exc.detail
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
        headers[H_LAST_ATTEMPT] = _now_iso()
        await self.broker.publish(
            Outgoing(
                exchange=self.topology.dead_exchange,
                routing_key=recipient,
                body=message.body,
                message_id=message.message_id or "",
                headers=headers,
            )
        )
        # The dead-letter keeper records it in the store (one path for our dead letters and
        # the broker's own), and the sender then sees ``failed`` with the reason.
        bound.error("delivery.dead_lettered", reason=reason, error=error)
        await message.ack()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()
