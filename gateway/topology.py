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
    amqp    -> ns.agency (direct) --CODE--> ns.agency.CODE  (one per AMQP-mode agency, read by
               that agency's own RabbitMQ user; rejected or poison messages -> ns.dead)

Every quorum queue that is consumed dead-letters at-least-once (``x-dead-letter-strategy:
at-least-once`` with ``x-overflow: reject-publish``), has an explicit ``x-delivery-limit`` and a
dead-letter target, so neither a TTL nor the delivery limit can drop a message. The one
exception is ``ns.parking``, the DLQ's own overflow: nobody consumes it, so no delivery is ever
counted against a limit there.

Agency queues (AMQP-native agencies, ``delivery: {mode: amqp}`` in the directory) are the
gateway's last hop: a message published there (with a confirm) is ``delivered``. They take
their agencies from the directory (:func:`build` with a ``directory``); without one the topology
has the shared part only, which is all that names and shard look-ups need. Each is a quorum
queue like the others, plus:

* ``x-delivery-limit`` and ``ns.dead`` as dead-letter target: a message the agency's system
  refuses (``basic.reject``/``basic.nack`` without requeue), or gives back that many times
  (which returns count differs by version: before 4.3 every one, a consumer that dies
  included; from 4.3 ``basic.reject`` with requeue), goes to the dead letters operators already
  watch, with the broker's ``x-death`` reason (``rejected``, ``delivery_limit``), instead of
  looping or vanishing;
* ``x-max-length`` and ``x-max-length-bytes`` with ``x-overflow: reject-publish``: one agency
  whose consumer is dead for weeks cannot fill the broker's disk. When its queue is full the
  broker nacks our publish, the delivery goes through the retry tiers like an unreachable push
  endpoint, and after the attempt or age limit it is dead-lettered: nothing is dropped (the
  other overflow mode, ``drop-head``, would silently lose the oldest documents). The limits are
  queue arguments, not a RabbitMQ policy, because the gateway declares its topology over AMQP,
  which cannot set policies, and because the values then live in the code and the definitions
  file like every other argument; an operator policy can still lower them (the smaller wins).
  There is no TTL: an agency that stops reading for a holiday finds its documents waiting.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.directory import DeliveryMode, Directory
from gateway.settings import Settings

FrozenArgs = tuple[tuple[str, Any], ...]

# Per agency queue, whichever is reached first: weeks of a busy sở's traffic (a few hundred
# documents a day), and the disk one dead consumer may take (bodies are small: attachments
# above the inline limit never travel through RabbitMQ).
AGENCY_QUEUE_MAX_LENGTH = 10_000
AGENCY_QUEUE_MAX_BYTES = 1024 * 1024 * 1024


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
    agencies: tuple[str, ...] = field(default=())  # AMQP-mode agencies, each with its queue
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

    @property
    def agency_exchange(self) -> str:
        return f"{self.namespace}.agency"

    def agency_queue(self, code: str) -> str:
        """The queue an AMQP-mode agency consumes (routing key: its code)."""
        return f"{self.namespace}.agency.{code}"

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


def amqp_agencies(directory: Directory) -> tuple[str, ...]:
    """The codes of the directory's AMQP-mode agencies, sorted (merged ones too: their queue
    may still hold messages for the successor's system to drain)."""
    return tuple(sorted(a.code for a in directory.agencies.values()
                        if a.mode is DeliveryMode.AMQP))


def build(
    settings: Settings,
    directory: Directory | None = None,
    *,
    agency_max_length: int = AGENCY_QUEUE_MAX_LENGTH,
    agency_max_bytes: int = AGENCY_QUEUE_MAX_BYTES,
) -> Topology:
    """The topology for these settings; with a ``directory``, also a queue per AMQP-mode
    agency (what the gateway declares and exports must be built with its directory)."""
    ns = settings.namespace
    base = Topology(
        namespace=ns,
        shards=settings.shards,
        retry_delays_ms=tuple(int(d * 1000) for d in settings.retry_delays),
        delivery_limit=settings.delivery_limit,
        agencies=amqp_agencies(directory) if directory is not None else (),
    )
    exchanges = [
        Exchange(base.delivery_exchange, "direct"),
        Exchange(base.dead_exchange, "fanout"),
        Exchange(f"{ns}.parking", "fanout"),
        # Declared even with no AMQP agency: a publish to a missing exchange would close the
        # shared publishing channel, where a missing queue only returns the message.
        Exchange(base.agency_exchange, "direct"),
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
    for code in base.agencies:
        name = base.agency_queue(code)
        queues.append(
            Queue(
                name,
                arguments=_quorum(
                    base.dead_exchange, settings.delivery_limit,
                    **{"x-max-length": agency_max_length, "x-max-length-bytes": agency_max_bytes},
                ),
            )
        )
        bindings.append(Binding(base.agency_exchange, name, code))
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
