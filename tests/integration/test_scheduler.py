"""The dossier scheduler on the real store: overdue alerts once, even from two processes at
once, and dissolved agencies' dossiers moved to their successors with their due times; and
messages already queued for a dissolved agency redirected by the delivery worker."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import UTC, datetime, timedelta

from gateway.api.keys import CALENDAR
from gateway.directory import Directory
from gateway.scheduler import run_once
from tests.conftest import PHONG_DIEN, PROVINCE, Gateway, GatewayFactory
from tests.e2e.test_dossier_handover import CODE, COMMUNE, dossier, ok, step

DISSOLVED = "000.22.35.H57"  # a commune merged into COMMUNE for the redirection test


def dissolve(directory: Directory, code: str, successor: str) -> Directory:
    agencies = dict(directory.agencies)
    agencies[code] = dataclasses.replace(agencies[code], successor=successor)
    return Directory(directory.levels, agencies, directory.children)


async def started(gateway: Gateway) -> datetime:
    handover = await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "accept", about=handover))
    due = (await gateway.store.dossier(CODE)).due_at
    assert due is not None
    return due


async def test_overdue_alert_is_sent_once(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(broker=False)
    due = await started(gateway)
    assert await run_once(gateway.client.app, now=due - timedelta(days=30)) == []
    late = due + timedelta(hours=1)
    first = await run_once(gateway.client.app, now=late)
    assert [(e.code, e.step, e.level) for e in first] == [(CODE, "alert", "overdue")]
    assert await run_once(gateway.client.app, now=late + timedelta(hours=1)) == []
    message = await gateway.store.message(first[0].message_id)
    assert sorted(r.agency for r in message.recipients) == sorted([COMMUNE, PHONG_DIEN])
    steps = [e.step.value for e in await gateway.store.dossier_events(CODE)]
    assert steps == ["handover", "accept", "alert"]


async def test_due_soon_then_overdue_on_working_days(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(broker=False)
    due = await started(gateway)
    # The district's step is 10 working days on the route, counted on the real calendar.
    handover = (await gateway.store.dossier_events(CODE))[0]
    calendar = gateway.client.app[CALENDAR]
    assert due == calendar.add_working_days(handover.at, 10)
    assert calendar.working_days_between(handover.at, due) == 10
    soon = await run_once(gateway.client.app, now=due - timedelta(hours=2))
    late = await run_once(gateway.client.app, now=due + timedelta(minutes=1))
    assert [e.level for e in soon + late] == ["due_soon", "overdue"]
    alert = await gateway.store.message(late[0].message_id)
    body = json.loads(alert.envelope)["body"]
    assert (body["action"], body["alert"], body["due_at"][:10]) == (
        "alert", "overdue", due.astimezone(UTC).isoformat()[:10])


async def test_alerted_dossiers_do_not_crowd_out_the_others(
    make_gateway: GatewayFactory,
) -> None:
    """More overdue dossiers than a pass reads: each pass reaches the ones not alerted yet (it
    used to read the same soonest-due, already alerted page every time)."""
    gateway = await make_gateway(broker=False)
    codes = [f"{COMMUNE}-261118-00{n}" for n in (51, 52, 53)]
    for code in codes:
        handover = await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN, code=code))
        await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "accept", about=handover,
                                           code=code))
    dues = [(await gateway.store.dossier(c)).due_at for c in codes]
    assert all(dues)
    due = max(d for d in dues if d is not None)
    late = due + timedelta(hours=1)
    app = gateway.client.app
    passes = [await run_once(app, now=late, page=2) for _ in range(3)]
    assert [len(p) for p in passes] == [2, 1, 0]
    assert sorted(e.code for p in passes for e in p) == codes
    for code in codes:
        alerts = [e.alert for e in await gateway.store.dossier_events(code) if e.alert]
        assert alerts == ["overdue"], code


async def test_a_returned_dossier_past_its_appointment_is_alerted_once(
    make_gateway: GatewayFactory,
) -> None:
    """Returned (trả lại) to the commune, no step runs: the appointment (ngày hẹn trả) is what
    it is late against, as the statistics count it; the commune is told once it passes."""
    gateway = await make_gateway(broker=False)
    handover = await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "return", about=handover,
                                       reason="Thiếu bản sao giấy chứng nhận"))
    row = await gateway.store.dossier(CODE)
    assert (row.holder, row.due_at) == (COMMUNE, row.appointment_at)
    app = gateway.client.app
    assert await run_once(app, now=row.appointment_at - timedelta(days=30)) == []
    late = row.appointment_at + timedelta(hours=1)
    alerts = await run_once(app, now=late)
    assert [(e.code, e.level) for e in alerts] == [(CODE, "overdue")]
    message = await gateway.store.message(alerts[0].message_id)
    assert [r.agency for r in message.recipients] == [COMMUNE]
    assert await run_once(app, now=late + timedelta(days=1)) == []
    # Handed over again, the new step has its own due time and its own alerts.
    await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    again = await gateway.store.dossier(CODE)
    assert again.due_at is not None and again.due_at < row.appointment_at
    assert [e.level for e in await run_once(app, now=again.due_at + timedelta(hours=1))] == [
        "overdue"]


async def test_two_schedulers_at_once_alert_once(make_gateway: GatewayFactory) -> None:
    one = await make_gateway(broker=False)
    two = await make_gateway(broker=False)  # another process on the same database
    due = await started(one)
    late = due + timedelta(hours=1)
    results = await asyncio.gather(
        *(run_once(g.client.app, now=late) for g in (one, two, one, two))
    )
    assert sum(len(r) for r in results) == 1
    alerts = [e for e in await one.store.dossier_events(CODE) if e.step.value == "alert"]
    assert len(alerts) == 1


async def test_dossiers_of_a_dissolved_agency_move_to_its_successor(
    make_gateway: GatewayFactory, sample_directory: Directory
) -> None:
    first = await make_gateway(broker=False)
    due = await started(first)
    merged = dissolve(sample_directory, PHONG_DIEN, PROVINCE)
    later = await make_gateway(broker=False, directory=merged)
    moved = await run_once(later.client.app, now=due - timedelta(days=5))
    assert [(e.step, e.level) for e in moved] == [("transfer", None)]
    row = await later.store.dossier(CODE)
    assert (row.holder, row.due_at) == (PROVINCE, due)
    assert [(h.agency, h.until is None) for h in row.holds] == [
        (COMMUNE, False), (PHONG_DIEN, False), (PROVINCE, True)]
    # The province now acts on it; Phong Điền's stretch stays Phong Điền's.
    await ok(later, PROVINCE, step(PROVINCE, COMMUNE, "result"))
    assert (await later.store.dossier(CODE)).phase == "completed"


async def test_a_successor_is_alerted_for_a_step_its_predecessor_was_alerted_for(
    make_gateway: GatewayFactory, sample_directory: Directory
) -> None:
    """Phong Điền was told the dossier is overdue, then merged into the province: the province,
    which now must act, is told too (once), not left to find out."""
    first = await make_gateway(broker=False)
    due = await started(first)
    late = due + timedelta(hours=1)
    assert [e.level for e in await run_once(first.client.app, now=late)] == ["overdue"]
    merged = dissolve(sample_directory, PHONG_DIEN, PROVINCE)
    later = await make_gateway(broker=False, directory=merged)
    moved = await run_once(later.client.app, now=late + timedelta(hours=1))
    assert [(e.step, e.level) for e in moved] == [("transfer", None), ("alert", "overdue")]
    alert = await later.store.message(moved[1].message_id)
    assert sorted(r.agency for r in alert.recipients) == sorted([COMMUNE, PROVINCE])
    assert await run_once(later.client.app, now=late + timedelta(hours=2)) == []


async def test_queued_message_for_a_dissolved_agency_is_redirected(
    make_gateway: GatewayFactory, sample_directory: Directory
) -> None:
    # Sent while the commune existed; nobody consumed it before the merger.
    before = await make_gateway(workers=False)
    sent = await before.send(PROVINCE, {
        "kind": "document", "header": {"sender": PROVINCE, "to": [{"agency": DISSOLVED}]},
        "body": {"number": "7", "notation": "TB-UBND", "type": {"code": "TB", "name": "Thông báo"},
                 "subject": "Thông báo lịch tiếp công dân",
                 "promulgation": {"place": "Huế", "date": "2026-11-20"}},
    })
    message_id = (await sent.json())["id"]
    after = await make_gateway(directory=dissolve(sample_directory, DISSOLVED, COMMUNE))
    await after.wait_state(message_id, COMMUNE, "delivered")
    row = await after.store.message(message_id)
    states = {r.agency: (r.state, r.addressed_as) for r in row.recipients}
    assert states == {DISSOLVED: ("redirected", None), COMMUNE: ("delivered", DISSOLVED)}
    events = [(e["event"], e["agency"]) for e in await after.store.events(message_id)]
    assert ("redirected", DISSOLVED) in events


async def test_successor_accepts_a_handover_queued_for_a_dissolved_agency(
    make_gateway: GatewayFactory, sample_directory: Directory
) -> None:
    """The hand-over was queued for the district; the district level is abolished before
    delivery. The province (its successor) gets it and accepts it before any scheduler pass:
    the transfer is recorded just before the accept, and the district's due time stays."""
    before = await make_gateway(workers=False)
    handover = await ok(before, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    due = (await before.store.dossier(CODE)).due_at
    after = await make_gateway(directory=dissolve(sample_directory, PHONG_DIEN, PROVINCE))
    await after.wait_state(handover, PROVINCE, "delivered")
    await ok(after, PROVINCE, step(PROVINCE, COMMUNE, "accept", about=handover))
    row = await after.store.dossier(CODE)
    assert (row.phase, row.holder, row.due_at) == ("held", PROVINCE, due)
    steps = [(e.step.value, e.actor, e.to) for e in await after.store.dossier_events(CODE)]
    assert steps == [("handover", COMMUNE, PHONG_DIEN), ("transfer", PHONG_DIEN, PROVINCE),
                     ("accept", PROVINCE, None)]
    trace = await (await after.client.get(f"/api/v1/dossiers/{CODE}/trace",
                                          headers=await after.auth(COMMUNE))).json()
    assert [s["step"] for s in trace["steps"]] == ["handover", "transfer", "accept"]


async def test_route_step_of_a_dissolved_agency_keeps_its_working_days(
    make_gateway: GatewayFactory, sample_directory: Directory
) -> None:
    """The route still names the district; the hand-over goes to the province that took
    over, and its step is the district's 10 working days, not the appointment date."""
    gateway = await make_gateway(broker=False,
                                 directory=dissolve(sample_directory, PHONG_DIEN, PROVINCE))
    await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    handover = (await gateway.store.dossier_events(CODE))[0]
    assert handover.to == PROVINCE
    calendar = gateway.client.app[CALENDAR]
    assert handover.due_at == calendar.add_working_days(handover.at, 10)
