"""RabbitMQ topology as frozen values: exchanges, queues, bindings; no I/O.

Dataclass equality covers every field, x-arguments included (FastStream's hand-written queue
``__eq__`` ignores them: a changed argument must be a different queue, never silently the same).
``gateway.broker`` declares these values; :func:`definitions` exports the same values as a
RabbitMQ definitions file, so the file cannot drift from the code.

Shape (``ns`` is the namespace, ``lienthong`` by default)::

    publish -> ns.delivery (direct) --shard.K--> ns.delivery.K   (quorum, K = hash(recipient) % N)
    failure -> ns.retry.<T> (fanout) -> ns.retry.<T> (quorum, TTL T) --dead-letter--> ns.delivery
               (the original routing key shard.K is kept, so it returns to its own shard)
    give up -> ns.dead (fanout) -> ns.dead   (the dead-letter queue operators look at)

Every quorum queue that is consumed dead-letters at-least-once (``x-dead-letter-strategy:
at-least-once`` with ``x-overflow: reject-publish``), has an explicit ``x-delivery-limit`` and a
dead-letter target, so neither a TTL nor the delivery limit can drop a message. The one
exception is ``ns.parking``, the DLQ's own overflow: nobody consumes it, so no delivery is ever
counted against a limit there.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.settings import Settings

FrozenArgs = tuple[tuple[str, Any], ...]


def _frozen(args: Mapping[str, Any]) -> FrozenArgs:
    return tuple(sorted(args.items()))


@dataclass(frozen=True, slots=True)
class Exchange:
    name: str
    type: str  # direct | fanout | topic | headers
    durable: bool = True
    arguments: FrozenArgs = ()


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    durable: bool = True
    arguments: FrozenArgs = ()

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.arguments)


@dataclass(frozen=True, slots=True)
class Binding:
    exchange: str
    queue: str
    routing_key: str = ""


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str
    shards: int
    retry_delays_ms: tuple[int, ...]
    delivery_limit: int
    exchanges: tuple[Exchange, ...] = field(default=())
    queues: tuple[Queue, ...] = field(default=())
    bindings: tuple[Binding, ...] = field(default=())

    # -- names --------------------------------------------------------------------------------
    @property
    def delivery_exchange(self) -> str:
        return f"{self.namespace}.delivery"

    @property
    def dead_exchange(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.namespace}.dead"

    @property
    def parking_queue(self) -> str:
        return f"{self.namespace}.parking"

    def shard_queue(self, shard: int) -> str:
        return f"{self.namespace}.delivery.{shard}"

    def retry_exchange(self, tier: int) -> str:
        return f"{self.namespace}.retry.{self.retry_delays_ms[tier]}ms"

    def shard_of(self, recipient: str) -> int:
        """A stable shard for an agency (the same in every process and every release)."""
        digest = hashlib.blake2b(recipient.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.shards

    def routing_key(self, recipient: str) -> str:
        return f"shard.{self.shard_of(recipient)}"

    def retry_tier(self, attempt: int) -> int:
        """The delay tier for the given (1-based) failed attempt; the last tier repeats."""
        return min(max(attempt, 1), len(self.retry_delays_ms)) - 1


def _quorum(dead_letter_exchange: str, delivery_limit: int, **extra: Any) -> FrozenArgs:
    return _frozen(
        {
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": dead_letter_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            **extra,
        }
    )


def build(settings: Settings) -> Topology:
    ns = settings.namespace
    base = Topology(
        namespace=ns,
        shards=settings.shards,
        retry_delays_ms=tuple(int(d * 1000) for d in settings.retry_delays),
        delivery_limit=settings.delivery_limit,
    )
    exchanges = [
        Exchange(base.delivery_exchange, "direct"),
        Exchange(base.dead_exchange, "fanout"),
        Exchange(f"{ns}.parking", "fanout"),
    ]
    queues: list[Queue] = []
    bindings: list[Binding] = []
    for shard in range(settings.shards):
        name = base.shard_queue(shard)
        queues.append(Queue(name, arguments=_quorum(base.dead_exchange, settings.delivery_limit)))
        bindings.append(Binding(base.delivery_exchange, name, f"shard.{shard}"))
    for tier, delay_ms in enumerate(base.retry_delays_ms):
        name = base.retry_exchange(tier)
        exchanges.append(Exchange(name, "fanout"))
        # No dead-letter routing key: the message keeps its shard.K key on the way back.
        queues.append(
            Queue(
                name,
                arguments=_quorum(
                    base.delivery_exchange, settings.delivery_limit, **{"x-message-ttl": delay_ms}
                ),
            )
        )
        bindings.append(Binding(name, name))
    # The DLQ itself dead-letters to a parking queue nobody consumes, so that even a poison
    # message that operators keep failing to handle is kept rather than dropped.
    queues.append(Queue(base.dead_queue, arguments=_quorum(f"{ns}.parking", 1000)))
    bindings.append(Binding(base.dead_exchange, base.dead_queue))
    queues.append(Queue(base.parking_queue, arguments=_frozen({"x-queue-type": "quorum"})))
    bindings.append(Binding(f"{ns}.parking", base.parking_queue))
    return dataclasses.replace(
        base, exchanges=tuple(exchanges), queues=tuple(queues), bindings=tuple(bindings)
    )


def definitions(topology: Topology, *, vhost: str = "/") -> dict[str, Any]:
    """A RabbitMQ definitions document (``rabbitmqctl import_definitions``) for the topology."""
    return {
        "rabbit_version": "3.10.0",
        "vhosts": [{"name": vhost}],
        "exchanges": [
            {
                "name": e.name,
                "vhost": vhost,
                "type": e.type,
                "durable": e.durable,
                "auto_delete": False,
                "internal": False,
                "arguments": dict(e.arguments),
            }
            for e in topology.exchanges
        ],
        "queues": [
            {
                "name": q.name,
                "vhost": vhost,
                "durable": q.durable,
                "auto_delete": False,
                "arguments": dict(q.arguments),
            }
            for q in topology.queues
        ],
        "bindings": [
            {
                "source": b.exchange,
                "vhost": vhost,
                "destination": b.queue,
                "destination_type": "queue",
                "routing_key": b.routing_key,
                "arguments": {},
            }
            for b in topology.bindings
        ],
    }
