"""Dossier hand-over through the API: every step is a message, the state is the fold of the
steps, illegal steps are refused and change nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from gateway.api.keys import CALENDAR
from tests.conftest import PHONG_DIEN, PROVINCE, Gateway, GatewayFactory

COMMUNE = "000.21.35.H57"  # a commune of Phong Điền
OTHER_COMMUNE = "000.22.35.H57"
CODE = f"{COMMUNE}-261118-0042"
# Relative to today, so that a dossier finished now is on time whenever the suite runs.
APPOINTMENT = (datetime.now(UTC) + timedelta(days=60)).astimezone(
    timezone(timedelta(hours=7))).strftime("%Y-%m-%dT17:00:00+07:00")


def dossier(sender: str, to: str, *, code: str = CODE, step: int = 0) -> dict[str, Any]:
    return {
        "kind": "dossier",
        "header": {"sender": sender, "to": [{"agency": to}]},
        "body": {
            "code": code,
            "procedure_code": "1.001612.000.00.00.H57",
            "procedure_name": "Cấp giấy phép xây dựng nhà ở riêng lẻ",
            "applicant": {"name": "Trần Thị Bình", "identity": "046190001234",
                          "phone": "0905123456"},
            "receiving_agency": code.split("-")[0],
            "received_at": "2026-11-18T08:30:00+07:00",
            "appointment_at": APPOINTMENT,
            "route": [{"agency": PHONG_DIEN, "working_days": 10},
                      {"agency": PROVINCE, "working_days": 5}],
            "current_step": step,
        },
    }


def step(sender: str, to: str, action: str, *, code: str = CODE, **body: Any) -> dict[str, Any]:
    return {
        "kind": "dossier_status",
        "header": {"sender": sender, "to": [{"agency": to}]},
        "body": {"dossier": code, "action": action, "at": "2026-11-20T09:00:00+07:00", **body},
    }


async def ok(gateway: Gateway, sender: str, envelope: dict[str, Any]) -> str:
    response = await gateway.send(sender, envelope)
    assert response.status == 202, await response.text()
    return str((await response.json())["id"])


async def refused(gateway: Gateway, sender: str, envelope: dict[str, Any], status: int,
                  pointer: str) -> None:
    before = await gateway.store.dossier_events(CODE)
    response = await gateway.send(sender, envelope)
    problem = await response.json()
    assert response.status == status, problem
    assert problem["errors"][0]["pointer"] == pointer, problem
    assert await gateway.store.dossier_events(CODE) == before


async def view(gateway: Gateway, agency: str, code: str = CODE) -> dict[str, Any]:
    response = await gateway.client.get(f"/api/v1/dossiers/{code}",
                                        headers=await gateway.auth(agency))
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def test_handover_accept_result(gateway: Gateway) -> None:
    handover = await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    await gateway.wait_state(handover, PHONG_DIEN, "delivered")
    seen = await view(gateway, COMMUNE)
    assert (seen["phase"], seen["responsible"], seen["holder"]) == ("in_transit", PHONG_DIEN,
                                                                    None)
    accept = await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "accept", about=handover))
    await gateway.wait_state(accept, COMMUNE, "delivered")  # the accept travels back
    assert (await view(gateway, PHONG_DIEN))["holder"] == PHONG_DIEN
    result = await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "result"))
    await gateway.wait_state(result, COMMUNE, "delivered")
    done = await view(gateway, COMMUNE)
    assert done["phase"] == "completed" and done["timeliness"] in {"early", "on_time"}
    assert [(h["agency"], h["accepted"]) for h in done["holds"]] == [
        (COMMUNE, True), (PHONG_DIEN, True)]
    trace = await (await gateway.client.get(f"/api/v1/dossiers/{CODE}/trace",
                                            headers=await gateway.auth(COMMUNE))).json()
    assert [(s["seq"], s["step"], s["actor"]) for s in trace["steps"]] == [
        (1, "handover", COMMUNE), (2, "accept", PHONG_DIEN), (3, "result", PHONG_DIEN)]
    # The trace says who held it for how long and where it is, as the dossier view does.
    assert (trace["phase"], trace["responsible"], trace["timeliness"]) == (
        "completed", done["responsible"], done["timeliness"])
    assert trace["holds"] == done["holds"]
    calendar = gateway.client.app[CALENDAR]
    first, last = done["holds"][0], done["holds"][-1]
    span = calendar.working_time(datetime.fromisoformat(first["since"]),
                                 datetime.fromisoformat(last["until"]))
    assert sum(h["working_days"] for h in done["holds"]) == pytest.approx(span, abs=0.02)
    # Completing twice is refused, and changes nothing.
    await refused(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "result"), 409, "/body/action")


async def test_illegal_steps_change_nothing(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(broker=False)
    # Only the receiving agency can start a dossier it received.
    response = await gateway.send(OTHER_COMMUNE, dossier(OTHER_COMMUNE, PHONG_DIEN))
    assert response.status == 403
    handover = await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    # Accepting a dossier that was never sent to you.
    await refused(gateway, PROVINCE, step(PROVINCE, COMMUNE, "accept", about=handover), 403,
                  "/body/about")
    # Handing over a dossier in transit; handing it to two agencies.
    await refused(gateway, COMMUNE, dossier(COMMUNE, PROVINCE), 409, "/body/dossier")
    two = dossier(COMMUNE, PHONG_DIEN)
    two["header"]["to"].append({"agency": PROVINCE})
    await refused(gateway, COMMUNE, two, 422, "/header/to")
    # A result from an agency that does not hold it.
    await refused(gateway, COMMUNE, step(COMMUNE, PHONG_DIEN, "result"), 409, "/body/dossier")
    # The accept goes back to who handed it over, not elsewhere.
    await refused(gateway, PHONG_DIEN, step(PHONG_DIEN, PROVINCE, "accept", about=handover),
                  422, "/header/to")
    # Another agency cannot read it.
    response = await gateway.client.get(f"/api/v1/dossiers/{CODE}",
                                        headers=await gateway.auth(PROVINCE))
    assert response.status == 403


async def test_return_passing_on_and_apology(gateway: Gateway) -> None:
    # Through the real broker: every step is a message delivered like any other.
    first = await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "return", about=first,
                                       reason="Thiếu bản vẽ thiết kế"))
    back = await view(gateway, COMMUNE)
    assert (back["phase"], back["holder"], back["returns"]) == ("held", COMMUNE, 1)
    # Completed, the commune hands it over again; the district passes it on to the province.
    second = await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "accept", about=second))
    up = await ok(gateway, PHONG_DIEN, dossier(COMMUNE, PROVINCE, step=1) | {
        "header": {"sender": PHONG_DIEN, "to": [{"agency": PROVINCE}]}})
    await ok(gateway, PROVINCE, step(PROVINCE, PHONG_DIEN, "accept", about=up))
    # The province is late and apologises to the commune where the citizen waits.
    await ok(gateway, PROVINCE, step(PROVINCE, COMMUNE, "apology", reason="Chờ ý kiến sở",
                                     appointment_at="2026-12-16T17:00:00+07:00"))
    await ok(gateway, PROVINCE, step(PROVINCE, COMMUNE, "result"))
    done = await view(gateway, COMMUNE)
    assert done["apologies"] == 1 and done["new_appointment_at"].startswith("2026-12-16")
    assert [h["agency"] for h in done["holds"]] == [COMMUNE, PHONG_DIEN, COMMUNE, PHONG_DIEN,
                                                    PROVINCE]
    trace = await (await gateway.client.get(f"/api/v1/dossiers/{CODE}/trace",
                                            headers=await gateway.auth(COMMUNE))).json()
    for s in trace["steps"]:  # each step reached the agency it was for
        message = await gateway.store.message(s["message_id"])
        for r in message.recipients:
            await gateway.wait_state(message.id, r.agency, "delivered")
    # The province's step was due 5 working days after its hand-over (when a calendar runs).
    assert done["holds"][-1]["accepted"] is True


async def test_progress_to_a_portal_is_not_a_handover(make_gateway: GatewayFactory) -> None:
    # Found with the one-stop-shop adapter: a portal follows a dossier, it never holds it.
    gateway = await make_gateway(broker=False)
    portal = "000.20.01.H57"  # Cổng dịch vụ công tỉnh
    handover = await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    await ok(gateway, COMMUNE, dossier(COMMUNE, portal))
    seen = await view(gateway, COMMUNE)
    assert (seen["phase"], seen["responsible"], seen["pending_handover"]) == (
        "in_transit", PHONG_DIEN, handover)
    mixed = dossier(COMMUNE, portal)
    mixed["header"]["to"].append({"agency": PROVINCE})
    await refused(gateway, COMMUNE, mixed, 422, "/header/to")
    # The district's step is still its to take.
    await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "accept", about=handover))


async def test_operators_see_overdue_and_due_soon_dossiers(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(broker=False)
    late = dossier(COMMUNE, PHONG_DIEN)
    late["body"].update({"route": [], "received_at": "2026-10-01T08:00:00+07:00",
                         "appointment_at": "2026-10-20T17:00:00+07:00"})
    await ok(gateway, COMMUNE, late)  # no route step: due at the appointment, long past
    await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN, code=f"{COMMUNE}-261118-0043"))
    _, token = await gateway.store.issue_operator_credential("trực ca")
    headers = {"Authorization": f"Bearer {token}"}
    overdue = await (await gateway.client.get("/api/v1/ops/dossiers", headers=headers)).json()
    assert [(i["code"], i["responsible"], i["timeliness"]) for i in overdue["items"]] == [
        (CODE, PHONG_DIEN, "overdue")]
    mine = await gateway.client.get(f"/api/v1/ops/dossiers?agency={PROVINCE}", headers=headers)
    assert (await mine.json())["items"] == []
    bad = await gateway.client.get("/api/v1/ops/dossiers?state=late", headers=headers)
    assert bad.status == 422 and (await bad.json())["errors"][0]["pointer"] == "query:state"
    # Agencies do not get the operators' view.
    agency = await gateway.client.get("/api/v1/ops/dossiers", headers=await gateway.auth(COMMUNE))
    assert agency.status == 403


async def test_a_withdrawn_dossier_ends_without_a_result(make_gateway: GatewayFactory) -> None:
    """The citizen withdraws the dossier at the commune (rút hồ sơ) while the district holds
    it: it ends there, the district is told, and nothing more can happen to it."""
    gateway = await make_gateway(broker=False)
    handover = await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "accept", about=handover))
    # A reason is required; an agency with no part in it cannot withdraw it.
    await refused(gateway, COMMUNE, step(COMMUNE, PHONG_DIEN, "withdraw"), 422, "/body")
    await refused(gateway, PROVINCE, step(PROVINCE, COMMUNE, "withdraw", reason="x"), 403,
                  "/body/dossier")
    withdrawn = await ok(gateway, COMMUNE, step(COMMUNE, PHONG_DIEN, "withdraw",
                                                reason="Công dân có đơn xin rút hồ sơ"))
    message = await gateway.store.message(withdrawn)
    assert [r.agency for r in message.recipients] == [PHONG_DIEN]
    seen = await view(gateway, PHONG_DIEN)
    assert (seen["phase"], seen["timeliness"], seen["responsible"], seen["due_at"]) == (
        "withdrawn", "withdrawn", None, None)
    assert all(h["until"] is not None for h in seen["holds"])
    # Closed: no result, no second withdrawal, no hand-over.
    await refused(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "result"), 409, "/body/action")
    await refused(gateway, COMMUNE, step(COMMUNE, PHONG_DIEN, "withdraw", reason="x"), 409,
                  "/body/action")
    assert await gateway.store.open_dossiers() == []


async def test_the_agency_that_must_act_may_stop_processing(make_gateway: GatewayFactory
                                                           ) -> None:
    """Dừng xử lý: the district, to which the dossier was handed, stops it; the commune where
    the citizen waits is told."""
    gateway = await make_gateway(broker=False)
    await ok(gateway, COMMUNE, dossier(COMMUNE, PHONG_DIEN))
    stopped = await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "withdraw",
                                                 reason="Dừng xử lý theo quyết định số 12"))
    message = await gateway.store.message(stopped)
    assert [r.agency for r in message.recipients] == [COMMUNE]
    assert (await view(gateway, COMMUNE))["phase"] == "withdrawn"
