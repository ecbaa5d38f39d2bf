"""Dossier statistics from the store (see :mod:`gateway.stats` for what each figure means).

:func:`aggregate` is what the API serves: SQL aggregates over the projection (``dossiers``,
``dossier_holds``) and the raw steps (``dossier_events``), grouped by agency and by period in
the database. :func:`histories` streams every dossier's raw steps for the recomputation
(:class:`gateway.stats.Recount`). :func:`verify` runs both in one read snapshot, so a step
written meanwhile is seen by both or by neither.

Periods are named in SQL exactly as :func:`gateway.stats.period_key` names them, from the
instant's Vietnam time: SQLite keeps timestamps as UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``,
see :class:`~gateway.store.tables.UTCDateTime`) and PostgreSQL as ``timestamptz``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.dossiers import Event, Step, WorkingDays
from gateway.stats import (
    Period,
    Recount,
    Report,
    Table,
    Verification,
    Window,
    cell,
    hold_days,
)
from gateway.store.dossier_rows import event_of
from gateway.store.store import Store
from gateway.store.tables import UTCDateTime, dossier_events, dossier_holds, dossiers

# Constants as SQL literals, not bind parameters: the same expression in SELECT and GROUP BY
# must be the same text for PostgreSQL to see that they are one.
_PG_FORMATS = {Period.DAY: "YYYY-MM-DD", Period.MONTH: "YYYY-MM",
               Period.QUARTER: 'YYYY-"Q"Q', Period.YEAR: "YYYY"}
_SQLITE_FORMATS = {Period.DAY: "%Y-%m-%d", Period.MONTH: "%Y-%m", Period.YEAR: "%Y"}


def _lit(sql: str) -> Any:
    return sa.literal_column(sql)


def bucket(dialect: str, period: Period, column: Any) -> Any:
    """The name of the period (in Vietnam time) an instant column falls in."""
    if dialect == "postgresql":
        local = sa.func.timezone(_lit("'UTC'"), column, type_=sa.DateTime()) \
            + _lit("interval '7 hours'")
        return sa.func.to_char(local, _lit(f"'{_PG_FORMATS[period]}'"), type_=sa.String())
    # Whole seconds first: SQLite's date functions round the microseconds, which would tip
    # 16:59:59.9999995 UTC into the next Vietnam day.
    text = sa.func.substr(column, _lit("1"), _lit("19"))

    def fmt(pattern: str) -> Any:
        return sa.func.strftime(_lit(f"'{pattern}'"), text, _lit("'+7 hours'"),
                                type_=sa.String())

    if period is Period.QUARTER:
        month = sa.cast(fmt("%m"), sa.Integer)
        return fmt("%Y") + _lit("'-Q'") + sa.cast((month + _lit("2")) // _lit("3"), sa.String)
    return fmt(_SQLITE_FORMATS[period])


async def snapshot(conn: AsyncConnection) -> None:
    """Every query of this connection's transaction sees one state of the store. SQLite's read
    transaction (WAL) is a snapshot already; PostgreSQL's default is not."""
    if conn.dialect.name == "postgresql":
        await conn.execution_options(isolation_level="REPEATABLE READ")


def _in(column: Any, window: Window) -> Any:
    return sa.and_(column >= window.start, column < window.end)


async def aggregate(conn: AsyncConnection, window: Window, calendar: WorkingDays | None,
                    now: datetime, agency: str | None = None) -> Table:
    """The served figures, per (agency, period); ``agency``: that agency's only."""
    dialect = conn.dialect.name
    table: Table = {}

    def span(column: Any) -> Any:
        return bucket(dialect, window.period, column).label("span")

    d, e, h = dossiers.c, dossier_events.c, dossier_holds.c

    # received: by the dossier's receiving agency and received date
    query = (sa.select(d.receiving_agency.label("who"), span(d.received_at),
                       sa.func.count().label("n"))
             .where(_in(d.received_at, window)).group_by("who", "span"))
    if agency is not None:
        query = query.where(d.receiving_agency == agency)
    for r in await conn.execute(query):
        cell(table, r.who, r.span).received += int(r.n)

    # hand-overs sent, accepted, returned; apologies, withdrawals: one raw step each
    names = {Step.HANDOVER.value: "handed_over", Step.ACCEPT.value: "accepted",
             Step.RETURN.value: "returned", Step.APOLOGY.value: "apologies",
             Step.WITHDRAW.value: "withdrawn"}
    query = (sa.select(e.actor.label("who"), e.step.label("kind"), span(e.at),
                       sa.func.count().label("n"))
             .where(e.step.in_(list(names)), _in(e.at, window))
             .group_by("who", "kind", "span"))
    if agency is not None:
        query = query.where(e.actor == agency)
    for r in await conn.execute(query):
        f = cell(table, r.who, r.span)
        setattr(f, names[r.kind], getattr(f, names[r.kind]) + int(r.n))

    # results: by who sent them, timeliness against the first appointment
    day = bucket(dialect, Period.DAY, d.completed_at)
    appointment_day = bucket(dialect, Period.DAY, d.appointment_at)
    kind = sa.case((d.completed_at > d.appointment_at, _lit("'late'")),
                   (day < appointment_day, _lit("'early'")), else_=_lit("'on_time'"))
    query = (sa.select(e.actor.label("who"), span(d.completed_at), kind.label("kind"),
                       sa.func.count().label("n"))
             .select_from(dossiers.join(dossier_events, sa.and_(
                 e.dossier_code == d.code, e.step == Step.RESULT.value)))
             .where(_in(d.completed_at, window)).group_by("who", "span", "kind"))
    if agency is not None:
        query = query.where(e.actor == agency)
    for r in await conn.execute(query):
        f = cell(table, r.who, r.span)
        name = f"completed_{r.kind}"
        setattr(f, name, getattr(f, name) + int(r.n))

    # in progress at each period's end: the hold open then (the first one, from the received
    # date to the first hand-over, is before the gateway knew the dossier), and whether its
    # due time (or, with no step running, the appointment) had passed
    ends = sa.values(sa.column("span", sa.String()), sa.column("t", UTCDateTime()),
                     name="ends").data([(key, at) for at, key in window.snapshots(now)]
                                       ).cte("ends")
    due = sa.func.coalesce(h.due_at, d.appointment_at)
    overdue = sa.case((due < ends.c.t, _lit("1")), else_=_lit("0"))
    query = (sa.select(h.agency.label("who"), ends.c.span.label("span"),
                       overdue.label("overdue"), sa.func.count().label("n"))
             .select_from(
                 dossier_holds.join(dossiers, d.code == h.dossier_code)
                 .join(ends, sa.and_(h.since < ends.c.t,
                                     sa.or_(h.until.is_(None), h.until >= ends.c.t))))
             .where(h.n >= 1).group_by("who", "span", "overdue"))
    if agency is not None:
        query = query.where(h.agency == agency)
    for r in await conn.execute(query):
        f = cell(table, r.who, r.span)
        if int(r.overdue):
            f.in_progress_overdue += int(r.n)
        else:
            f.in_progress_on_time += int(r.n)

    # holds that ended: counted in SQL's periods, measured with the working-day calendar
    query = (sa.select(h.agency.label("who"), span(h.until), h.since, h.until)
             .where(_in(h.until, window)))
    if agency is not None:
        query = query.where(h.agency == agency)
    for r in await conn.execute(query):
        f = cell(table, r.who, r.span)
        f.steps_ended += 1
        if calendar is not None:
            f.working_days += hold_days(calendar, r.since, r.until)
    return table


async def histories(conn: AsyncConnection, batch: int = 2000
                    ) -> AsyncIterator[tuple[str, list[Event]]]:
    """Every dossier's raw steps in order, one dossier at a time (streamed: memory stays at
    one dossier and one batch of rows, whatever the store holds)."""
    result = await conn.stream(
        sa.select(dossier_events)
        .order_by(dossier_events.c.dossier_code, dossier_events.c.seq)
        .execution_options(yield_per=batch)
    )
    code: str | None = None
    steps: list[Event] = []
    async for row in result:
        if row.dossier_code != code:
            if code is not None:
                yield code, steps
            code, steps = row.dossier_code, []
        steps.append(event_of(row))
    if code is not None:
        yield code, steps


async def served(store: Store, window: Window, calendar: WorkingDays | None, now: datetime,
                 agency: str | None = None) -> Report:
    """The statistics as the API serves them."""
    async with store.read() as conn:
        await snapshot(conn)
        table = await aggregate(conn, window, calendar, now, agency)
    return Report(window, now, table, days_known=calendar is not None)


async def verify(store: Store, window: Window, calendar: WorkingDays | None, now: datetime
                 ) -> Verification:
    """Both computations on one snapshot of the store, compared figure by figure."""
    async with store.read() as conn:
        await snapshot(conn)
        table = await aggregate(conn, window, calendar, now)
        recount = Recount(window, calendar, now)
        async for code, steps in histories(conn):
            recount.add(code, steps)
    return Verification.of(Report(window, now, table, days_known=calendar is not None),
                           recount)
