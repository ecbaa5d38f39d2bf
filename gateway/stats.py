"""Dossier statistics (thống kê hồ sơ) per agency and per period, and their reconciliation.

Periods are days, months, quarters or years in Vietnam time (+07:00): a month runs from local
midnight on its first day to local midnight on the next month's. A window (``from``, ``to``)
is widened to whole periods: ``from`` falls back to the start of its period, and the last
period is the one that contains the day before ``to``.

The figures, per agency X and period P (all attributed to the agency code the steps name,
never to a successor: a merged agency's past numbers stay under its old code):

    received             dossiers whose receiving agency (cơ quan tiếp nhận) is X, received in P
    handed_over          hand-overs X sent in P
    accepted, returned   hand-overs X accepted (tiếp nhận), or returned (trả lại), in P
    completed_early      results X sent in P: completed before the appointment day (ngày hẹn
    completed_on_time    trả, its Vietnam date), on that day, or after the appointment instant.
    completed_late       Always the first appointment: an apology's new date does not make a
                         late dossier on time.
    withdrawn            dossiers X withdrew (rút hồ sơ) or stopped (dừng xử lý) in P: ended
                         without a result, neither on time nor late, no longer in progress
    in_progress_on_time  at the end of P (now, if P is not over), dossiers X is responsible
    in_progress_overdue  for (it holds them, or a hand-over to it waits), by whether the current
                         step's due time has passed; with no step running (returned to its
                         sender), the appointment's. A dossier counts from its first hand-over:
                         the gateway knows nothing of it before.
    apologies            apologies (phiếu xin lỗi) X sent in P
    steps_ended          X's holds (:class:`gateway.dossiers.Hold`) that ended in P: a hand-over
    avg_working_days_per_step  waiting for X is X's; their mean length in working days of the
                         calendar (None when none ended, or when no calendar is configured)

A transfer (a merged agency's dossier to its successor) counts nothing by itself: it ends the
merged agency's hold, and the successor is responsible from then on.

Two independent computations of the same table:

* served (the API): SQL aggregates over the store's projection (``dossiers``, ``dossier_holds``)
  and the raw steps (``dossier_events``): :func:`gateway.store.stats_rows.aggregate`;
* recomputed: every dossier's raw steps folded again with :func:`gateway.dossiers.apply`,
  counted here in Python (:class:`Recount`).

``lienthong stats verify`` runs both in one read snapshot and names the first differences
(:func:`compare`): a projection that drifted from the steps, or SQL that counts wrongly.

Pure: values in, values out; the store side lives in :mod:`gateway.store.stats_rows`.
"""

from __future__ import annotations

import bisect
import csv
import enum
import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timedelta
from typing import Any

from gateway.calendar import VN_TZ
from gateway.dossiers import DossierState, Event, Step, WorkingDays, apply
from gateway.errors import GatewayError

#: Most periods one request may cover (e.g. two and a half years of days).
MAX_PERIODS = 1000


class Period(enum.StrEnum):
    DAY = "day"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"


class BadWindow(ValueError):
    """A period or range that makes no window; ``field`` names the parameter (period, from,
    to) so the API and the CLI can point at it."""

    def __init__(self, field_name: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field_name
        self.detail = detail


def period_start(period: Period, day: date) -> date:
    """The first day of the period that contains ``day``."""
    match period:
        case Period.DAY:
            return day
        case Period.MONTH:
            return day.replace(day=1)
        case Period.QUARTER:
            return date(day.year, (day.month - 1) // 3 * 3 + 1, 1)
        case Period.YEAR:
            return date(day.year, 1, 1)
    raise AssertionError(period)  # pragma: no cover - Period is closed


def next_start(period: Period, start: date) -> date:
    """The first day of the period after the one starting on ``start``."""
    match period:
        case Period.DAY:
            return start + timedelta(days=1)
        case Period.YEAR:
            return date(start.year + 1, 1, 1)
        case Period.MONTH | Period.QUARTER:
            months = start.month - 1 + (1 if period is Period.MONTH else 3)
            return date(start.year + months // 12, months % 12 + 1, 1)
    raise AssertionError(period)  # pragma: no cover


def period_key(period: Period, day: date) -> str:
    """How a period is named: ``2026-03-02``, ``2026-03``, ``2026-Q1``, ``2026``. The SQL side
    (:func:`gateway.store.stats_rows.bucket`) spells the same names."""
    match period:
        case Period.DAY:
            return day.isoformat()
        case Period.MONTH:
            return f"{day.year:04d}-{day.month:02d}"
        case Period.QUARTER:
            return f"{day.year:04d}-Q{(day.month - 1) // 3 + 1}"
        case Period.YEAR:
            return f"{day.year:04d}"
    raise AssertionError(period)  # pragma: no cover


def local_day(instant: datetime) -> date:
    """The Vietnam date of an aware instant."""
    return instant.astimezone(VN_TZ).date()


@dataclass(frozen=True, slots=True)
class Span:
    """One period: its name and its bounds, ``start`` included, ``end`` excluded."""

    key: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Window:
    period: Period
    spans: tuple[Span, ...]

    @property
    def start(self) -> datetime:
        return self.spans[0].start

    @property
    def end(self) -> datetime:
        return self.spans[-1].end

    def key(self, instant: datetime) -> str | None:
        """The name of the period ``instant`` falls in, or None outside the window."""
        if not self.start <= instant < self.end:
            return None
        return period_key(self.period, period_start(self.period, local_day(instant)))

    def snapshots(self, now: datetime) -> list[tuple[datetime, str]]:
        """(instant, period) at which each period's in-progress dossiers are counted: its end,
        or ``now`` while it is not over. Sorted by instant."""
        return [(min(s.end, now), s.key) for s in self.spans]


def window(period: Period | str, first: date, until: date) -> Window:
    """The whole periods that cover the days from ``first`` up to ``until`` (excluded)."""
    try:
        period = Period(period)
    except ValueError:
        raise BadWindow("period", f"period must be one of {', '.join(Period)}, "
                        f"not {period!r}") from None
    if until <= first:
        raise BadWindow("to", f"to ({until}) must come after from ({first})")
    spans: list[Span] = []
    start = period_start(period, first)
    while start < until:
        if len(spans) == MAX_PERIODS:
            raise BadWindow("from", f"more than {MAX_PERIODS} periods of a {period}: "
                            "narrow the range or take a longer period")
        end = next_start(period, start)
        spans.append(Span(period_key(period, start), _midnight(start), _midnight(end)))
        start = end
    return Window(period, tuple(spans))


def default_range(now: datetime, period: Period | str) -> tuple[date, date]:
    """From the first of January of this year (Vietnam time) to the end of the current
    period."""
    try:
        period = Period(period)
    except ValueError:
        raise BadWindow("period", f"period must be one of {', '.join(Period)}, "
                        f"not {period!r}") from None
    today = local_day(now)
    return date(today.year, 1, 1), next_start(period, period_start(period, today))


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_day(field_name: str, text: str) -> date:
    """A calendar date written YYYY-MM-DD (only that form)."""
    try:
        if _DAY.fullmatch(text):
            return date.fromisoformat(text)
    except ValueError:
        pass
    raise BadWindow(field_name, f"{field_name} must be a date like 2026-01-01, not {text!r}")


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=VN_TZ)


# -- the figures --------------------------------------------------------------------------------
@dataclass(slots=True)
class Figures:
    """The counts of one agency in one period (mutable while counting)."""

    received: int = 0
    handed_over: int = 0
    accepted: int = 0
    returned: int = 0
    completed_early: int = 0
    completed_on_time: int = 0
    completed_late: int = 0
    withdrawn: int = 0
    in_progress_on_time: int = 0
    in_progress_overdue: int = 0
    apologies: int = 0
    steps_ended: int = 0
    working_days: float = 0.0  # the sum behind the mean

    def mean_days(self, days_known: bool) -> float | None:
        if not days_known or self.steps_ended == 0:
            return None
        return self.working_days / self.steps_ended


COUNTS: tuple[str, ...] = tuple(f.name for f in fields(Figures) if f.name != "working_days")
AVERAGE = "avg_working_days_per_step"
FIGURES: tuple[str, ...] = (*COUNTS, AVERAGE)
COLUMNS: tuple[str, ...] = ("agency", "period", "start", "end", *FIGURES)

Key = tuple[str, str]  # (agency, period)
Table = dict[Key, Figures]


def cell(table: Table, agency: str, period: str) -> Figures:
    found = table.get((agency, period))
    if found is None:
        found = table[(agency, period)] = Figures()
    return found


def completion(completed_at: datetime, appointment_at: datetime) -> str:
    """early (before the appointment's Vietnam date), on_time (that day, by the appointment
    instant) or late (after the appointment instant)."""
    if completed_at > appointment_at:
        return "late"
    return "early" if local_day(completed_at) < local_day(appointment_at) else "on_time"


def hold_days(calendar: WorkingDays, since: datetime, until: datetime) -> float:
    """Working days of one hold: the office time it lasted (no receipt rule, so consecutive
    holds add up to the dossier's whole span); a hold that ends before it starts (a received
    date after the first hand-over) is zero, not an error."""
    return calendar.working_time(since, until)


@dataclass(frozen=True, slots=True)
class Broken:
    """A dossier whose raw steps do not fold: the store holds a history the rules refuse."""

    code: str
    seq: int
    detail: str


@dataclass(slots=True)
class Recount:
    """The recomputation: fold each dossier's raw steps again and count what happened.

    Feed it every dossier with :meth:`add` (steps in order); read :attr:`table`."""

    window: Window
    calendar: WorkingDays | None
    now: datetime
    table: Table = field(init=False, default_factory=dict)
    broken: list[Broken] = field(init=False, default_factory=list)
    dossiers: int = field(init=False, default=0)  # folded without error
    _ends: list[datetime] = field(init=False, default_factory=list)  # when periods are counted
    _end_keys: list[str] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        for at, key in self.window.snapshots(self.now):
            self._ends.append(at)
            self._end_keys.append(key)

    def add(self, code: str, events: Sequence[Event]) -> None:
        states: list[DossierState] = []
        state: DossierState | None = None
        for event in events:
            try:
                state = apply(state, event, code)
            except GatewayError as exc:  # IllegalStep or Forbidden: the rules refuse it
                self.broken.append(Broken(code, event.seq, exc.detail))
                return
            states.append(state)
        if state is None:
            return
        self.dossiers += 1
        previous: DossierState | None = None
        for event, after in zip(events, states, strict=True):
            self._step(previous, after, event)
            previous = after
        self._final(state)
        self._in_progress(events, states)

    def _count(self, agency: str | None, at: datetime | None, name: str) -> None:
        key = self.window.key(at) if at is not None else None
        if agency is not None and key is not None:
            f = cell(self.table, agency, key)
            setattr(f, name, getattr(f, name) + 1)

    def _step(self, before: DossierState | None, after: DossierState, event: Event) -> None:
        """What one step did, read from the states around it (not from the step's fields)."""
        match event.step:
            case Step.HANDOVER:
                assert after.pending is not None
                self._count(after.pending.sender, event.at, "handed_over")
            case Step.ACCEPT:
                assert before is not None and before.pending is not None
                self._count(before.pending.receiver, event.at, "accepted")
            case Step.RETURN:
                assert before is not None and before.pending is not None
                self._count(before.pending.receiver, event.at, "returned")
            case Step.RESULT:
                assert before is not None and after.completed_at is not None
                kind = completion(after.completed_at, after.appointment_at)
                self._count(before.holder, after.completed_at, f"completed_{kind}")
            case Step.APOLOGY:
                self._count(event.actor, event.at, "apologies")
            case Step.WITHDRAW:
                self._count(event.actor, event.at, "withdrawn")
            case _:  # alerts, and a transfer to a merged agency's successor: no figure
                pass

    def _final(self, state: DossierState) -> None:
        self._count(state.receiving_agency, state.received_at, "received")
        for hold in state.holds:
            key = self.window.key(hold.until) if hold.until is not None else None
            if key is None or hold.until is None:
                continue
            f = cell(self.table, hold.agency, key)
            f.steps_ended += 1
            if self.calendar is not None:
                f.working_days += hold_days(self.calendar, hold.since, hold.until)

    def _in_progress(self, events: Sequence[Event], states: Sequence[DossierState]) -> None:
        """The state at an instant T is the fold of the steps before T: state k holds for every
        period end in (step k, step k+1]."""
        for k, state in enumerate(states):
            if state.responsible is None or state.completed_at is not None:
                continue
            lo = bisect.bisect_right(self._ends, events[k].at)
            hi = (bisect.bisect_right(self._ends, events[k + 1].at) if k + 1 < len(events)
                  else len(self._ends))
            due = state.due_at or state.appointment_at
            for i in range(lo, hi):
                f = cell(self.table, state.responsible, self._end_keys[i])
                if due < self._ends[i]:
                    f.in_progress_overdue += 1
                else:
                    f.in_progress_on_time += 1


# -- comparing and showing ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Difference:
    agency: str
    period: str
    figure: str
    served: int | float | None
    recomputed: int | float | None

    def __str__(self) -> str:
        return (f"{self.agency} {self.period} {self.figure}: api {_show(self.served)} vs "
                f"recomputed {_show(self.recomputed)}")


def _show(value: int | float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _value(f: Figures, name: str, days_known: bool) -> int | float | None:
    if name == AVERAGE:
        return f.mean_days(days_known)
    value: int = getattr(f, name)
    return value


def compare(served: Table, recomputed: Table, *, days_known: bool) -> list[Difference]:
    """Every figure that differs, by agency, then period, then figure."""
    found: list[Difference] = []
    for agency, period in sorted(served.keys() | recomputed.keys()):
        a = served.get((agency, period), Figures())
        b = recomputed.get((agency, period), Figures())
        for name in FIGURES:
            x, y = _value(a, name, days_known), _value(b, name, days_known)
            if isinstance(x, float) and isinstance(y, float):
                same = math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)  # summed in other orders
            else:
                same = x == y
            if not same:
                found.append(Difference(agency, period, name, x, y))
    return found


def agencies_of(table: Table) -> list[str]:
    """The agencies with any figure in the table."""
    return sorted({agency for (agency, _), f in table.items() if f != Figures()})


@dataclass(frozen=True, slots=True)
class Report:
    """What the API and ``lienthong stats show|export`` serve."""

    window: Window
    as_of: datetime
    table: Table
    days_known: bool  # a calendar was configured: the working-day means are real

    def rows(self, agencies: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """One row per agency and period, zeros included; ``agencies`` None: every agency with
        a figure in the window."""
        chosen = agencies_of(self.table) if agencies is None else sorted(set(agencies))
        rows: list[dict[str, Any]] = []
        for agency in chosen:
            for span in self.window.spans:
                f = self.table.get((agency, span.key), Figures())
                row: dict[str, Any] = {"agency": agency, "period": span.key,
                                       "start": span.start, "end": span.end}
                for name in COUNTS:
                    row[name] = getattr(f, name)
                mean = f.mean_days(self.days_known)
                row[AVERAGE] = None if mean is None else round(mean, 2)
                rows.append(row)
        return rows

    def document(self, agencies: Iterable[str] | None = None) -> dict[str, Any]:
        return {
            "period": self.window.period.value,
            "from": self.window.start.date().isoformat(),
            "to": self.window.end.date().isoformat(),
            "timezone": "+07:00",
            "as_of": self.as_of,
            "rows": self.rows(agencies),
        }


@dataclass(frozen=True, slots=True)
class Verification:
    """The served figures against the recomputed ones."""

    served: Report
    recomputed: Table
    differences: tuple[Difference, ...]
    broken: tuple[Broken, ...]  # dossiers whose steps the rules refuse
    dossiers: int  # dossiers folded

    @classmethod
    def of(cls, served: Report, recount: Recount) -> Verification:
        differences = compare(served.table, recount.table, days_known=served.days_known)
        return cls(served, recount.table, tuple(differences), tuple(recount.broken),
                   recount.dossiers)

    @property
    def ok(self) -> bool:
        return not self.differences and not self.broken

    @property
    def agencies(self) -> list[str]:
        return sorted(set(agencies_of(self.served.table)) | set(agencies_of(self.recomputed)))

    def summary(self, limit: int = 20) -> list[str]:
        """What ``lienthong stats verify`` prints: one line when all agree, else the first
        differences and refused histories."""
        n, m = len(self.agencies), len(self.served.window.spans)
        if self.ok:
            return [f"OK: {n} agencies × {m} periods agree ({self.dossiers} dossiers folded)"]
        lines = [f"DIFFERENT: {len(self.differences)} figure(s) differ and "
                 f"{len(self.broken)} dossier(s) do not fold, over {n} agencies × {m} periods"]
        lines += [f"dossier {b.code}: step {b.seq} refused: {b.detail}"
                  for b in self.broken[:limit]]
        lines += [str(d) for d in self.differences[:limit]]
        hidden = max(0, len(self.differences) - limit) + max(0, len(self.broken) - limit)
        if hidden:
            lines.append(f"... and {hidden} more")
        return lines


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as CSV (RFC 4180, a header line first); times in ISO 8601 with their offset."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_csv_cell(row[c]) for c in COLUMNS])
    return out.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


__all__ = [
    "AVERAGE",
    "COLUMNS",
    "COUNTS",
    "FIGURES",
    "MAX_PERIODS",
    "BadWindow",
    "Broken",
    "Difference",
    "Figures",
    "Period",
    "Recount",
    "Report",
    "Span",
    "Table",
    "Verification",
    "Window",
    "agencies_of",
    "cell",
    "compare",
    "completion",
    "csv_text",
    "default_range",
    "hold_days",
    "local_day",
    "parse_day",
    "window",
]
