"""Against a private RabbitMQ node that the test kills: after the broker comes back, the
gateway consumes again (found by the chaos suite: consumers of queues taken with
``get_queue(ensure=False)`` were not restored by aio-pika's robust channel), and readiness
says the broker is away while it is."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import topology as topo
from gateway.chaos import RabbitNode, _find_rabbitmq_script
from gateway.settings import Settings
from tests.conftest import HUE, PROVINCE, GatewayFactory, document


@pytest.fixture
async def node() -> AsyncIterator[RabbitNode]:
    folder = Path(tempfile.mkdtemp(prefix="lienthong-node-"))
    private = RabbitNode(folder, _find_rabbitmq_script(), lambda _line: None)
    private.prepare()
    await private.start()
    try:
        yield private
    finally:
        await private.kill()
        shutil.rmtree(folder, ignore_errors=True)


async def _consumers(node: RabbitNode, settings: Settings) -> dict[str, int]:
    topology = topo.build(settings)
    names = [topology.shard_queue(k) for k in range(topology.shards)] + [topology.dead_queue]
    return {name: consumers for name, (_ready, consumers) in
            (await node.queue_counts(names)).items()}


async def test_consumers_come_back_after_the_broker_restarts(
    node: RabbitNode, settings: Settings, make_gateway: GatewayFactory,
) -> None:
    on_node = settings.with_(amqp_url=node.url)
    gw = await make_gateway(settings=on_node)
    first = await gw.send(HUE, document(HUE, [{"agency": PROVINCE}]))
    await gw.wait_state((await first.json())["id"], PROVINCE, "delivered")

    await node.kill()
    not_ready = await gw.client.get("/health/ready")
    assert not_ready.status == 503
    assert (await not_ready.json())["checks"]["broker"] != "ok"
    await node.start()

    deadline = time.monotonic() + 30
    while set((await _consumers(node, on_node)).values()) != {1}:
        assert time.monotonic() < deadline, await _consumers(node, on_node)
        await gw.wait_for(_true, timeout=1)
    second = await gw.send(HUE, document(HUE, [{"agency": PROVINCE}], "Sau khi khởi động lại"))
    assert second.status == 202
    await gw.wait_state((await second.json())["id"], PROVINCE, "delivered", timeout=30)
    ready = await gw.client.get("/health/ready")
    assert ready.status == 200


async def _true() -> bool:
    import asyncio

    await asyncio.sleep(0.5)
    return True


async def test_shutdown_while_the_broker_is_down_does_not_hang(
    node: RabbitNode, settings: Settings, make_gateway: GatewayFactory,
) -> None:
    import asyncio

    gw = await make_gateway(settings=settings.with_(amqp_url=node.url))
    await node.kill()
    started = time.monotonic()
    await asyncio.wait_for(gw.client.close(), timeout=30)
    assert time.monotonic() - started < gw.settings.drain_timeout + 5
