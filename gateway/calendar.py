"""The working-day calendar (lịch ngày làm việc) behind dossier deadlines (hạn giải quyết).

Which days count
    A day is a working day (ngày làm việc) unless it is a Saturday or Sunday or a public holiday
    (ngày lễ, Tết). Public holidays come from the ``holidays`` package (country ``VN``): the Labour
    Code's list, including the lunar ones computed from the Vietnamese lunisolar calendar (Tết
    Nguyên đán, Giỗ Tổ Hùng Vương 10/3 âm lịch), their statutory substitutes (nghỉ bù) and the
    swaps the package already knows (its ``weekend_workdays``: a Saturday worked, làm bù). On top,
    the calendar file (``deploy/calendar.yaml``) declares per year what the Government's yearly
    notice (thông báo lịch nghỉ lễ, Tết) adds: ``days_off`` (a weekday off: nghỉ bù, hoán đổi),
    ``working_days`` (a Saturday or Sunday worked: làm bù) and ``corrections`` (a day the package
    gets wrong). The file always wins. Years outside the package's range still work, from
    weekends and the file alone; :meth:`WorkingCalendar.notes` says so, and also names the years
    the file declares nothing for (only the statutory holidays apply there).

How a deadline is counted (our reading of the rules for hồ sơ thủ tục hành chính)
    The time limit is N working days. Counting starts on the day of receipt when the dossier is
    received in the morning, that is before the afternoon cut-off (e.g. 12:00 or 11:30) of a
    working day; otherwise (afternoon, or a day off) on the next working day, in the morning.
    The appointment (ngày hẹn trả) is the end of office hours of the N-th working day counted
    that way: received Monday 09:00 with 1 day is due Monday 17:00; received Monday 14:00, due
    Tuesday 17:00.

    Between whole days the clock is continuous so that the time an agency held a dossier can be
    measured and half days (buổi) work: each working day is one unit, its morning session
    (buổi sáng) the first half and its afternoon session (buổi chiều) the second, time running
    evenly within a session and standing still at lunch, at night and on days off. So 0.5 day
    from a morning receipt ends when the morning session does. :meth:`add_working_days` gives
    the earliest instant at which N units have run since counting started;
    :meth:`working_days_between` measures the units run from the same start up to an instant:
    one is the inverse of the other. How long an agency held a dossier is measured by
    :meth:`working_time` instead: the office time between two instants, with no receipt rule,
    so that consecutive holders' stretches add up to the whole span. Since the receipt day
    counts whole, a fraction smaller than the part of that day run before the dossier arrived
    gives an instant before the receipt: that time was used up on arrival. Whole days always
    end after the receipt (the cut-off lies within office hours).

Everything here is pure except :func:`load_calendar`; instants are aware datetimes, returned in
Vietnam time (+07:00). A naive datetime is refused: it would silently mean server time.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any

import holidays
import yaml

from gateway.errors import ConfigError

VN_TZ = timezone(timedelta(hours=7))
MAX_DAYS = 10_000  # a time limit beyond ~40 years is a mistake, not a deadline
WEEKDAY_NAMES = ("thứ Hai", "thứ Ba", "thứ Tư", "thứ Năm", "thứ Sáu", "thứ Bảy", "Chủ nhật")
_DAY = timedelta(days=1)
_HALF = Fraction(1, 2)


@dataclass(frozen=True, slots=True)
class OfficeHours:
    """Office hours (giờ hành chính) and the afternoon cut-off of the receipt rule."""

    morning_start: time = time(7, 30)
    morning_end: time = time(11, 30)
    afternoon_start: time = time(13, 30)
    afternoon_end: time = time(17, 0)
    cutoff: time = time(12, 0)  # received at or after this: counted from the next working day

    def __post_init__(self) -> None:
        if not self.morning_start < self.morning_end <= self.afternoon_start < self.afternoon_end:
            raise ValueError("office hours must run morning start < end <= afternoon start < end")
        if not self.morning_start < self.cutoff <= self.afternoon_end:
            raise ValueError("the afternoon cut-off must fall within office hours")


@dataclass(frozen=True, slots=True)
class Override:
    """One day the calendar file sets, against weekends and the package."""

    day: date
    working: bool
    kind: str  # days_off | working_days | corrections
    reason: str  # the legal reference (căn cứ) and a note


@dataclass(frozen=True, slots=True)
class WorkingCalendar:
    """Working days and office hours; counts deadlines. A value: equal files, equal calendars."""

    hours: OfficeHours = OfficeHours()
    overrides: tuple[Override, ...] = ()
    declared_years: frozenset[int] = frozenset()  # years the file has an entry for
    country: str | None = "VN"  # the ``holidays`` country; None: weekends and overrides only
    tz: tzinfo = VN_TZ
    _by_day: Mapping[date, Override] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_day: dict[date, Override] = {}
        for override in self.overrides:
            if override.day in by_day:
                raise ValueError(f"{override.day} is overridden twice")
            by_day[override.day] = override
        object.__setattr__(self, "_by_day", MappingProxyType(by_day))

    # -- days ---------------------------------------------------------------------------------
    def is_working_day(self, day: date) -> bool:
        """Whether ``day`` (a date, or an aware datetime: its Vietnam date) is a working day."""
        return self.day_off_reason(day) is None

    def day_off_reason(self, day: date) -> str | None:
        """Why ``day`` is not a working day (in Vietnamese, as the file or package says), or
        None when it is one."""
        if isinstance(day, datetime):
            day = self._local(day).date()
        override = self._by_day.get(day)
        if override is not None:
            return None if override.working else override.reason
        names, weekend_workdays = _package_year(self.country, day.year)
        if day in names:
            return names[day]
        if day.weekday() >= 5 and day not in weekend_workdays:
            return WEEKDAY_NAMES[day.weekday()]
        return None

    def days_off(self, first: date, last: date) -> list[tuple[date, str]]:
        """The non-working days from ``first`` to ``last`` (both included), with the reason."""
        result: list[tuple[date, str]] = []
        for day in _dates(first, last):
            reason = self.day_off_reason(day)
            if reason is not None:
                result.append((day, reason))
        return result

    def next_working_day(self, day: date) -> date:
        """The first working day strictly after ``day``."""
        day += _DAY
        while not self.is_working_day(day):
            day += _DAY
        return day

    def notes(self, first: date, last: date) -> tuple[str, ...]:
        """What the calendar does not know for the years from ``first`` to ``last``: years
        outside the package's range (weekends and the file only) and years the file declares
        nothing for (the statutory holidays only; the yearly notice may add days off)."""
        notes: list[str] = []
        low, high = _package_range(self.country)
        for year in range(first.year, last.year + 1):
            if not low <= year <= high:
                notes.append(f"{year}: outside the holidays package's range for "
                             f"{self.country or 'no country'}: weekends and the calendar file "
                             f"only")
            elif year not in self.declared_years:
                notes.append(f"{year}: the calendar file declares nothing: statutory holidays "
                             f"only (the Government's yearly notice may add days off)")
        return tuple(notes)

    # -- instants -----------------------------------------------------------------------------
    def next_working_start(self, instant: datetime) -> datetime:
        """The opening of office hours on the first working day after ``instant``'s date: the
        next working morning."""
        return self._opening(self.next_working_day(self._local(instant).date()))

    def counting_start(self, received: datetime) -> datetime:
        """The afternoon rule: when the clock of a dossier received at ``received`` starts.
        Received on a working day before the cut-off: that day's opening (the day counts);
        otherwise the next working morning."""
        local = self._local(received)
        if self.is_working_day(local.date()) and local.time() < self.hours.cutoff:
            return self._opening(local.date())
        return self.next_working_start(local)

    def add_working_days(self, start: datetime, days: float) -> datetime:
        """The due instant (hạn) of ``days`` working days from a receipt at ``start``: the
        earliest instant at which that much working time has run since counting started. Whole
        days end at the close of office hours of the last day."""
        amount = _amount(days)
        begin = self.counting_start(start)
        if amount == 0:
            return begin
        whole = math.ceil(amount) - 1  # full working days before the one the deadline falls on
        day = begin.date()  # a working day: counting starts on one
        for _ in range(whole):
            day = self.next_working_day(day)
        return self._instant_at(day, amount - whole)

    def working_days_between(self, start: datetime, end: datetime) -> float:
        """The working days that ran from a receipt at ``start`` to ``end`` (how long an agency
        held a dossier), counted as :meth:`add_working_days` does: the inverse of it. Zero when
        ``end`` comes before counting starts (received in the afternoon, sent on that day)."""
        begin = self.counting_start(start)
        local_end = self._local(end)
        if local_end < min(begin, self._local(start)):
            raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
        if local_end <= begin:
            return 0.0
        total = Fraction(0)
        last = local_end.date()
        for day in _dates(begin.date(), last - _DAY):
            if self.is_working_day(day):
                total += 1
        if self.is_working_day(last):
            total += self._elapsed(local_end)
        return float(total)

    def working_time(self, start: datetime, end: datetime) -> float:
        """The office time (in working days) that ran from ``start`` to ``end``, with no
        receipt rule: how long an agency held a dossier. Unlike :meth:`working_days_between`
        it adds up: the stretches of consecutive holders sum to the whole span. Zero when
        ``end`` is not after ``start``."""
        begin, finish = self._local(start), self._local(end)
        if finish <= begin:
            return 0.0
        first, last = begin.date(), finish.date()
        if first == last:
            if not self.is_working_day(first):
                return 0.0
            return float(self._elapsed(finish) - self._elapsed(begin))
        total = Fraction(0)
        if self.is_working_day(first):
            total += 1 - self._elapsed(begin)
        for day in _dates(first + _DAY, last - _DAY):
            if self.is_working_day(day):
                total += 1
        if self.is_working_day(last):
            total += self._elapsed(finish)
        return float(total)

    # -- helpers ------------------------------------------------------------------------------
    def _local(self, instant: datetime) -> datetime:
        if not isinstance(instant, datetime):
            raise TypeError(f"need a datetime, got {type(instant).__name__}")
        if instant.tzinfo is None or instant.utcoffset() is None:
            raise ValueError(f"naive datetime {instant.isoformat()}: give its time zone, "
                             f"e.g. {instant.isoformat()}+07:00")
        return instant.astimezone(self.tz)

    def _at(self, day: date, clock: time) -> datetime:
        return datetime.combine(day, clock, self.tz)

    def _opening(self, day: date) -> datetime:
        return self._at(day, self.hours.morning_start)

    def _sessions(self, day: date) -> tuple[tuple[datetime, datetime], tuple[datetime, datetime]]:
        h = self.hours
        return ((self._at(day, h.morning_start), self._at(day, h.morning_end)),
                (self._at(day, h.afternoon_start), self._at(day, h.afternoon_end)))

    def _elapsed(self, instant: datetime) -> Fraction:
        """The part of its (working) day run by ``instant``: 0 before opening, 1/2 at lunch,
        1 after closing; even within each session."""
        total = Fraction(0)
        for open_, close in self._sessions(instant.date()):
            if instant >= close:
                total += _HALF
            elif instant > open_:
                total += _HALF * Fraction(_micros(instant - open_), _micros(close - open_))
        return total

    def _instant_at(self, day: date, part: Fraction) -> datetime:
        """The earliest instant of ``day`` at which ``part`` (0 < part <= 1) of it has run."""
        (m_open, m_close), (a_open, a_close) = self._sessions(day)
        if part <= _HALF:
            open_, close, share = m_open, m_close, part / _HALF
        else:
            open_, close, share = a_open, a_close, (part - _HALF) / _HALF
        # Rounded up to the microsecond: the due instant is never before the exact one.
        return open_ + timedelta(microseconds=math.ceil(share * _micros(close - open_)))


def _micros(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _amount(days: float) -> Fraction:
    if isinstance(days, bool) or not isinstance(days, int | float | Fraction):
        raise TypeError(f"days must be a number, got {type(days).__name__}")
    if not math.isfinite(days) or days < 0:
        raise ValueError(f"days must be a finite number >= 0, got {days}")
    if days > MAX_DAYS:
        raise ValueError(f"days must be at most {MAX_DAYS}, got {days}")
    return Fraction(days)


def _dates(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += _DAY


@functools.lru_cache(maxsize=32)
def _package_range(country: str | None) -> tuple[int, int]:
    if country is None:
        return (1, 0)  # an empty range: every year is "outside"
    entity = holidays.country_holidays(country)
    return int(entity.start_year), int(entity.end_year)


@functools.lru_cache(maxsize=512)
def _package_year(country: str | None, year: int) -> tuple[Mapping[date, str], frozenset[date]]:
    """The package's holidays (Vietnamese names) and worked weekend days of one year."""
    low, high = _package_range(country)
    if country is None or not low <= year <= high:
        return MappingProxyType({}), frozenset()
    entity = holidays.country_holidays(country, years=year, language="vi")
    names = {day: str(name) for day, name in entity.items() if day.year == year}
    # weekend_workdays leaks special days of other years: keep this year's.
    worked = frozenset(d for d in getattr(entity, "weekend_workdays", ()) if d.year == year)
    return MappingProxyType(names), worked


# -- the calendar file --------------------------------------------------------------------------
_TOP_KEYS = {"timezone", "holidays_country", "office_hours", "years"}
_HOURS_KEYS = {"morning", "afternoon", "afternoon_cutoff"}
_YEAR_KEYS = {"days_off", "working_days", "corrections"}
_ENTRY_KEYS = {"days_off": {"date", "ref", "note"}, "working_days": {"date", "ref", "note"},
               "corrections": {"date", "working", "reason"}}
_OFFSET = re.compile(r"^([+-])(\d\d):(\d\d)$")
_CLOCK = re.compile(r"^(\d\d):(\d\d)$")


def calendar_from_mapping(data: Any) -> WorkingCalendar:
    """Check the parsed calendar file and build the calendar; errors name the entry."""
    if not isinstance(data, Mapping):
        raise ConfigError("calendar: the document must be a mapping (timezone, office_hours, "
                          "years)")
    _no_unknown("calendar", data, _TOP_KEYS)
    tz = _parse_offset(data.get("timezone", "+07:00"))
    country = data.get("holidays_country", "VN")
    if country is not None:
        if not isinstance(country, str) or country not in holidays.list_supported_countries():
            raise ConfigError(f"holidays_country: {country!r} is not a country of the holidays "
                              f"package (e.g. VN), or null for weekends and this file only")
    hours = _parse_hours(data.get("office_hours") or {})
    years = data.get("years") or {}
    if not isinstance(years, Mapping):
        raise ConfigError("years: must be a mapping of year -> days_off, working_days, "
                          "corrections")
    overrides: list[Override] = []
    seen: dict[date, str] = {}
    declared: set[int] = set()
    for raw_year, body in years.items():
        year = _parse_year(raw_year)
        declared.add(year)
        where = f"years.{year}"
        body = body or {}
        if not isinstance(body, Mapping):
            raise ConfigError(f"{where}: must be a mapping with days_off, working_days, "
                              f"corrections")
        _no_unknown(where, body, _YEAR_KEYS)
        for kind in ("days_off", "working_days", "corrections"):
            entries = body.get(kind) or []
            if not isinstance(entries, list):
                raise ConfigError(f"{where}.{kind}: must be a list")
            for index, entry in enumerate(entries):
                at = f"{where}.{kind}[{index}]"
                override = _parse_entry(at, kind, year, entry)
                if override.day in seen:
                    raise ConfigError(f"{at}: {override.day} is already given at "
                                      f"{seen[override.day]}")
                seen[override.day] = at
                overrides.append(override)
    overrides.sort(key=lambda o: o.day)
    return WorkingCalendar(hours=hours, overrides=tuple(overrides),
                           declared_years=frozenset(declared), country=country, tz=tz)


def load_calendar(path: Path) -> WorkingCalendar:
    """Read and check a calendar file (YAML). The one I/O function of this module."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read calendar file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    try:
        return calendar_from_mapping(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.detail}") from None


def _no_unknown(where: str, data: Mapping[Any, Any], known: set[str]) -> None:
    unknown = sorted(str(k) for k in data if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")


def _parse_offset(raw: Any) -> timezone:
    match = _OFFSET.match(str(raw))
    if not match or int(match.group(2)) > 14 or int(match.group(3)) > 59:
        raise ConfigError(f"timezone: {raw!r} is not a UTC offset like +07:00")
    sign = -1 if match.group(1) == "-" else 1
    return timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))


def _parse_clock(where: str, raw: Any) -> time:
    # YAML 1.1 reads an unquoted 12:00 as the sexagesimal number 720: take it back.
    text = f"{raw // 60:02d}:{raw % 60:02d}" if isinstance(raw, int) and not \
        isinstance(raw, bool) else str(raw).strip()
    match = _CLOCK.match(text)
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ConfigError(f"{where}: {raw!r} is not a time like 07:30")
    return time(int(match.group(1)), int(match.group(2)))


def _parse_span(where: str, raw: Any) -> tuple[time, time]:
    parts = str(raw).split("-")
    if len(parts) != 2:
        raise ConfigError(f"{where}: {raw!r} is not a span like 07:30-11:30")
    return _parse_clock(where, parts[0]), _parse_clock(where, parts[1])


def _parse_hours(raw: Any) -> OfficeHours:
    if not isinstance(raw, Mapping):
        raise ConfigError("office_hours: must be a mapping with morning, afternoon, "
                          "afternoon_cutoff")
    _no_unknown("office_hours", raw, _HOURS_KEYS)
    default = OfficeHours()
    morning = (_parse_span("office_hours.morning", raw["morning"]) if "morning" in raw
               else (default.morning_start, default.morning_end))
    afternoon = (_parse_span("office_hours.afternoon", raw["afternoon"]) if "afternoon" in raw
                 else (default.afternoon_start, default.afternoon_end))
    cutoff = (_parse_clock("office_hours.afternoon_cutoff", raw["afternoon_cutoff"])
              if "afternoon_cutoff" in raw else default.cutoff)
    try:
        return OfficeHours(*morning, *afternoon, cutoff)
    except ValueError as exc:
        raise ConfigError(f"office_hours: {exc}") from None


def _parse_year(raw: Any) -> int:
    text = str(raw)
    if isinstance(raw, bool) or not re.fullmatch(r"\d{4}", text):
        raise ConfigError(f"years.{text}: not a year")
    return int(text)


def _parse_date(at: str, raw: Any) -> date:
    if isinstance(raw, datetime):
        raise ConfigError(f"{at}: not a date ({raw!r}): give the day only, e.g. 2026-02-16")
    if isinstance(raw, date):
        return raw
    try:
        return date.fromisoformat(str(raw))
    except ValueError:
        raise ConfigError(f"{at}: not a date ({raw!r}); use YYYY-MM-DD") from None


def _text(at: str, entry: Mapping[str, Any], key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{at}: needs '{key}' (text)")
    return value.strip()


def _parse_entry(at: str, kind: str, year: int, entry: Any) -> Override:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{at}: must be a mapping with {', '.join(sorted(_ENTRY_KEYS[kind]))}")
    _no_unknown(at, entry, _ENTRY_KEYS[kind])
    if "date" not in entry:
        raise ConfigError(f"{at}: needs 'date'")
    day = _parse_date(at, entry["date"])
    if day.year != year:
        raise ConfigError(f"{at}: {day} is not in {year}")
    weekday = WEEKDAY_NAMES[day.weekday()]
    if kind == "corrections":
        working = entry.get("working")
        if not isinstance(working, bool):
            raise ConfigError(f"{at}: needs 'working: true' (not a holiday after all) or "
                              f"'working: false' (a day off the package misses)")
        return Override(day, working, kind, _text(at, entry, "reason"))
    ref = _text(at, entry, "ref")
    note = entry.get("note")
    if note is not None and not isinstance(note, str):
        raise ConfigError(f"{at}: 'note' must be text")
    reason = f"{note.strip()} [{ref}]" if note and note.strip() else ref
    if kind == "days_off":
        if day.weekday() >= 5:
            raise ConfigError(f"{at}: {day} is a {weekday}, already a day off")
        return Override(day, False, kind, reason)
    if day.weekday() < 5:
        raise ConfigError(f"{at}: {day} is a {weekday}: a make-up working day (làm bù) is a "
                          f"Saturday or Sunday (to undo a holiday, use corrections)")
    return Override(day, True, kind, reason)


__all__ = [
    "MAX_DAYS",
    "VN_TZ",
    "OfficeHours",
    "Override",
    "WorkingCalendar",
    "calendar_from_mapping",
    "load_calendar",
]
