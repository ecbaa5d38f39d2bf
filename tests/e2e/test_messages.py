"""Through HTTP: send, deliver (pull and push), read; every rejection of point 7 of the issue."""

from __future__ import annotations

import asyncio
import io
import uuid

import orjson
import sqlalchemy as sa

from gateway.store.tables import audit_events, inbox, messages, outbox, recipients
from tests.conftest import (
    DISTRICTS,
    HUE,
    MERGED_COMMUNE,
    PHONG_DIEN,
    PROVINCE,
    PUSH_AGENCY,
    SUCCESSOR,
    Gateway,
    GatewayFactory,
    document,
)


async def row_count(gw: Gateway, table: sa.Table) -> int:
    async with gw.store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def assert_nothing_stored(gw: Gateway) -> None:
    for table in (messages, recipients, outbox, inbox):
        assert await row_count(gw, table) == 0, f"{table.name} has rows after a rejection"


async def test_document_to_one_pull_agency_is_delivered_then_read(gateway: Gateway) -> None:
    response = await gateway.send(PHONG_DIEN, document(PHONG_DIEN, [{"agency": PROVINCE}]))
    assert response.status == 202, await response.text()
    body = await response.json()
    message_id = body["id"]
    assert body["recipients"] == [PROVINCE]
    assert response.headers["Location"] == f"/api/v1/messages/{message_id}"
    await gateway.wait_state(message_id, PROVINCE, "delivered")

    inbox_page = await gateway.client.get("/api/v1/inbox", headers=await gateway.auth(PROVINCE))
    items = (await inbox_page.json())["items"]
    assert [i["message_id"] for i in items] == [message_id]
    assert items[0]["envelope"]["header"]["id"] == message_id
    assert items[0]["envelope"]["body"]["subject"] == "Về việc kiểm tra"

    view = await (await gateway.client.get(
        f"/api/v1/messages/{message_id}", headers=await gateway.auth(PHONG_DIEN))).json()
    assert view["recipients"][0]["state"] == "delivered"
    assert "delivered_at" in view["recipients"][0] and "read_at" not in view["recipients"][0]

    ack = await gateway.client.post(f"/api/v1/inbox/{message_id}/ack",
                                    headers=await gateway.auth(PROVINCE))
    assert ack.status == 200
    first_ack = (await ack.json())["acked_at"]
    again = await gateway.client.post(f"/api/v1/inbox/{message_id}/ack",
                                      headers=await gateway.auth(PROVINCE))
    assert (await again.json())["acked_at"] == first_ack  # idempotent

    view = await (await gateway.client.get(
        f"/api/v1/messages/{message_id}", headers=await gateway.auth(PHONG_DIEN))).json()
    assert view["recipients"][0]["state"] == "read"
    assert view["recipients"][0]["read_at"] == first_ack


async def test_subtree_and_several_recipients_are_resolved(gateway: Gateway) -> None:
    envelope = document(PROVINCE, [{"under": PROVINCE, "level": "district"},
                                   {"agency": PUSH_AGENCY}, {"agency": HUE}])
    response = await gateway.send(PROVINCE, envelope)
    assert response.status == 202
    got = (await response.json())["recipients"]
    assert sorted(got) == sorted([*DISTRICTS, PUSH_AGENCY])  # HUE only once
    message_id = (await response.json())["id"]
    for agency in got:
        await gateway.wait_state(message_id, agency, "delivered")
    assert gateway.push.effects.keys() == {message_id}


async def test_address_to_merged_agency_goes_to_successor(gateway: Gateway) -> None:
    response = await gateway.send(PHONG_DIEN, document(PHONG_DIEN, [{"agency": MERGED_COMMUNE}]))
    assert response.status == 202
    assert (await response.json())["recipients"] == [SUCCESSOR]
    view = await gateway.store.message((await response.json())["id"])
    assert view.recipients[0].addressed_as == MERGED_COMMUNE


async def test_push_agency_gets_http_post_with_message_id_then_reads(gateway: Gateway) -> None:
    response = await gateway.send(PROVINCE, document(PROVINCE, [{"agency": PUSH_AGENCY}]))
    message_id = (await response.json())["id"]
    await gateway.wait_state(message_id, PUSH_AGENCY, "delivered")
    assert gateway.push.headers[message_id]["X-Lienthong-Message-Id"] == message_id
    assert gateway.push.headers[message_id]["X-Lienthong-Sender"] == PROVINCE
    assert b'"subject":"V' in gateway.push.effects[message_id]
    ack = await gateway.client.post(f"/api/v1/inbox/{message_id}/ack",
                                    headers=await gateway.auth(PUSH_AGENCY))
    assert ack.status == 200
    assert await gateway.recipient_state(message_id, PUSH_AGENCY) == "read"


async def test_repeated_idempotency_key_returns_first_answer_and_creates_nothing(
    gateway: Gateway,
) -> None:
    envelope = document(HUE, [{"agency": PROVINCE}])
    first = await gateway.send(HUE, envelope, **{"Idempotency-Key": "bc-2026-001"})
    second = await gateway.send(HUE, envelope, **{"Idempotency-Key": "bc-2026-001"})
    assert first.status == second.status == 202
    assert await first.json() == await second.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert await row_count(gateway, messages) == 1
    assert await row_count(gateway, outbox) == 1

    other = document(HUE, [{"agency": PROVINCE}], subject="Một nội dung khác")
    reused = await gateway.send(HUE, other, **{"Idempotency-Key": "bc-2026-001"})
    assert reused.status == 422
    problem = await reused.json()
    assert problem["errors"][0]["pointer"] == "header:Idempotency-Key"
    assert await row_count(gateway, messages) == 1

    # The same key from another agency is another request.
    mine = await gateway.send(PHONG_DIEN, document(PHONG_DIEN, [{"agency": PROVINCE}]),
                              **{"Idempotency-Key": "bc-2026-001"})
    assert mine.status == 202
    assert (await mine.json())["id"] != (await first.json())["id"]


async def test_concurrent_requests_with_one_key_create_one_message(gateway: Gateway) -> None:
    envelope = document(HUE, [{"agency": PROVINCE}])
    responses = await asyncio.gather(*(
        gateway.send(HUE, envelope, **{"Idempotency-Key": "race"}) for _ in range(8)
    ))
    ids = {(await r.json())["id"] for r in responses}
    assert [r.status for r in responses] == [202] * 8
    assert len(ids) == 1
    assert await row_count(gateway, messages) == 1


async def test_sending_as_another_agency_is_forbidden_and_stores_nothing(gateway: Gateway) -> None:
    response = await gateway.send(HUE, document(PROVINCE, [{"agency": PHONG_DIEN}]))
    assert response.status == 403
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert problem["status"] == 403
    assert problem["errors"] == [{"pointer": "/header/sender",
                                  "detail": "must be the calling agency"}]
    await assert_nothing_stored(gateway)


async def test_unknown_missing_and_revoked_tokens_get_401(gateway: Gateway) -> None:
    envelope = document(HUE, [{"agency": PROVINCE}])
    missing = await gateway.client.post("/api/v1/messages", json=envelope)
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    unknown = await gateway.client.post(
        "/api/v1/messages", json=envelope,
        headers={"Authorization": "Bearer lt_" + "x" * 40})
    assert unknown.status == 401
    assert (await gateway.send(HUE, envelope)).status == 202  # the token works...
    assert await gateway.store.revoke_credentials(HUE) == 1
    revoked = await gateway.send(HUE, envelope)  # ...until it is revoked
    assert revoked.status == 401
    assert (await revoked.json())["detail"] == "unknown or revoked token"
    assert await row_count(gateway, messages) == 1
    basic = await gateway.client.get("/api/v1/inbox", headers={"Authorization": "Basic eDp5"})
    assert basic.status == 401


async def test_no_agency_reads_another_agencys_inbox_or_messages(gateway: Gateway) -> None:
    response = await gateway.send(PROVINCE, document(PROVINCE, [{"agency": HUE}]))
    message_id = (await response.json())["id"]
    await gateway.wait_state(message_id, HUE, "delivered")

    other_inbox = await gateway.client.get(f"/api/v1/inbox?agency={HUE}",
                                           headers=await gateway.auth(PHONG_DIEN))
    assert other_inbox.status == 403
    own = await (await gateway.client.get("/api/v1/inbox",
                                          headers=await gateway.auth(PHONG_DIEN))).json()
    assert own["items"] == []
    stranger_view = await gateway.client.get(f"/api/v1/messages/{message_id}",
                                             headers=await gateway.auth(PHONG_DIEN))
    assert stranger_view.status == 403
    stranger_ack = await gateway.client.post(f"/api/v1/inbox/{message_id}/ack",
                                             headers=await gateway.auth(PHONG_DIEN))
    assert stranger_ack.status == 403
    assert await gateway.recipient_state(message_id, HUE) == "delivered"  # not read
    # The recipient sees the message, but only its own delivery row.
    own_view = await (await gateway.client.get(f"/api/v1/messages/{message_id}",
                                               headers=await gateway.auth(HUE))).json()
    assert [r["agency"] for r in own_view["recipients"]] == [HUE]


async def test_invalid_json_and_schema_violations_are_problem_details(gateway: Gateway) -> None:
    headers = {**await gateway.auth(HUE), "Content-Type": "application/json"}
    bad_json = await gateway.client.post("/api/v1/messages", data=b'{"kind": "document",',
                                         headers=headers)
    assert bad_json.status == 400
    assert bad_json.content_type == "application/problem+json"
    assert "line 1" in (await bad_json.json())["detail"]

    envelope = document(HUE, [{"agency": "H57"}])
    envelope["body"]["subject"] = ""
    violation = await gateway.send(HUE, envelope)
    assert violation.status == 422
    pointers = {e["pointer"] for e in (await violation.json())["errors"]}
    assert pointers == {"/header/to/0/agency", "/body/subject"}

    no_kind = document(HUE, [{"agency": PROVINCE}])
    del no_kind["kind"]
    assert {e["pointer"] for e in (await (await gateway.send(HUE, no_kind)).json())["errors"]
            } == {"/kind"}
    await assert_nothing_stored(gateway)


async def test_unknown_recipient_and_unknown_level_are_422(gateway: Gateway) -> None:
    unknown = await gateway.send(HUE, document(HUE, [{"agency": "000.99.99.H57"}]))
    assert unknown.status == 422
    assert "000.99.99.H57" in (await unknown.json())["detail"]
    assert (await unknown.json())["errors"][0]["pointer"] == "/header/to/0/agency"
    level = await gateway.send(HUE, document(HUE, [{"agency": PROVINCE},
                                                   {"under": PROVINCE, "level": "hamlet"}]))
    assert level.status == 422
    assert (await level.json())["errors"][0]["pointer"] == "/header/to/1/level"
    only_self = await gateway.send(HUE, document(HUE, [{"agency": HUE}]))
    assert only_self.status == 422
    await assert_nothing_stored(gateway)


async def test_body_over_the_limit_is_413(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    envelope = document(HUE, [{"agency": PROVINCE}])
    envelope["body"]["content"] = "x" * (gw.settings.max_body_bytes + 10)
    response = await gw.client.post(
        "/api/v1/messages", data=io.BytesIO(orjson.dumps(envelope)),
        headers={**await gw.auth(HUE), "Content-Type": "application/json"},
    )
    assert response.status == 413
    assert response.content_type == "application/problem+json"
    await assert_nothing_stored(gw)


async def test_malformed_message_id_in_path_is_400(gateway: Gateway) -> None:
    response = await gateway.client.get("/api/v1/messages/not-a-uuid",
                                        headers=await gateway.auth(HUE))
    assert response.status == 400
    assert (await response.json())["errors"][0]["pointer"] == "path:id"
    missing = await gateway.client.get(f"/api/v1/messages/{uuid.uuid4()}",
                                       headers=await gateway.auth(HUE))
    assert missing.status == 404


async def test_inbox_is_paged_in_arrival_order(gateway: Gateway) -> None:
    ids = []
    for n in range(5):
        response = await gateway.send(HUE, document(HUE, [{"agency": PROVINCE}], f"Báo cáo {n}"))
        ids.append((await response.json())["id"])
    for message_id in ids:
        await gateway.wait_state(message_id, PROVINCE, "delivered")
    seen: list[str] = []
    after = 0
    headers = await gateway.auth(PROVINCE)
    while True:
        page = await (await gateway.client.get(f"/api/v1/inbox?limit=2&after={after}",
                                               headers=headers)).json()
        seen += [i["message_id"] for i in page["items"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    bad = await gateway.client.get("/api/v1/inbox?limit=0", headers=headers)
    assert bad.status == 422
    assert (await bad.json())["errors"][0]["pointer"] == "query:limit"
    # Acked messages leave the unread view.
    await gateway.client.post(f"/api/v1/inbox/{ids[0]}/ack", headers=headers)
    unread = await (await gateway.client.get("/api/v1/inbox?unread=true", headers=headers)).json()
    assert ids[0] not in {i["message_id"] for i in unread["items"]}
    assert len(unread["items"]) == 4


async def test_status_flows_back_to_the_sender_only(gateway: Gateway) -> None:
    sent = await gateway.send(HUE, document(HUE, [{"agency": PROVINCE}]))
    about = (await sent.json())["id"]
    await gateway.wait_state(about, PROVINCE, "delivered")
    status = {
        "kind": "status",
        "header": {"sender": PROVINCE, "to": [{"agency": HUE}]},
        "body": {"about": about, "code": "03", "at": "2026-11-25T09:00:00+07:00"},
    }
    response = await gateway.send(PROVINCE, status)
    assert response.status == 202, await response.text()
    status_id = (await response.json())["id"]
    await gateway.wait_state(status_id, HUE, "delivered")
    timeline = [e["event"] for e in await gateway.store.events(about)]
    assert "status_received" in timeline
    # A stranger cannot report on a message it never received...
    stranger = {**status, "header": {"sender": PHONG_DIEN, "to": [{"agency": HUE}]}}
    assert (await gateway.send(PHONG_DIEN, stranger)).status == 403
    # ...and a recipient cannot route a status anywhere but back to the sender.
    astray = {**status, "header": {"sender": PROVINCE, "to": [{"agency": PHONG_DIEN}]}}
    assert (await gateway.send(PROVINCE, astray)).status == 422


async def test_every_transition_is_an_audit_event(gateway: Gateway) -> None:
    response = await gateway.send(HUE, document(HUE, [{"agency": PROVINCE}]))
    message_id = (await response.json())["id"]
    await gateway.wait_state(message_id, PROVINCE, "delivered")
    await gateway.client.post(f"/api/v1/inbox/{message_id}/ack",
                              headers=await gateway.auth(PROVINCE))
    async with gateway.store.read() as conn:
        events = (await conn.execute(
            sa.select(audit_events.c.event).where(audit_events.c.message_id == message_id)
            .order_by(audit_events.c.id))).scalars().all()
    # The worker may record the delivery before the relay records the broker's confirm.
    assert events[0] == "accepted" and events[-1] == "read"
    assert sorted(events[1:3]) == ["delivered", "published"] and len(events) == 4


async def test_health_endpoints_need_no_token(gateway: Gateway) -> None:
    assert (await gateway.client.get("/health/live")).status == 200
    ready = await gateway.client.get("/health/ready")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {"store": "ok", "broker": "ok"}
