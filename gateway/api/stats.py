"""Dossier statistics (thống kê hồ sơ) in the API: per agency and per period, JSON or CSV.

``GET /api/v1/stats`` gives the calling agency its own rows (``agency=`` naming another agency
is 403); ``GET /api/v1/ops/stats`` gives operators every agency with a figure in the window
(or the one ``agency=`` names). Query: ``period`` (day, month, quarter, year; default month),
``from`` and ``to`` (dates, ``to`` excluded; widened to whole periods in Vietnam time; default
this year up to the end of the current period), ``format`` (json or csv; ``Accept: text/csv``
also gives CSV). The figures are defined in :mod:`gateway.stats`; ``lienthong stats verify``
checks them against the dossiers' raw steps.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from gateway.api.keys import AGENCY, CALENDAR, STORE
from gateway.api.routes import json_response
from gateway.envelope import AGENCY_CODE_RE
from gateway.errors import FieldError, Forbidden, SchemaViolation
from gateway.stats import BadWindow, Report, Window, csv_text, default_range, parse_day, window
from gateway.store import stats_rows
from gateway.store.store import utcnow

routes = web.RouteTableDef()

_KNOWN = frozenset({"period", "from", "to", "format", "agency"})


def _bad(name: str, detail: str) -> SchemaViolation:
    return SchemaViolation(detail, errors=[FieldError(f"query:{name}", detail)])


def query_window(query: Mapping[str, str]) -> Window:
    """The window the query asks for; a 422 naming the parameter otherwise."""
    unknown = sorted(set(query) - _KNOWN)
    if unknown:
        raise _bad(unknown[0], f"unknown query parameter {unknown[0]!r} "
                   f"(known: {', '.join(sorted(_KNOWN))})")
    try:
        period = query.get("period", "month")
        first, until = default_range(utcnow(), period)
        if "from" in query:
            first = parse_day("from", query["from"])
        if "to" in query:
            until = parse_day("to", query["to"])
        return window(period, first, until)
    except BadWindow as exc:
        raise _bad(exc.field, exc.detail) from None


def _agency_param(query: Mapping[str, str]) -> str | None:
    asked = query.get("agency")
    if asked is not None and not AGENCY_CODE_RE.fullmatch(asked):
        raise _bad("agency", f"{asked!r} is not an agency code like 000.00.00.H57")
    return asked


def _wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format")
    if fmt is not None:
        if fmt not in {"json", "csv"}:
            raise _bad("format", f"format must be json or csv, not {fmt!r}")
        return fmt == "csv"
    return "text/csv" in request.headers.get("Accept", "")


def _respond(request: web.Request, report: Report, agencies: list[str] | None
             ) -> web.Response:
    if _wants_csv(request):
        w = report.window
        name = (f"lienthong-stats-{w.period}-{w.start.date().isoformat()}-"
                f"{w.end.date().isoformat()}.csv")
        return web.Response(
            text=csv_text(report.rows(agencies)), content_type="text/csv", charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return json_response(report.document(agencies))


async def _report(request: web.Request, agency: str | None) -> Report:
    win = query_window(request.query)
    _wants_csv(request)  # a bad format is refused before any work
    return await stats_rows.served(request.app[STORE], win, request.app.get(CALENDAR),
                                   utcnow(), agency)


@routes.get("/api/v1/stats")
async def agency_stats(request: web.Request) -> web.Response:
    """The calling agency's figures, one row per period (zeros included)."""
    agency: str = request[AGENCY]
    asked = _agency_param(request.query)
    if asked is not None and asked != agency:
        raise Forbidden(f"agency {agency} can read its own statistics only, not {asked}'s",
                        errors=[FieldError("query:agency", "another agency")])
    report = await _report(request, agency)
    return _respond(request, report, [agency])


@routes.get("/api/v1/ops/stats")
async def ops_stats(request: web.Request) -> web.Response:
    """Every agency's figures (operators): the agencies with any figure in the window, one row
    per agency and period."""
    asked = _agency_param(request.query)
    report = await _report(request, asked)
    return _respond(request, report, None if asked is None else [asked])
