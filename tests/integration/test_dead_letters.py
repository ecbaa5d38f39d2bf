"""Dead letters end to end: kept with their reason (ours or the broker's delivery-limit),
listed, replayed with the same message id, or discarded; audited with who and why."""

from __future__ import annotations

import asyncio

import aio_pika
import sqlalchemy as sa

from gateway import topology as topo
from gateway.store.tables import audit_events
from tests.conftest import HUE, PROVINCE, PUSH_AGENCY, Gateway, GatewayFactory, document


async def operator(gw: Gateway, name: str = "nguyen.van.an") -> dict[str, str]:
    token = (await gw.store.issue_operator_credential(name))[1]
    return {"Authorization": f"Bearer {token}"}


async def dead_push(gw: Gateway) -> str:
    """A message whose push fails for good (HTTP 400), kept as a dead letter."""
    gw.push.fail_next(400)
    response = await gw.send(PROVINCE, document(PROVINCE, [{"agency": PUSH_AGENCY}]))
    message_id = str((await response.json())["id"])
    await gw.wait_state(message_id, PUSH_AGENCY, "failed")

    async def kept() -> bool:
        return bool(await gw.store.dead_letters(_open()))

    await gw.wait_for(kept)
    return message_id


def _open() -> object:
    from gateway.store.store import DeadLetterFilter

    return DeadLetterFilter()


async def audit_of(gw: Gateway, message_id: str) -> list[tuple[str, str | None]]:
    async with gw.store.read() as conn:
        rows = (await conn.execute(
            sa.select(audit_events.c.event, audit_events.c.actor)
            .where(audit_events.c.message_id == message_id).order_by(audit_events.c.id))).all()
    return [(r.event, r.actor) for r in rows]


async def test_a_dead_letter_is_kept_once_with_its_reason(gateway: Gateway) -> None:
    message_id = await dead_push(gateway)
    ops = await operator(gateway)
    listed = await (await gateway.client.get("/api/v1/ops/dead-letters", headers=ops)).json()
    [item] = listed["items"]
    assert (item["message_id"], item["recipient"], item["reason"], item["state"]) == (
        message_id, PUSH_AGENCY, "permanent", "dead")
    assert item["error"] == "push answered HTTP 400"
    shown = await (await gateway.client.get(f"/api/v1/ops/dead-letters/{item['id']}",
                                            headers=ops)).json()
    assert shown == item
    view = await gateway.store.message(message_id)
    assert view.recipients[0].state == "failed"
    assert view.recipients[0].last_error == "permanent: push answered HTTP 400"
    assert [e for e, _ in await audit_of(gateway, message_id)].count("dead_lettered") == 1


async def test_operator_and_agency_tokens_stay_in_their_lanes(gateway: Gateway) -> None:
    ops = await operator(gateway)
    agency = await gateway.auth(HUE)
    assert (await gateway.client.get("/api/v1/ops/dead-letters", headers=agency)).status == 403
    assert (await gateway.client.get("/api/v1/inbox", headers=ops)).status == 403
    forged = await gateway.client.post("/api/v1/messages", headers=ops,
                                       json=document(HUE, [{"agency": PROVINCE}]))
    assert forged.status == 403


async def test_replay_delivers_with_the_same_id_and_records_who_and_why(
    gateway: Gateway,
) -> None:
    message_id = await dead_push(gateway)
    ops = await operator(gateway, "tran.thi.binh")
    [dead] = await gateway.store.dead_letters(_open())  # type: ignore[arg-type]
    missing_comment = await gateway.client.post("/api/v1/ops/dead-letters/replay",
                                                json={"ids": [dead.id]}, headers=ops)
    assert missing_comment.status == 422
    assert (await missing_comment.json())["errors"][0]["pointer"] == "/comment"
    no_choice = await gateway.client.post("/api/v1/ops/dead-letters/replay",
                                          json={"comment": "x"}, headers=ops)
    assert no_choice.status == 422

    response = await gateway.client.post(
        "/api/v1/ops/dead-letters/replay",
        json={"ids": [dead.id], "comment": "Sở TT&TT đã sửa hệ thống"}, headers=ops)
    assert response.status == 200
    assert await response.json() == {"replayed": 1, "messages": [message_id]}
    await gateway.wait_state(message_id, PUSH_AGENCY, "delivered")
    assert list(gateway.push.effects) == [message_id]  # same id, one effect
    after = await gateway.store.dead_letter(dead.id)
    assert (after.state, after.resolved_by, after.comment) == (
        "replayed", "tran.thi.binh", "Sở TT&TT đã sửa hệ thống")
    assert ("replayed", "tran.thi.binh") in await audit_of(gateway, message_id)
    # Replaying again finds nothing open.
    again = await gateway.client.post("/api/v1/ops/dead-letters/replay",
                                      json={"all": True, "comment": "again"}, headers=ops)
    assert (await again.json())["replayed"] == 0


async def test_discard_keeps_the_recipient_failed_and_is_audited(gateway: Gateway) -> None:
    message_id = await dead_push(gateway)
    ops = await operator(gateway)
    response = await gateway.client.post(
        "/api/v1/ops/dead-letters/discard",
        json={"agency": PUSH_AGENCY, "comment": "văn bản đã gửi bằng đường bưu điện"},
        headers=ops)
    assert (await response.json())["discarded"] == 1
    assert await gateway.recipient_state(message_id, PUSH_AGENCY) == "failed"
    assert ("discarded", "nguyen.van.an") in await audit_of(gateway, message_id)
    listed = await (await gateway.client.get("/api/v1/ops/dead-letters?state=discarded",
                                             headers=ops)).json()
    assert [i["message_id"] for i in listed["items"]] == [message_id]
    assert (await (await gateway.client.get("/api/v1/ops/dead-letters",
                                            headers=ops)).json())["items"] == []


async def test_filters_choose_by_agency_reason_and_age(gateway: Gateway) -> None:
    await dead_push(gateway)
    ops = await operator(gateway)
    for query, expected in (
        (f"agency={PUSH_AGENCY}", 1), (f"agency={HUE}", 0), ("reason=permanent", 1),
        ("reason=max_attempts", 0), ("older_than=1h", 0),
    ):
        listed = await (await gateway.client.get(f"/api/v1/ops/dead-letters?{query}",
                                                 headers=ops)).json()
        assert len(listed["items"]) == expected, query
    bad = await gateway.client.get("/api/v1/ops/dead-letters?older_than=soon", headers=ops)
    assert bad.status == 422
    assert (await bad.json())["errors"][0]["pointer"] == "query:older_than"


async def test_a_poison_message_caught_by_the_delivery_limit_is_kept(
    make_gateway: GatewayFactory, settings: object,
) -> None:
    limited = settings.with_(delivery_limit=2)  # type: ignore[attr-defined]
    api_only = await make_gateway(settings=limited, workers=False)
    response = await api_only.send(HUE, document(HUE, [{"agency": PROVINCE}]))
    message_id = (await response.json())["id"]
    # A consumer that crashes on the message every time: the broker counts the returns.
    topology = topo.build(limited)
    connection = await aio_pika.connect(limited.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.shard_queue(topology.shard_of(PROVINCE)))
        returned = 0
        for _ in range(200):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                if returned > limited.delivery_limit:
                    break
                await asyncio.sleep(0.05)
                continue
            await message.nack(requeue=True)
            returned += 1
        assert returned == limited.delivery_limit + 1
    finally:
        await connection.close()
    keeper = await make_gateway(settings=limited)  # workers and the keeper start

    async def kept() -> bool:
        return await keeper.recipient_state(message_id, PROVINCE) == "failed"

    await keeper.wait_for(kept)
    [dead] = await keeper.store.dead_letters(_open())  # type: ignore[arg-type]
    assert (dead.message_id, dead.reason) == (message_id, "delivery_limit")
    assert "RabbitMQ" in (dead.error or "")
