"""The audit trail's hash chain on SQLite and PostgreSQL: intact after real traffic; a changed
or deleted row is found and named; the trace route serves the timeline."""

from __future__ import annotations

import sqlalchemy as sa

from gateway.store.tables import audit_events
from tests.conftest import HUE, PHONG_DIEN, PROVINCE, Gateway, document


async def _traffic(gw: Gateway) -> str:
    response = await gw.send(HUE, document(HUE, [{"agency": PROVINCE}, {"agency": PHONG_DIEN}]))
    message_id = str((await response.json())["id"])
    await gw.wait_state(message_id, PROVINCE, "delivered")
    await gw.wait_state(message_id, PHONG_DIEN, "delivered")
    await gw.client.post(f"/api/v1/inbox/{message_id}/ack", headers=await gw.auth(PROVINCE))
    return message_id


async def test_chain_is_intact_after_traffic(gateway: Gateway) -> None:
    await _traffic(gateway)
    checked, broken = await gateway.store.verify_audit(batch=3)  # batches join up
    assert broken is None
    async with gateway.store.read() as conn:
        total = (await conn.execute(sa.select(sa.func.count()).select_from(audit_events)))
        assert checked == total.scalar_one() >= 7


async def test_a_changed_row_is_named(gateway: Gateway) -> None:
    message_id = await _traffic(gateway)
    async with gateway.store.write() as conn:
        target = (await conn.execute(
            sa.select(audit_events.c.id).where(audit_events.c.event == "read",
                                               audit_events.c.message_id == message_id)
        )).scalar_one()
        await conn.execute(audit_events.update().where(audit_events.c.id == target)
                           .values(agency=PHONG_DIEN))
    _checked, broken = await gateway.store.verify_audit()
    assert broken is not None
    assert (broken.event_id, broken.event) == (target, "read")
    assert "changed" in broken.reason


async def test_a_deleted_row_is_found_at_the_next_one(gateway: Gateway) -> None:
    await _traffic(gateway)
    async with gateway.store.write() as conn:
        ids = (await conn.execute(sa.select(audit_events.c.id).order_by(audit_events.c.id))
               ).scalars().all()
        await conn.execute(audit_events.delete().where(audit_events.c.id == ids[2]))
    _checked, broken = await gateway.store.verify_audit()
    assert broken is not None and broken.event_id == ids[3]
    assert "deleted" in broken.reason


async def test_deleting_the_newest_rows_is_found_too(gateway: Gateway) -> None:
    await _traffic(gateway)
    async with gateway.store.write() as conn:
        last = (await conn.execute(sa.select(sa.func.max(audit_events.c.id)))).scalar_one()
        await conn.execute(audit_events.delete().where(audit_events.c.id == last))
    _checked, broken = await gateway.store.verify_audit()
    assert broken is not None and broken.event_id == last


async def test_trace_shows_the_timeline_to_those_who_may_see_it(gateway: Gateway) -> None:
    message_id = await _traffic(gateway)
    sender_view = await (await gateway.client.get(
        f"/api/v1/messages/{message_id}/trace", headers=await gateway.auth(HUE))).json()
    events = [(e["event"], e["agency"]) for e in sender_view["events"]]
    assert events[0] == ("accepted", HUE)
    assert ("delivered", PROVINCE) in events and ("delivered", PHONG_DIEN) in events
    assert events[-1] == ("read", PROVINCE)
    recipient_view = await (await gateway.client.get(
        f"/api/v1/messages/{message_id}/trace", headers=await gateway.auth(PHONG_DIEN))).json()
    assert {e["agency"] for e in recipient_view["events"]} == {HUE, PHONG_DIEN}
    stranger = await gateway.client.get(f"/api/v1/messages/{message_id}/trace",
                                        headers=await gateway.auth("000.00.32.H57"))
    assert stranger.status == 403
