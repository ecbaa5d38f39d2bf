"""Dossier statistics over HTTP: steps sent through the API, figures read back as JSON and CSV,
an agency kept to its own rows, bad query parameters named, and the operators' view."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Any

from gateway.api.keys import CALENDAR
from gateway.calendar import VN_TZ
from gateway.stats import COLUMNS, Period, window
from gateway.store import stats_rows
from gateway.store.store import utcnow
from tests.conftest import PHONG_DIEN, PROVINCE, Gateway, GatewayFactory

COMMUNE = "000.21.35.H57"
CODE = f"{COMMUNE}-261118-0777"


def handover(received: datetime, appointment: datetime) -> dict[str, Any]:
    return {
        "kind": "dossier",
        "header": {"sender": COMMUNE, "to": [{"agency": PHONG_DIEN}]},
        "body": {
            "code": CODE,
            "procedure_code": "1.001612.000.00.00.H57",
            "procedure_name": "Cấp giấy phép xây dựng nhà ở riêng lẻ",
            "applicant": {"name": "Trần Thị Bình"},
            "receiving_agency": COMMUNE,
            "received_at": received.isoformat(),
            "appointment_at": appointment.isoformat(),
            "route": [{"agency": PHONG_DIEN, "working_days": 10}],
            "current_step": 0,
        },
    }


def step(sender: str, to: str, action: str, **body: Any) -> dict[str, Any]:
    return {"kind": "dossier_status", "header": {"sender": sender, "to": [{"agency": to}]},
            "body": {"dossier": CODE, "action": action, "at": utcnow().isoformat(), **body}}


async def ok(gateway: Gateway, sender: str, envelope: dict[str, Any]) -> str:
    response = await gateway.send(sender, envelope)
    assert response.status == 202, await response.text()
    return str((await response.json())["id"])


def days_around_now() -> dict[str, str]:
    """Yesterday to the day after tomorrow (Vietnam time): whatever the clock, the steps just
    sent fall inside."""
    today = utcnow().astimezone(VN_TZ).date()
    return {"period": "day", "from": (today - timedelta(days=1)).isoformat(),
            "to": (today + timedelta(days=2)).isoformat()}


async def history(gateway: Gateway) -> None:
    """The commune hands a dossier to the district, which accepts it and sends the result."""
    now = utcnow().astimezone(VN_TZ)
    first = await ok(gateway, COMMUNE, handover(now - timedelta(hours=1),
                                                now + timedelta(days=10)))
    await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "accept", about=first))
    await ok(gateway, PHONG_DIEN, step(PHONG_DIEN, COMMUNE, "result"))


def totals(rows: list[dict[str, Any]], agency: str) -> dict[str, int]:
    found = {name: 0 for name in COLUMNS[4:-1]}
    for row in rows:
        if row["agency"] == agency:
            for name in found:
                found[name] += int(row[name])
    return found


async def get(gateway: Gateway, path: str, token: str, **query: str) -> Any:
    return await gateway.client.get(path, params=query,
                                    headers={"Authorization": f"Bearer {token}"})


async def test_an_agency_reads_its_own_figures_as_json_and_csv(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(broker=False)
    await history(gateway)
    query = days_around_now()
    response = await get(gateway, "/api/v1/stats", await gateway.token(PHONG_DIEN), **query)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert (body["period"], body["from"], body["to"]) == ("day", query["from"], query["to"])
    assert [r["period"] for r in body["rows"]] == [
        s.key for s in window(Period.DAY, *(datetime.fromisoformat(query[k]).date()
                                            for k in ("from", "to"))).spans]
    assert {r["agency"] for r in body["rows"]} == {PHONG_DIEN}
    assert totals(body["rows"], PHONG_DIEN) == totals([], PHONG_DIEN) | {
        "accepted": 1, "completed_early": 1, "steps_ended": 1}
    days = [r["avg_working_days_per_step"] for r in body["rows"] if r["steps_ended"]]
    if CALENDAR in gateway.client.app:
        assert len(days) == 1 and days[0] >= 0
    else:  # no calendar configured: no working days to average
        assert days == [None]
    # The same rows as CSV, asked for by parameter or by Accept header.
    commune = await gateway.token(COMMUNE)
    by_param = await get(gateway, "/api/v1/stats", commune, **query, format="csv")
    by_accept = await gateway.client.get("/api/v1/stats", params=query, headers={
        "Authorization": f"Bearer {commune}", "Accept": "text/csv"})
    for response in (by_param, by_accept):
        assert response.status == 200, await response.text()
        assert response.content_type == "text/csv"
        assert "attachment" in response.headers["Content-Disposition"]
    text = await by_param.text()
    assert text == await by_accept.text()
    lines = list(csv.reader(io.StringIO(text)))
    assert tuple(lines[0]) == COLUMNS
    rows = [dict(zip(COLUMNS, line, strict=True)) for line in lines[1:]]
    assert len(rows) == 3 and {r["agency"] for r in rows} == {COMMUNE}
    assert totals(rows, COMMUNE) == totals([], COMMUNE) | {"received": 1, "handed_over": 1,
                                                           "steps_ended": 1}
    # What the API serves agrees with the dossier's raw steps folded again.
    win = window(Period.MONTH, *(datetime.fromisoformat(query[k]).date()
                                 for k in ("from", "to")))
    found = await stats_rows.verify(gateway.store, win, gateway.client.app.get(CALENDAR),
                                    utcnow())
    assert found.ok, found.summary()
    assert found.dossiers == 1


async def test_other_agencies_are_forbidden_and_bad_queries_named(
    make_gateway: GatewayFactory,
) -> None:
    gateway = await make_gateway(broker=False)
    token = await gateway.token(COMMUNE)
    response = await get(gateway, "/api/v1/stats", token, agency=PHONG_DIEN)
    problem = await response.json()
    assert response.status == 403, problem
    assert problem["errors"][0]["pointer"] == "query:agency"
    assert (await get(gateway, "/api/v1/stats", token, agency=COMMUNE)).status == 200
    for query, pointer in [
        ({"period": "week"}, "query:period"),
        ({"from": "2026-02-30"}, "query:from"),
        ({"from": "26-01-01"}, "query:from"),
        ({"from": "2026-03-01", "to": "2026-02-01"}, "query:to"),
        ({"to": "tomorrow"}, "query:to"),
        ({"format": "xml"}, "query:format"),
        ({"agency": "H57"}, "query:agency"),
        ({"perod": "day"}, "query:perod"),
        ({"period": "day", "from": "2020-01-01", "to": "2026-01-01"}, "query:from"),
    ]:
        response = await get(gateway, "/api/v1/stats", token, **query)
        problem = await response.json()
        assert response.status == 422, (query, problem)
        assert response.content_type == "application/problem+json"
        assert [e["pointer"] for e in problem["errors"]] == [pointer], query
    # Operators have their own route; an operator is no agency.
    operator = (await gateway.store.issue_operator_credential("an.nguyen"))[1]
    assert (await get(gateway, "/api/v1/stats", operator)).status == 403
    assert (await get(gateway, "/api/v1/ops/stats", token)).status == 403


async def test_operators_see_every_agency(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(broker=False)
    await history(gateway)
    operator = (await gateway.store.issue_operator_credential("an.nguyen"))[1]
    query = days_around_now()
    response = await get(gateway, "/api/v1/ops/stats", operator, **query)
    assert response.status == 200, await response.text()
    rows = (await response.json())["rows"]
    assert [r["agency"] for r in rows] == [PHONG_DIEN] * 3 + [COMMUNE] * 3
    assert totals(rows, COMMUNE)["received"] == 1
    assert totals(rows, PHONG_DIEN)["completed_early"] == 1
    only = await get(gateway, "/api/v1/ops/stats", operator, **query, agency=PROVINCE,
                     format="csv")
    assert only.status == 200
    lines = (await only.text()).splitlines()
    assert len(lines) == 4 and all(line.startswith(f"{PROVINCE},") for line in lines[1:])
    bad = await get(gateway, "/api/v1/ops/stats", operator, period="fortnight")
    assert bad.status == 422
    assert (await bad.json())["errors"][0]["pointer"] == "query:period"
