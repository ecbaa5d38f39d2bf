"""The working-day calendar (lịch ngày làm việc): the package's holidays, the file's declared
days, the afternoon rule, the loader's errors, the CLI, and the counting properties."""

from __future__ import annotations

import copy
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import cli
from gateway.calendar import (
    VN_TZ,
    OfficeHours,
    WorkingCalendar,
    calendar_from_mapping,
    load_calendar,
)
from gateway.errors import ConfigError
from gateway.settings import DEFAULT_CALENDAR, Settings

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "calendar.yaml"
PROPERTY = settings(max_examples=200, deadline=None)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def days(first: str, last: str) -> list[date]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [start + timedelta(n) for n in range((end - start).days + 1)]


@pytest.fixture(scope="module")
def cal() -> WorkingCalendar:
    return load_calendar(SAMPLE)


def sample_data() -> dict[str, Any]:
    data = yaml.safe_load(SAMPLE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


# -- which days count ---------------------------------------------------------------------------
def test_weekends_are_off(cal: WorkingCalendar) -> None:
    assert [cal.is_working_day(d) for d in days("2026-03-06", "2026-03-09")] == [
        True, False, False, True]  # Fri, Sat, Sun, Mon
    assert cal.day_off_reason(date(2026, 3, 7)) == "thứ Bảy"
    assert cal.day_off_reason(date(2026, 3, 8)) == "Chủ nhật"
    # Received Friday morning, 2 days: Friday and Monday.
    assert cal.add_working_days(at("2026-03-06T09:00+07:00"), 2) == at("2026-03-09T17:00+07:00")


def test_tet_binh_ngo_2026_is_nine_days_off(cal: WorkingCalendar) -> None:
    # Thứ Bảy 14/02 (27 tháng Chạp) to Chủ nhật 22/02/2026 (mùng 6 Tết).
    assert not any(cal.is_working_day(d) for d in days("2026-02-14", "2026-02-22"))
    assert cal.is_working_day(date(2026, 2, 13)) and cal.is_working_day(date(2026, 2, 23))
    assert "Tết" in (cal.day_off_reason(date(2026, 2, 17)) or "")
    # The CLI example: received Friday 13/02 afternoon, 5 days -> Friday 27/02 at closing.
    received = at("2026-02-13T15:00+07:00")
    assert cal.counting_start(received) == at("2026-02-23T07:30+07:00")
    assert cal.add_working_days(received, 5) == at("2026-02-27T17:00+07:00")


def test_tet_at_ty_2025_is_nine_days_off(cal: WorkingCalendar) -> None:
    # Thông báo 6150/TB-BLĐTBXH: 25/01 to 02/02/2025; 27/01 declared in the file.
    assert not any(cal.is_working_day(d) for d in days("2025-01-25", "2025-02-02"))
    assert cal.is_working_day(date(2025, 1, 24)) and cal.is_working_day(date(2025, 2, 3))
    assert "6150/TB-BLĐTBXH" in (cal.day_off_reason(date(2025, 1, 27)) or "")
    assert cal.add_working_days(at("2025-01-24T08:00+07:00"), 2) == at("2025-02-03T17:00+07:00")


def test_gio_to_hung_vuong_10_3_am_lich(cal: WorkingCalendar) -> None:
    assert "Giỗ Tổ" in (cal.day_off_reason(date(2025, 4, 7)) or "")  # Monday
    assert "Giỗ Tổ" in (cal.day_off_reason(date(2027, 4, 16)) or "")  # Friday
    # 2026: Sunday 26/04, its nghỉ bù on Monday 27/04.
    assert "nghỉ bù" in (cal.day_off_reason(date(2026, 4, 27)) or "")
    assert cal.is_working_day(date(2026, 4, 28))


def test_declared_day_off_and_make_up_saturday_in_the_sample(cal: WorkingCalendar) -> None:
    # 2025: Friday 02/05 off, swapped with Saturday 26/04 worked (làm bù).
    assert "6150/TB-BLĐTBXH" in (cal.day_off_reason(date(2025, 5, 2)) or "")
    assert cal.is_working_day(date(2025, 4, 26))
    # Received Friday 25/04 morning, 6 days: 25, 26 (Sat), 28, 29/04, then 05 and 06/05.
    assert cal.add_working_days(at("2025-04-25T10:00+07:00"), 6) == at("2025-05-06T17:00+07:00")


def _with_2027(**year: Any) -> WorkingCalendar:
    data = sample_data()
    data["years"][2027] = year
    return calendar_from_mapping(data)


def test_a_day_off_from_the_file_is_not_in_the_package(cal: WorkingCalendar) -> None:
    assert cal.is_working_day(date(2027, 3, 5))  # an ordinary Friday
    edited = _with_2027(days_off=[{"date": date(2027, 3, 5), "ref": "Thông báo (ví dụ)",
                                   "note": "example"}])
    assert edited.day_off_reason(date(2027, 3, 5)) == "example [Thông báo (ví dụ)]"
    assert edited.add_working_days(at("2027-03-04T09:00+07:00"), 2) == \
        at("2027-03-08T17:00+07:00")
    assert cal.add_working_days(at("2027-03-04T09:00+07:00"), 2) == at("2027-03-05T17:00+07:00")


def test_a_saturday_made_a_working_day(cal: WorkingCalendar) -> None:
    edited = _with_2027(working_days=[{"date": "2027-03-13", "ref": "Thông báo (ví dụ)"}])
    assert not cal.is_working_day(date(2027, 3, 13))
    assert edited.is_working_day(date(2027, 3, 13))
    # Received Friday 12/03 afternoon: counted from the Saturday worked.
    received = at("2027-03-12T15:00+07:00")
    assert edited.counting_start(received) == at("2027-03-13T07:30+07:00")
    assert edited.add_working_days(received, 1) == at("2027-03-13T17:00+07:00")
    assert cal.add_working_days(received, 1) == at("2027-03-15T17:00+07:00")


def test_corrections_override_the_package(cal: WorkingCalendar) -> None:
    assert not cal.is_working_day(date(2026, 11, 24))  # Ngày Văn hóa Việt Nam, in the package
    edited = calendar_from_mapping({"years": {2026: {"corrections": [
        {"date": "2026-11-24", "working": True, "reason": "not a day off here"},
        {"date": "2026-11-25", "working": False, "reason": "missed by the package"},
    ]}}})
    assert edited.is_working_day(date(2026, 11, 24))
    assert edited.day_off_reason(date(2026, 11, 25)) == "missed by the package"


# -- the afternoon rule and office hours ---------------------------------------------------------
def test_morning_receipt_counts_the_day_afternoon_starts_next_morning(
        cal: WorkingCalendar) -> None:
    monday = "2026-03-09"
    assert cal.add_working_days(at(f"{monday}T11:00+07:00"), 1) == at(f"{monday}T17:00+07:00")
    assert cal.add_working_days(at(f"{monday}T14:00+07:00"), 1) == at("2026-03-10T17:00+07:00")
    assert cal.add_working_days(at(f"{monday}T06:15+07:00"), 1) == at(f"{monday}T17:00+07:00")
    # At the cut-off exactly it is afternoon already.
    assert cal.counting_start(at(f"{monday}T12:00+07:00")) == at("2026-03-10T07:30+07:00")
    # Sunday morning is no working morning: Monday is the first day.
    assert cal.counting_start(at("2026-03-08T09:00+07:00")) == at(f"{monday}T07:30+07:00")
    assert cal.next_working_start(at("2026-03-06T09:00+07:00")) == at(f"{monday}T07:30+07:00")


def test_the_cutoff_and_office_hours_are_configurable() -> None:
    strict = calendar_from_mapping({"office_hours": {
        "morning": "08:00-12:00", "afternoon": "13:00-17:30", "afternoon_cutoff": "11:30"}})
    assert strict.hours == OfficeHours(time(8), time(12), time(13), time(17, 30), time(11, 30))
    assert strict.counting_start(at("2026-03-09T11:45+07:00")) == at("2026-03-10T08:00+07:00")
    assert strict.add_working_days(at("2026-03-09T11:15+07:00"), 1) == \
        at("2026-03-09T17:30+07:00")
    # YAML 1.1 reads an unquoted 12:00 as a number: it still means noon.
    noon = calendar_from_mapping(yaml.safe_load("office_hours: {afternoon_cutoff: 12:00}"))
    assert noon.hours.cutoff == time(12)


def test_half_days_end_with_a_session(cal: WorkingCalendar) -> None:
    morning, afternoon = at("2026-03-09T09:00+07:00"), at("2026-03-09T14:00+07:00")
    assert cal.add_working_days(morning, 0.5) == at("2026-03-09T11:30+07:00")
    assert cal.add_working_days(morning, 1.5) == at("2026-03-10T11:30+07:00")
    assert cal.add_working_days(afternoon, 0.5) == at("2026-03-10T11:30+07:00")
    assert cal.add_working_days(morning, 0) == at("2026-03-09T07:30+07:00")


def test_held_for_working_days(cal: WorkingCalendar) -> None:
    received = at("2026-03-09T09:00+07:00")
    assert cal.working_days_between(received, at("2026-03-10T11:30+07:00")) == 1.5
    assert cal.working_days_between(received, at("2026-03-10T12:45+07:00")) == 1.5  # lunch
    assert cal.working_days_between(received, at("2026-03-14T10:00+07:00")) == 5.0  # Saturday
    # Received in the afternoon, handed on the same afternoon: no working day used.
    assert cal.working_days_between(at("2026-03-09T14:00+07:00"),
                                    at("2026-03-09T16:00+07:00")) == 0.0
    # Over Tết 2026: 13/02 and 23/02 only.
    assert cal.working_days_between(at("2026-02-13T08:00+07:00"),
                                    at("2026-02-23T17:00+07:00")) == 2.0
    # The receipt day counts from its opening: at 09:00, 1.5 h of the 4 h morning had run.
    assert cal.working_days_between(received, received) == 0.1875
    with pytest.raises(ValueError, match="before start"):
        cal.working_days_between(received, at("2026-03-09T07:29+07:00"))
    with pytest.raises(ValueError, match="before start"):
        cal.working_days_between(at("2026-03-09T14:00+07:00"), at("2026-03-09T13:59+07:00"))


def test_across_the_year_boundary(cal: WorkingCalendar) -> None:
    # Wednesday 31/12/2025 afternoon; 01/01/2026 Tết Dương lịch; then 02, 05, 06/01.
    received = at("2025-12-31T14:00+07:00")
    assert cal.add_working_days(received, 3) == at("2026-01-06T17:00+07:00")
    assert cal.working_days_between(received, at("2026-01-06T17:00+07:00")) == 3.0
    assert cal.notes(date(2025, 12, 31), date(2026, 1, 6)) == ()
    # Into 2027, which the file does not declare: it works, and says so.
    due = cal.add_working_days(at("2026-12-31T09:00+07:00"), 2)
    assert due == at("2027-01-04T17:00+07:00")  # 01/01/2027 is a Friday holiday
    (note,) = cal.notes(date(2026, 12, 31), due.date())
    assert note.startswith("2027: the calendar file declares nothing")


def test_years_outside_the_package_fall_back_to_weekends_and_the_file() -> None:
    data = sample_data()
    data["years"][2150] = {"days_off": [{"date": "2150-01-02", "ref": "ví dụ"}]}
    far = calendar_from_mapping(data)
    assert far.is_working_day(date(2150, 1, 1))  # no package: not even New Year's Day
    assert not far.is_working_day(date(2150, 1, 2))  # the file
    assert not far.is_working_day(date(2150, 1, 3))  # Saturday
    assert far.add_working_days(at("2150-01-01T08:00+07:00"), 2) == at("2150-01-05T17:00+07:00")
    assert "outside the holidays package's range" in far.notes(date(2150, 1, 1),
                                                               date(2150, 1, 5))[0]
    alone = calendar_from_mapping({"holidays_country": None})
    assert alone.is_working_day(date(2026, 2, 17))  # Tết, but no package asked
    assert alone.notes(date(2026, 1, 1), date(2026, 1, 1))


def test_instants_are_aware_and_answered_in_vietnam_time(cal: WorkingCalendar) -> None:
    utc = UTC
    assert cal.add_working_days(datetime(2026, 3, 9, 4, 0, tzinfo=utc), 1) == \
        at("2026-03-09T17:00+07:00")  # 11:00 in Huế
    due = cal.add_working_days(datetime(2026, 3, 9, 5, 0, tzinfo=utc), 1)  # 12:00 in Huế
    assert due == at("2026-03-10T17:00+07:00")
    assert due.utcoffset() == timedelta(hours=7)
    with pytest.raises(ValueError, match="naive datetime 2026-03-09T09:00:00"):
        cal.add_working_days(datetime(2026, 3, 9, 9), 1)
    with pytest.raises(ValueError, match="naive"):
        cal.is_working_day(datetime(2026, 3, 9, 9))
    with pytest.raises(ValueError, match="naive"):
        cal.working_days_between(at("2026-03-09T09:00+07:00"), datetime(2026, 3, 10))
    for bad in (-1, float("nan"), float("inf"), 10_001):
        with pytest.raises(ValueError, match="days must"):
            cal.add_working_days(at("2026-03-09T09:00+07:00"), bad)


# -- the file and its loader --------------------------------------------------------------------
def test_the_sample_file_loads_and_is_a_value(cal: WorkingCalendar) -> None:
    assert cal == load_calendar(SAMPLE)
    assert cal.declared_years == frozenset({2025, 2026})
    assert cal.tz.utcoffset(None) == timedelta(hours=7) == VN_TZ.utcoffset(None)
    assert cal.hours == OfficeHours()
    assert {o.kind for o in cal.overrides} == {"days_off", "working_days"}


def test_settings_name_the_calendar_file(tmp_path: Path) -> None:
    assert Settings.from_env({}).calendar_path == DEFAULT_CALENDAR == SAMPLE
    other = tmp_path / "lich.yaml"
    assert Settings.from_env({"LIENTHONG_CALENDAR_PATH": str(other)}).calendar_path == other


def _edit(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(sample_data())
    keys = path.split(".")
    node: Any = data
    for key in keys[:-1]:
        node = node[int(key) if key.isdigit() else key]
    node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return data


def _three_days_off(third: Any) -> list[Any]:
    return [{"date": "2026-03-02", "ref": "x"}, {"date": "2026-03-03", "ref": "x"}, third]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_edit("years.2026.days_off", _three_days_off({"date": "2026-02-30", "ref": "x"})),
         "years.2026.days_off[2]: not a date ('2026-02-30')"),
        (_edit("years.2026.days_off", _three_days_off({"date": "2025-03-04", "ref": "x"})),
         "years.2026.days_off[2]: 2025-03-04 is not in 2026"),
        (_edit("years.2026.days_off", _three_days_off({"date": "2026-03-07", "ref": "x"})),
         "years.2026.days_off[2]: 2026-03-07 is a thứ Bảy, already a day off"),
        (_edit("years.2026.days_off", _three_days_off({"date": "2026-03-04"})),
         "years.2026.days_off[2]: needs 'ref' (text)"),
        (_edit("years.2026.days_off", _three_days_off({"date": "2026-03-02", "ref": "x"})),
         "years.2026.days_off[2]: 2026-03-02 is already given at years.2026.days_off[0]"),
        (_edit("years.2026.days_off", _three_days_off("2026-03-04")),
         "years.2026.days_off[2]: must be a mapping"),
        (_edit("years.2026.days_off", _three_days_off({"date": "2026-03-04", "ref": "x",
                                                       "reason": "y"})),
         "years.2026.days_off[2]: unknown key(s) reason"),
        (_edit("years.2026.working_days", [{"date": "2026-08-21", "ref": "x"}]),
         "years.2026.working_days[0]: 2026-08-21 is a thứ Sáu: a make-up working day"),
        (_edit("years.2026.corrections", [{"date": "2026-11-24", "reason": "x"}]),
         "years.2026.corrections[0]: needs 'working: true'"),
        (_edit("years.2026.days_of", []), "years.2026: unknown key(s) days_of"),
        (_edit("years.2026.days_off", {"date": "2026-03-02"}),
         "years.2026.days_off: must be a list"),
        ({"years": {"2O26": {}}}, "years.2O26: not a year"),
        (_edit("timezone", "Asia/Hanoi"), "timezone: 'Asia/Hanoi' is not a UTC offset"),
        (_edit("holidays_country", "XX"), "holidays_country: 'XX' is not a country"),
        (_edit("office_hours.afternoon", "11:00-17:00"), "office_hours: office hours must run"),
        (_edit("office_hours.afternoon_cutoff", "18:00"),
         "office_hours: the afternoon cut-off must fall within office hours"),
        (_edit("office_hours.morning", "7h30-11h30"), "office_hours.morning: '7h30' is not a"),
        (_edit("weekends", [5, 6]), "calendar: unknown key(s) weekends"),
        ([], "calendar: the document must be a mapping"),
    ],
)
def test_errors_name_the_entry(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        calendar_from_mapping(data)
    assert info.value.detail.startswith(message), info.value.detail


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "calendar.yaml"
    broken.write_text("years:\n  2026: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"calendar.yaml: not valid YAML at line \d"):
        load_calendar(broken)
    with pytest.raises(ConfigError, match="cannot read calendar file"):
        load_calendar(tmp_path / "missing.yaml")


# -- the command line ---------------------------------------------------------------------------
def test_cli_due_prints_the_instant_and_the_days_skipped(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.parser().parse_args(
        ["calendar", "due", "--from", "2026-02-13T15:00+07:00", "--days", "5"])
    assert args.func(Settings(), args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("counted   from 2026-02-23T07:30:00+07:00")
    assert out[2] == "due       2026-02-27T17:00:00+07:00  thứ Sáu  (5 working days)"
    skipped = [line for line in out if line.startswith("skipped")]
    assert len(skipped) == 9
    assert "skipped   2026-02-17  thứ Ba: Tết Nguyên Đán" in skipped
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["calendar", "due", "--from", "2026-02-13T15:00", "--days", "5"])


def test_cli_check_fails_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "calendar.yaml"
    bad.write_text(yaml.safe_dump(_edit("years.2026.days_off", _three_days_off(
        {"date": "2026-02-30", "ref": "x"}))), encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin"}
    for path, code in ((bad, 2), (SAMPLE, 0)):
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "calendar", "check", str(path)],
            capture_output=True, text=True, env=env, timeout=60, check=False)
        assert done.returncode == code, done.stderr
        if code:
            assert done.stderr == (f"lienthong: {bad}: years.2026.days_off[2]: not a date "
                                   f"('2026-02-30'); use YYYY-MM-DD\n")
        else:
            assert done.stdout.startswith(f"{SAMPLE}: ok; years declared: 2025, 2026")


# -- properties ---------------------------------------------------------------------------------
CAL = load_calendar(SAMPLE)
instants = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2028, 12, 31),
                        timezones=st.sampled_from([VN_TZ, UTC,
                                                   timezone(timedelta(hours=-5))]))
amounts = st.integers(0, 80).map(float) | st.floats(0, 80, allow_nan=False) | \
    st.integers(0, 160).map(lambda n: n / 2)


@PROPERTY
@given(instants, amounts, amounts)
def test_due_is_monotone_in_days(start: datetime, a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert CAL.add_working_days(start, low) <= CAL.add_working_days(start, high)


@PROPERTY
@given(instants, instants, amounts)
def test_due_is_monotone_in_start(a: datetime, b: datetime, n: float) -> None:
    early, late = sorted((a, b))
    assert CAL.add_working_days(early, n) <= CAL.add_working_days(late, n)


@PROPERTY
@given(instants, st.integers(0, 80))
def test_held_days_invert_the_deadline(start: datetime, n: int) -> None:
    due = CAL.add_working_days(start, n)
    assert CAL.working_days_between(start, due) == n
    if n:  # the earliest such instant: a moment earlier, less than n had run
        assert CAL.working_days_between(start, due - timedelta(seconds=1)) < n


@PROPERTY
@given(st.dates(date(2024, 1, 1), date(2028, 12, 31)), st.times(time(0), time(11, 59)),
       st.integers(1, 80))
def test_from_a_working_morning_the_receipt_day_is_day_one(
        day: date, clock: time, n: int) -> None:
    if not CAL.is_working_day(day):
        day = CAL.next_working_day(day)
    start = datetime.combine(day, clock, VN_TZ)
    assert CAL.working_days_between(start, CAL.add_working_days(start, n)) == n
    if n == 1:
        assert CAL.add_working_days(start, 1) == datetime.combine(day, time(17), VN_TZ)


@PROPERTY
@given(instants, amounts)
def test_never_due_on_a_day_off_or_outside_office_hours(start: datetime, n: float) -> None:
    due = CAL.add_working_days(start, n)
    assert CAL.is_working_day(due.date())
    assert due.utcoffset() == timedelta(hours=7)
    assert time(7, 30) <= due.time() <= time(17)
    assert not time(11, 30) < due.time() < time(13, 30)
    assert abs(CAL.working_days_between(start, due) - n) < 1e-6


def test_working_time_is_office_time_without_the_receipt_rule(cal: WorkingCalendar) -> None:
    # A morning hour is 1/8 of a day (4 h make half a day); an afternoon hour 1/7.
    assert cal.working_time(at("2026-03-09T08:00+07:00"), at("2026-03-09T09:00+07:00")) == 0.125
    assert cal.working_time(at("2026-03-09T14:00+07:00"), at("2026-03-09T17:00+07:00")) == \
        pytest.approx(3 / 7)
    # Lunch, nights and the weekend do not run: Fri 16:00 -> Mon 08:00.
    assert cal.working_time(at("2026-03-13T16:00+07:00"), at("2026-03-16T08:00+07:00")) == \
        pytest.approx(1 / 7 + 0.0625)
    # Over Tết 2026: only 13/02 and 23/02 are working days.
    assert cal.working_time(at("2026-02-13T07:00+07:00"), at("2026-02-23T18:00+07:00")) == 2.0
    # Nothing runs backwards or on a day off.
    assert cal.working_time(at("2026-03-09T09:00+07:00"), at("2026-03-09T08:00+07:00")) == 0.0
    assert cal.working_time(at("2026-03-14T08:00+07:00"), at("2026-03-14T16:00+07:00")) == 0.0


@given(st.lists(st.integers(min_value=0, max_value=40 * 24 * 60), min_size=3, max_size=3))
def test_working_time_adds_up(minutes: list[int]) -> None:
    """Consecutive holders' stretches sum to the whole span: a dossier handed on at 09:00 and
    09:01 is not counted twice from the morning's opening."""
    a, b, c = (datetime(2026, 1, 1, tzinfo=VN_TZ) + timedelta(minutes=m) for m in sorted(minutes))
    assert CAL.working_time(a, b) + CAL.working_time(b, c) == pytest.approx(
        CAL.working_time(a, c), abs=1e-9)
    assert 0 <= CAL.working_time(a, c) <= (c - a).total_seconds() / 86400 + 1
