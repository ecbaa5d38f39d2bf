"""Delivery against the real RabbitMQ: redeliveries leave no duplicate, retries, dead letters,
the outbox relay after a crash between commit and confirm."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import sqlalchemy as sa

from gateway import topology as topo
from gateway.api.keys import BROKER, RELAY
from gateway.broker import Broker, Outgoing
from gateway.delivery import H_ATTEMPT, H_ERROR, H_REASON, H_RECIPIENT, first_delivery_headers
from gateway.relay import OutboxRelay
from gateway.store.store import DeadLetterFilter
from gateway.store.tables import audit_events, inbox, outbox
from tests.conftest import HUE, PROVINCE, PUSH_AGENCY, Gateway, GatewayFactory, document


async def send(gw: Gateway, sender: str, recipient: str) -> str:
    response = await gw.send(sender, document(sender, [{"agency": recipient}]))
    assert response.status == 202, await response.text()
    return str((await response.json())["id"])


async def events(gw: Gateway, message_id: str, name: str) -> int:
    async with gw.store.read() as conn:
        return int((await conn.execute(
            sa.select(sa.func.count()).select_from(audit_events).where(
                audit_events.c.message_id == message_id, audit_events.c.event == name)
        )).scalar_one())


async def inbox_rows(gw: Gateway, message_id: str) -> int:
    async with gw.store.read() as conn:
        return int((await conn.execute(
            sa.select(sa.func.count()).select_from(inbox).where(inbox.c.message_id == message_id)
        )).scalar_one())


async def republish(gw: Gateway, message_id: str, recipient: str) -> None:
    """Publish the message again, as the relay would after losing a confirm."""
    broker = gw.client.app[BROKER]
    row = (await gw.store.message(message_id))
    await broker.publish(Outgoing(
        exchange=broker.topology.delivery_exchange,
        routing_key=broker.topology.routing_key(recipient),
        body=row.envelope, message_id=message_id,
        headers=first_delivery_headers(recipient, row.sender),
    ))


async def test_duplicate_publish_leaves_one_inbox_row_and_one_delivery(gateway: Gateway) -> None:
    message_id = await send(gateway, HUE, PROVINCE)
    await gateway.wait_state(message_id, PROVINCE, "delivered")
    before = gateway.worker.duplicates_absorbed
    for _ in range(3):
        await republish(gateway, message_id, PROVINCE)

    async def absorbed() -> bool:
        return gateway.worker.duplicates_absorbed >= before + 3

    await gateway.wait_for(absorbed)
    assert await inbox_rows(gateway, message_id) == 1
    assert await events(gateway, message_id, "delivered") == 1


async def _take_one(settings: Any, recipient: str) -> tuple[aio_pika.abc.AbstractRobustConnection,
                                                          aio_pika.abc.AbstractIncomingMessage]:
    """A rogue consumer that takes the next message of a recipient's shard and holds it."""
    topology = topo.build(settings)
    connection = await aio_pika.connect_robust(settings.amqp_url)
    channel = await connection.channel()
    queue = await channel.get_queue(topology.shard_queue(topology.shard_of(recipient)))
    return connection, await _next(queue)


async def _next(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    """The next message of a queue, unacked, waiting up to 5 s for one."""
    for _ in range(100):
        message = await queue.get(no_ack=False, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"no message arrived on {queue.name}")


async def test_nack_with_requeue_after_the_effect_is_absorbed(
    make_gateway: GatewayFactory,
) -> None:
    # Accept without workers, so that the test's consumer takes the message first.
    gw = await make_gateway(workers=False)
    message_id = await send(gw, HUE, PROVINCE)
    connection, message = await _take_one(gw.settings, PROVINCE)
    # The effect happened (the consumer wrote it), then the consumer gave the message back.
    assert await gw.store.record_delivery(message_id, PROVINCE, mode="pull", attempt=1)
    await message.nack(requeue=True)
    await connection.close()
    # A real worker now gets the redelivery.
    worker_gw = await make_gateway()
    await worker_gw.wait_for(lambda: _absorbed(worker_gw, 1))
    assert await inbox_rows(worker_gw, message_id) == 1
    assert await events(worker_gw, message_id, "delivered") == 1
    assert await worker_gw.recipient_state(message_id, PROVINCE) == "delivered"


async def _absorbed(gw: Gateway, n: int) -> bool:
    return gw.worker.duplicates_absorbed >= n


async def test_consumer_dying_before_its_ack_means_redelivery_not_loss(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(workers=False)
    message_id = await send(gw, HUE, PROVINCE)
    connection, message = await _take_one(gw.settings, PROVINCE)
    assert message.message_id == message_id
    await connection.close()  # dies holding the message, before doing anything
    worker_gw = await make_gateway()
    await worker_gw.wait_state(message_id, PROVINCE, "delivered")
    assert await inbox_rows(worker_gw, message_id) == 1
    assert await events(worker_gw, message_id, "delivered") == 1


async def test_push_retried_after_5xx_and_reset(gateway: Gateway) -> None:
    gateway.push.fail_next(503, "reset")
    message_id = await send(gateway, PROVINCE, PUSH_AGENCY)
    await gateway.wait_state(message_id, PUSH_AGENCY, "delivered")
    assert gateway.push.requests[message_id] == 3
    row = await gateway.store.message(message_id)
    assert row.recipients[0].attempts == 3
    assert await events(gateway, message_id, "retried") == 2
    assert await events(gateway, message_id, "delivered") == 1


async def test_push_repeat_after_a_lost_answer_carries_the_same_message_id(
    gateway: Gateway,
) -> None:
    # The endpoint takes the document but answers after the gateway's 1 s timeout: the gateway
    # must try again, and the endpoint sees the same id and absorbs the repeat.
    gateway.push.slow_seconds = 1.5
    gateway.push.fail_next("slow")
    message_id = await send(gateway, PROVINCE, PUSH_AGENCY)
    await gateway.wait_state(message_id, PUSH_AGENCY, "delivered")
    assert gateway.push.requests[message_id] == 2
    assert gateway.push.repeats == 1
    assert list(gateway.push.effects) == [message_id]
    assert await events(gateway, message_id, "delivered") == 1


async def test_permanent_failure_lands_in_the_dlq_with_headers_then_in_the_store(
    make_gateway: GatewayFactory,
) -> None:
    # Without the keeper, the dead letter waits in the queue with headers saying why...
    gw = await make_gateway(keeper=False)
    gw.push.fail_next(400)
    message_id = await send(gw, PROVINCE, PUSH_AGENCY)
    dead = await _dead_letter(gw)
    assert dead.message_id == message_id
    assert dead.headers[H_REASON] == "permanent"
    assert dead.headers[H_RECIPIENT] == PUSH_AGENCY
    assert dead.headers[H_ERROR] == "push answered HTTP 400"
    assert dead.headers[H_ATTEMPT] == 1
    assert await gw.recipient_state(message_id, PUSH_AGENCY) == "pending"
    await dead.nack(requeue=True)
    # ...and the keeper moves it into the store: the sender sees failed, with the reason.
    keeper = await make_gateway()
    await keeper.wait_state(message_id, PUSH_AGENCY, "failed")
    row = await keeper.store.message(message_id)
    assert row.recipients[0].last_error == "permanent: push answered HTTP 400"


async def test_retries_exhausted_are_dead_lettered_with_the_count(gateway: Gateway) -> None:
    gateway.push.fail_next(*([500] * gateway.settings.max_attempts))
    message_id = await send(gateway, PROVINCE, PUSH_AGENCY)
    await gateway.wait_state(message_id, PUSH_AGENCY, "failed")
    assert gateway.push.requests[message_id] == gateway.settings.max_attempts
    [dead] = await gateway.store.dead_letters(DeadLetterFilter())
    assert (dead.message_id, dead.reason) == (message_id, "max_attempts")
    assert dead.attempts == gateway.settings.max_attempts
    assert dead.first_attempt_at is not None and dead.last_attempt_at is not None
    assert dead.error == "push answered HTTP 500"


async def _dead_letter(gw: Gateway) -> aio_pika.abc.AbstractIncomingMessage:
    broker = gw.client.app[BROKER]
    channel = await broker.connection.channel()
    return await _next(await channel.get_queue(broker.topology.dead_queue))


async def test_relay_publishes_what_was_committed_but_never_confirmed(
    make_gateway: GatewayFactory,
) -> None:
    # "Killed between commit and confirm": the API ran without a broker, so the message is
    # committed with its outbox row and nothing was published.
    api_only = await make_gateway(broker=False)
    message_id = await send(api_only, HUE, PROVINCE)
    async with api_only.store.read() as conn:
        pending = (await conn.execute(sa.select(outbox.c.published_at))).scalars().all()
    assert pending == [None]
    # After the restart, the relay's sweep finds it and the worker delivers it.
    restarted = await make_gateway()
    await restarted.wait_state(message_id, PROVINCE, "delivered", timeout=20)

    async def marked() -> bool:
        # The worker may deliver before the relay has recorded the broker's confirm.
        async with restarted.store.read() as conn:
            published = (await conn.execute(sa.select(outbox.c.published_at))).scalars().all()
        return published[0] is not None

    await restarted.wait_for(marked)
    assert await events(restarted, message_id, "published") == 1


async def test_unroutable_publish_is_a_failure_not_a_confirm(gateway: Gateway) -> None:
    broker: Broker = gateway.client.app[BROKER]
    channel = await broker.connection.channel()
    await channel.declare_exchange(f"{gateway.settings.namespace}.nowhere", "direct",
                                   auto_delete=True)
    try:
        await broker.publish(Outgoing(exchange=f"{gateway.settings.namespace}.nowhere",
                                      routing_key="x", body=b"{}", message_id="m"))
    except Exception as exc:
        assert type(exc).__name__ == "Unavailable"
        assert "not confirmed" in str(exc)
    else:
        raise AssertionError("a returned message was taken as published")
    finally:
        await channel.close()


async def test_relay_leaves_rows_unpublished_when_the_broker_refuses(gateway: Gateway) -> None:
    relay: OutboxRelay = gateway.client.app[RELAY]
    message_id = await send(gateway, HUE, PROVINCE)
    await gateway.wait_state(message_id, PROVINCE, "delivered")
    rows = await gateway.store.outbox_rows(older_than=None)
    assert rows == []  # all published
    broken = OutboxRelay(gateway.store, relay.broker, gateway.settings.with_(namespace="gone"))
    broken.topology = topo.build(gateway.settings.with_(namespace="gone"))
    api_only_id = await gateway.store.accept(
        message_id="5b0c8d5e-0000-4000-8000-000000000001", kind="document", sender=HUE,
        about=None, created_at=(await gateway.store.message(message_id)).accepted_at,
        envelope=(await gateway.store.message(message_id)).envelope,
        recipients_=[PROVINCE], redirects={}, idempotency_key=None, request_hash="0" * 64,
    )
    assert len(api_only_id.outbox) == 1
    assert await broken.publish(api_only_id.outbox) == 0
    rows = await gateway.store.outbox_rows(older_than=None)
    assert [r.message_id for r in rows] == [api_only_id.message_id]
