"""Dossiers (hồ sơ liên thông) in the API: where a dossier is, who held it for how long, and
whether it is on time. Steps are sent as messages (``POST /api/v1/messages`` with kind
``dossier`` or ``dossier_status``); these routes only read."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.api.keys import AGENCY, CALENDAR, SETTINGS, STORE
from gateway.api.routes import int_param, json_response
from gateway.dossiers import Hold, WorkingDays
from gateway.envelope import AGENCY_CODE_RE, DOSSIER_CODE_RE
from gateway.errors import FieldError, Forbidden, MalformedInput, SchemaViolation
from gateway.stats import completion, hold_days
from gateway.store.dossier_rows import DossierRow
from gateway.store.store import utcnow

routes = web.RouteTableDef()


def timeliness(row: DossierRow, now: datetime) -> str:
    """Against the first appointment date (an apology's new date does not make a late dossier
    on time): ``early`` / ``on_time`` / ``late`` once completed (early: before the appointment
    day), ``withdrawn`` when it ended without a result, else ``on_time`` or ``overdue``."""
    if row.completed_at is not None:  # one rule with the statistics (days in Vietnam time)
        return completion(row.completed_at, row.appointment_at)
    if row.phase == "withdrawn":  # ended without a result: neither on time nor late
        return "withdrawn"
    return "overdue" if now > row.appointment_at else "on_time"


def _days(calendar: WorkingDays | None, start: datetime, end: datetime) -> float | None:
    return None if calendar is None else round(hold_days(calendar, start, end), 2)


def hold_view(hold: Hold, calendar: WorkingDays | None, now: datetime) -> dict[str, Any]:
    end = hold.until or now
    view: dict[str, Any] = {
        "agency": hold.agency, "since": hold.since, "until": hold.until,
        "accepted": hold.accepted, "working_days": _days(calendar, hold.since, end),
    }
    if hold.due_at is not None:
        view["due_at"] = hold.due_at
        view["late"] = end > hold.due_at
    return view


def _code(request: web.Request) -> str:
    code = request.match_info["code"]
    if not DOSSIER_CODE_RE.fullmatch(code):
        raise MalformedInput(
            f"{code!r} is not a dossier code (e.g. 000.21.35.H57-261118-0042)",
            errors=[FieldError("path:code", "agency code, yymmdd, sequence")],
        )
    return code


async def visible_dossier(request: web.Request) -> DossierRow:
    """The dossier, for an agency that received it or held it (or was handed it)."""
    agency: str = request[AGENCY]
    row = await request.app[STORE].dossier(_code(request))
    if agency != row.receiving_agency and agency not in {h.agency for h in row.holds}:
        raise Forbidden(f"agency {agency} has no part in dossier {row.code}")
    return row


def dossier_view(row: DossierRow, calendar: WorkingDays | None, now: datetime
                 ) -> dict[str, Any]:
    return {
        "code": row.code,
        "procedure_code": row.procedure_code,
        "receiving_agency": row.receiving_agency,
        "received_at": row.received_at,
        "appointment_at": row.appointment_at,
        "new_appointment_at": row.new_appointment_at,
        "phase": row.phase,
        "holder": row.holder,
        "responsible": row.responsible,
        "pending_handover": row.pending_message,
        "due_at": row.due_at,
        "completed_at": row.completed_at,
        "timeliness": timeliness(row, now),
        "handovers": row.handovers,
        "returns": row.returns,
        "apologies": row.apologies,
        "holds": [hold_view(h, calendar, now) for h in row.holds],
    }


@routes.get("/api/v1/dossiers/{code}")
async def get_dossier(request: web.Request) -> web.Response:
    """Where the dossier is now, who held it for how many working days, on time or not."""
    row = await visible_dossier(request)
    return json_response(dossier_view(row, request.app.get(CALENDAR), utcnow()))


@routes.get("/api/v1/dossiers/{code}/trace")
async def get_dossier_trace(request: web.Request) -> web.Response:
    """Every step of the dossier, oldest first, each with the message that carried it; and
    who held it for how many working days, where it is now and whether it is on time."""
    row = await visible_dossier(request)
    calendar, now = request.app.get(CALENDAR), utcnow()
    steps = [
        {k: v for k, v in {
            "seq": e.seq, "step": e.step.value, "actor": e.actor, "to": e.to, "at": e.at,
            "message_id": e.message_id, "about": e.about, "due_at": e.due_at,
            "appointment_at": e.appointment_at, "reason": e.reason, "alert": e.alert,
        }.items() if v is not None}
        for e in await request.app[STORE].dossier_events(row.code)
    ]
    return json_response({
        "code": row.code, "phase": row.phase, "responsible": row.responsible,
        "timeliness": timeliness(row, now), "steps": steps,
        "holds": [hold_view(h, calendar, now) for h in row.holds],
    })


@routes.get("/api/v1/ops/dossiers")
async def ops_dossiers(request: web.Request) -> web.Response:
    """Operators: open dossiers whose running step is overdue (``state=overdue``, the default)
    or falls due within the warning window (``state=due_soon``), soonest first, optionally of
    one responsible agency."""
    state = request.query.get("state", "overdue")
    if state not in {"overdue", "due_soon"}:
        raise SchemaViolation("query parameter state must be overdue or due_soon",
                              errors=[FieldError("query:state", "overdue or due_soon")])
    agency = request.query.get("agency")
    if agency is not None and not AGENCY_CODE_RE.fullmatch(agency):
        raise SchemaViolation("query parameter agency must be an agency code",
                              errors=[FieldError("query:agency", "e.g. 000.00.35.H57")])
    limit = int_param(request, "limit", 100, 1, 1000)
    now = utcnow()
    calendar = request.app.get(CALENDAR)
    warning = request.app[SETTINGS].alert_warning_days
    horizon = calendar.add_working_days(now, warning) if calendar and warning else now
    store = request.app[STORE]
    codes = await store.open_dossiers(
        due_before=now if state == "overdue" else horizon,
        due_after=None if state == "overdue" else now,
        responsible=None if agency is None else [agency], limit=limit,
    )
    rows = await store.dossier_rows(codes)
    return json_response({"state": state, "as_of": now, "items": [
        {"code": r.code, "responsible": r.responsible, "receiving_agency": r.receiving_agency,
         "phase": r.phase, "due_at": r.due_at, "appointment_at": r.appointment_at,
         "timeliness": timeliness(r, now), "apologies": r.apologies}
        for r in rows
    ]})
