"""RabbitMQ through aio-pika: one robust connection, one channel per purpose.

* publishing: a channel with publisher confirms; every publish is ``mandatory`` and waits for
  its confirm. aio-pika does not raise on a ``Basic.Return`` (it hands back the returned
  message), so :meth:`Broker.publish` checks that it got a ``Basic.Ack``;
* consuming: one channel per consumer group with a bounded prefetch and manual acks.

The topology (:mod:`gateway.topology`) is declared idempotently at connect; the robust
connection re-declares it and re-consumes after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pamqp.commands import Basic

from gateway.errors import ConfigError, Unavailable
from gateway.topology import Topology

log = structlog.get_logger(__name__)

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]

_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.AMQPError,
    ConnectionError,
    asyncio.TimeoutError,
    RuntimeError,  # aio-pika raises it for a channel closed under a publish
)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (*_BROKER_ERRORS, OSError)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: where to, and what."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    headers: Mapping[str, Any] = field(default_factory=dict)
    content_type: str = "application/json"
    priority: int = 0


async def connect(url: str, *, name: str, timeout: float = 10.0) -> AbstractRobustConnection:
    try:
        return await aio_pika.connect_robust(
            url, timeout=timeout, client_properties={"connection_name": name}
        )
    except _CONNECT_ERRORS as exc:
        raise Unavailable(f"cannot connect to RabbitMQ: {exc.__class__.__name__}: {exc}") from exc


async def declare(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange, queue and binding (idempotent: same values, no change)."""
    try:
        exchanges: dict[str, AbstractExchange] = {}
        for ex in topology.exchanges:
            exchanges[ex.name] = await channel.declare_exchange(
                ex.name, ex.type, durable=ex.durable, arguments=dict(ex.arguments)
            )
        queues: dict[str, AbstractQueue] = {}
        for q in topology.queues:
            queues[q.name] = await channel.declare_queue(
                q.name, durable=q.durable, arguments=q.args
            )
        for b in topology.bindings:
            await queues[b.queue].bind(exchanges[b.exchange], routing_key=b.routing_key)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigError(
            f"RabbitMQ refused the topology (a queue exists with other arguments): {exc}. "
            "Delete the old queue after draining it, or use another LIENTHONG_NAMESPACE."
        ) from exc


# Closing talks to the broker; while it is away a robust connection would wait for it to come
# back, and a SIGTERM during an outage must still end the process.
CLOSE_TIMEOUT = 5.0


async def close_quietly(closing: Awaitable[Any]) -> None:
    """Await a close (a channel, a connection, a consumer cancel), at most CLOSE_TIMEOUT s."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(closing, CLOSE_TIMEOUT)


class Broker:
    """Open with :meth:`open`; publish with confirms; consume with :meth:`consume`."""

    def __init__(
        self, connection: AbstractRobustConnection, channel: AbstractChannel, topology: Topology
    ) -> None:
        self.connection = connection
        self.topology = topology
        self._channel = channel
        self._exchanges: dict[str, AbstractExchange] = {}

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, topology: Topology, *, name: str) -> AsyncIterator[Broker]:
        connection = await connect(url, name=name)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=False)
            await declare(channel, topology)
            yield cls(connection, channel, topology)
        finally:
            await close_quietly(connection.close())

    @property
    def connected(self) -> bool:
        """False while the robust connection is away (it is not "closed" then)."""
        return self.connection.connected.is_set()

    async def _exchange(self, name: str) -> AbstractExchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            exchange = await self._channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

    async def publish(self, out: Outgoing, *, timeout: float = 30.0) -> None:
        """Publish one persistent message and wait for the broker's confirm.

        Raises :class:`Unavailable` when the broker nacks, returns (unroutable) or is away.
        """
        message = aio_pika.Message(
            out.body,
            message_id=out.message_id,
            headers=dict(out.headers),
            content_type=out.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=out.priority or None,
        )
        try:
            exchange = await self._exchange(out.exchange)
            confirmation = await exchange.publish(
                message, out.routing_key, mandatory=True, timeout=timeout
            )
        except _BROKER_ERRORS as exc:
            raise Unavailable(f"publish to {out.exchange} failed: {exc!r}") from exc
        if not isinstance(confirmation, Basic.Ack):
            # A Basic.Return arrives as a DeliveredMessage: nothing took the message.
            raise Unavailable(
                f"publish to {out.exchange}/{out.routing_key} not confirmed: "
                f"{type(confirmation).__name__}"
            )

    async def publish_many(self, items: list[Outgoing]) -> list[BaseException | None]:
        """Publish concurrently (confirms arrive in a window, not one at a time)."""
        results = await asyncio.gather(
            *(self.publish(item) for item in items), return_exceptions=True
        )
        return [r if isinstance(r, BaseException) else None for r in results]

    @asynccontextmanager
    async def consumer_channel(self, prefetch: int) -> AsyncIterator[AbstractChannel]:
        channel = await self.connection.channel()
        try:
            await channel.set_qos(prefetch_count=prefetch)
            yield channel
        finally:
            if not channel.is_closed and self.connected:
                await close_quietly(channel.close())


async def delete_topology(url: str, topology: Topology) -> None:
    """Delete every queue and exchange of a topology (tests, the demo and the benchmark use
    their own namespace and remove it afterwards; production never calls this)."""
    connection = await connect(url, name="lienthong-cleanup")
    try:
        channel = await connection.channel()
        for q in topology.queues:
            await channel.queue_delete(q.name)
        for ex in topology.exchanges:
            await channel.exchange_delete(ex.name)
    finally:
        await connection.close()
