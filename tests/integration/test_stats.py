"""Dossier statistics on SQLite and PostgreSQL: hand-computed figures for a small history
written through the store as ingress writes it, ``verify`` agreeing on a generated history of
thousands of dossiers, and ``verify`` catching a projection that was tampered with."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from gateway.calendar import VN_TZ, WorkingCalendar, load_calendar
from gateway.dossiers import DossierState, Event, Phase, Step, apply
from gateway.settings import DEFAULT_CALENDAR, Settings
from gateway.stats import Figures, Period, Report, Verification, window
from gateway.store import dossier_rows, stats_rows
from gateway.store.dossier_rows import DossierWrite
from gateway.store.store import Store
from gateway.store.tables import dossier_events, dossier_holds, dossiers
from tests.conftest import MERGED_COMMUNE, PHONG_DIEN, PROVINCE, SUCCESSOR

C = "000.21.35.H57"  # a commune of Phong Điền: receives the dossiers (cơ quan tiếp nhận)
D = PHONG_DIEN
P = PROVINCE
D34 = "000.00.34.H57"  # UBND huyện Phú Vang, the merged commune's district
PROCEDURE = "1.001612.000.00.00.H57"
LATE_NOW = datetime(2026, 11, 25, 12, 0, tzinfo=VN_TZ)  # after the whole small history


def vn(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=VN_TZ)


@pytest.fixture(scope="module")
def calendar() -> WorkingCalendar:
    return load_calendar(DEFAULT_CALENDAR)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    async with Store.open(settings.store_url) as opened:
        yield opened


class History:
    """Writes dossier steps through :meth:`Store.accept`, each with its message, as
    ``gateway.ingress`` does: the step is decided on the folded state, then stored."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.states: dict[str, DossierState] = {}

    async def step(self, code: str, step: Step, actor: str, at: datetime, *,
                   to: str | None = None, due: datetime | None = None,
                   received: datetime | None = None, appointment: datetime | None = None
                   ) -> None:
        state = self.states.get(code)
        about = state.pending.message_id if state and state.pending else None
        if step is Step.RESULT:
            assert state is not None
            to = state.receiving_agency
        message_id = str(uuid.uuid4())
        event = Event(
            seq=(state.seq if state else 0) + 1, step=step, actor=actor, at=at,
            message_id=message_id, to=to,
            about=about if step in {Step.ACCEPT, Step.RETURN} else None,
            due_at=due, received_at=received, appointment_at=appointment,
            reason="Thiếu bản vẽ" if step is Step.RETURN else None,
        )
        new = apply(state, event, code)
        if step in {Step.ACCEPT, Step.RETURN}:
            assert state is not None and state.pending is not None
            recipients = [state.pending.sender]
        else:
            recipients = [to or new.receiving_agency]
        await self.store.accept(
            message_id=message_id, kind="dossier" if step is Step.HANDOVER else "dossier_status",
            sender=actor, about=None, created_at=at, envelope=b"{}", recipients_=recipients,
            redirects={}, idempotency_key=None, request_hash="0" * 64,
            dossier=DossierWrite(event, new, PROCEDURE if event.seq == 1 else None),
        )
        self.states[code] = new


A_, B_, E_, F_, G_ = (f"{C}-2603{d:02d}-000{n}" for n, d in enumerate((2, 9, 16, 23, 30), 1))
H_ = f"{MERGED_COMMUNE}-260303-0001"


async def small_history(store: Store) -> None:
    """Six dossiers in March and April 2026 (no public holiday in that stretch)."""
    h = History(store)
    # A: completed early (before the appointment day)
    await h.step(A_, Step.HANDOVER, C, vn(3, 2, 9), to=D, due=vn(3, 6, 17),
                 received=vn(3, 2, 8), appointment=vn(3, 13, 17))
    await h.step(A_, Step.ACCEPT, D, vn(3, 2, 10))
    await h.step(A_, Step.RESULT, D, vn(3, 5, 17))
    # B: returned once (trả lại), completed on the appointment day at 06:30 Vietnam time,
    # which is still the day before in UTC
    await h.step(B_, Step.HANDOVER, C, vn(3, 9, 9), to=D, due=vn(3, 13, 17),
                 received=vn(3, 9, 8), appointment=vn(3, 20, 17))
    await h.step(B_, Step.RETURN, D, vn(3, 10, 10))
    await h.step(B_, Step.HANDOVER, C, vn(3, 11, 9), to=D, due=vn(3, 18, 17))
    await h.step(B_, Step.ACCEPT, D, vn(3, 11, 14))
    await h.step(B_, Step.RESULT, D, vn(3, 20, 6, 30))
    # E: passed on to the province, which apologises with a new date and finishes before it:
    # late all the same
    await h.step(E_, Step.HANDOVER, C, vn(3, 16, 9), to=D, due=vn(3, 20, 17),
                 received=vn(3, 16, 8), appointment=vn(3, 27, 17))
    await h.step(E_, Step.ACCEPT, D, vn(3, 16, 10))
    await h.step(E_, Step.HANDOVER, D, vn(3, 18, 9), to=P, due=vn(3, 25, 17))
    await h.step(E_, Step.ACCEPT, P, vn(3, 18, 15))
    await h.step(E_, Step.APOLOGY, P, vn(3, 26, 9), appointment=vn(4, 3, 17))
    await h.step(E_, Step.RESULT, P, vn(4, 2, 10))
    # F: held by the district past its step's due time, never finished
    await h.step(F_, Step.HANDOVER, C, vn(3, 23, 9), to=D, due=vn(3, 27, 17),
                 received=vn(3, 23, 8), appointment=vn(4, 3, 17))
    await h.step(F_, Step.ACCEPT, D, vn(3, 23, 10))
    # G: received in March, handed over at 06:00 on 1 April Vietnam time (still 31 March in
    # UTC); the province never answers
    await h.step(G_, Step.HANDOVER, C, vn(4, 1, 6), to=P, due=vn(4, 7, 17),
                 received=vn(3, 30, 8), appointment=vn(4, 24, 17))
    # H: received by a commune merged since: its numbers stay under its old code
    await h.step(H_, Step.HANDOVER, MERGED_COMMUNE, vn(3, 3, 9), to=D34, due=vn(3, 6, 17),
                 received=vn(3, 3, 8), appointment=vn(3, 10, 17))
    await h.step(H_, Step.ACCEPT, D34, vn(3, 3, 10))
    await h.step(H_, Step.RESULT, D34, vn(3, 6, 11))


def figures(**counts: int) -> Figures:
    return Figures(**counts)


def counts(report: Report, agency: str, period: str) -> Figures:
    found = report.table.get((agency, period), Figures())
    return replace(found, working_days=0.0)


MARCH_TO_MAY = window(Period.MONTH, date(2026, 3, 1), date(2026, 6, 1))

#: By hand, from the story above (months of 2026, Vietnam time).
EXPECTED = {
    (C, "2026-03"): figures(received=5, handed_over=5, steps_ended=5),
    (C, "2026-04"): figures(handed_over=1, steps_ended=1),
    (D, "2026-03"): figures(accepted=4, returned=1, handed_over=1, completed_early=1,
                            completed_on_time=1, in_progress_overdue=1, steps_ended=4),
    (D, "2026-04"): figures(in_progress_overdue=1),
    (D, "2026-05"): figures(in_progress_overdue=1),
    (P, "2026-03"): figures(accepted=1, apologies=1, in_progress_overdue=1),
    (P, "2026-04"): figures(completed_late=1, in_progress_overdue=1, steps_ended=1),
    (P, "2026-05"): figures(in_progress_overdue=1),
    (MERGED_COMMUNE, "2026-03"): figures(received=1, handed_over=1, steps_ended=1),
    (D34, "2026-03"): figures(accepted=1, completed_early=1, steps_ended=1),
}

#: Mean working days per step: the office time of each stretch (lịch ngày làm việc:
#: 07:30-11:30 and 13:30-17:00, each session half a day, so a morning hour is 0.125), with no
#: receipt rule, so that consecutive stretches add up.
EXPECTED_DAYS = {
    # four 08:00-09:00 stretches (0.125 each), the return Tue 10:00 -> Wed 09:00
    # (0.1875 + 0.5 + 0.1875)
    (C, "2026-03"): (4 * 0.125 + 0.875) / 5,
    (C, "2026-04"): 1.9375,  # Mon 30/3 08:00 -> Wed 1/4 06:00 (0.9375 + 1)
    # 3.8125 (A, Mon 09:00 -> Thu 17:00), 1.125 (B waiting, returned Tue 10:00),
    # 6.8125 (B, done at 06:30 before opening), 2.0 (E, Mon 09:00 -> Wed 09:00)
    (D, "2026-03"): (3.8125 + 1.125 + 6.8125 + 2.0) / 4,
    (P, "2026-04"): 11.125,  # Wed 18/3 09:00 -> Thu 2/4 10:00 (0.8125 + 10 + 0.3125)
    (MERGED_COMMUNE, "2026-03"): 0.125,
    (D34, "2026-03"): 3.25,  # Tue 3/3 09:00 -> Fri 6/3 11:00 (0.8125 + 2 + 0.4375)
}


async def test_small_history_by_hand(store: Store, calendar: WorkingCalendar) -> None:
    await small_history(store)
    report = await stats_rows.served(store, MARCH_TO_MAY, calendar, LATE_NOW)
    for span in MARCH_TO_MAY.spans:
        for agency in (C, D, P, MERGED_COMMUNE, D34, SUCCESSOR):
            expected = EXPECTED.get((agency, span.key), Figures())
            assert counts(report, agency, span.key) == expected, (agency, span.key)
    for key, days in EXPECTED_DAYS.items():
        assert report.table[key].mean_days(True) == pytest.approx(days), key
    # The successor of the merged commune took nothing over from its past.
    assert SUCCESSOR not in {row["agency"] for row in report.rows()}
    rows = {(r["agency"], r["period"]): r for r in report.rows()}
    assert rows[(D, "2026-03")]["avg_working_days_per_step"] == round(13.75 / 4, 2)
    assert rows[(D, "2026-04")]["avg_working_days_per_step"] is None  # no step ended
    assert len(rows) == 5 * 3  # five agencies with figures, every month, zeros included
    # An agency's own view: only its rows, even with nothing to count.
    own = await stats_rows.served(store, MARCH_TO_MAY, calendar, LATE_NOW, agency=D)
    assert {a for a, _ in own.table} == {D}
    assert [counts(own, D, s.key) for s in MARCH_TO_MAY.spans] == [
        EXPECTED[(D, "2026-03")], EXPECTED[(D, "2026-04")], EXPECTED[(D, "2026-05")]]
    assert (await stats_rows.verify(store, MARCH_TO_MAY, calendar, LATE_NOW)).ok


async def test_other_periods_and_an_unfinished_one(store: Store, calendar: WorkingCalendar
                                                   ) -> None:
    await small_history(store)
    quarters = window("quarter", date(2026, 2, 15), date(2026, 4, 10))
    assert [s.key for s in quarters.spans] == ["2026-Q1", "2026-Q2"]
    report = await stats_rows.served(store, quarters, calendar, LATE_NOW)
    assert counts(report, C, "2026-Q1").received == 5
    assert counts(report, D, "2026-Q1") == figures(
        accepted=4, returned=1, handed_over=1, completed_early=1, completed_on_time=1,
        in_progress_overdue=1, steps_ended=4)
    assert counts(report, P, "2026-Q2") == figures(completed_late=1, in_progress_overdue=1,
                                                   steps_ended=1)
    # Days in Vietnam time: B was completed at 06:30 on 20 March (23:30 UTC on the 19th).
    days = window("day", date(2026, 3, 19), date(2026, 3, 21))
    report = await stats_rows.served(store, days, calendar, LATE_NOW)
    assert counts(report, D, "2026-03-19") == figures(in_progress_overdue=1)  # B, due 18/3
    assert counts(report, D, "2026-03-20") == figures(completed_on_time=1, steps_ended=1)
    assert counts(report, P, "2026-03-19") == figures(in_progress_on_time=1)  # E, due 25/3
    year = await stats_rows.served(store, window("year", date(2026, 1, 1), date(2027, 1, 1)),
                                   calendar, LATE_NOW)
    assert counts(year, D, "2026").accepted == 4
    # April not over yet (now: 3 April, noon): its in-progress dossiers are counted now, when
    # the province's step of G is not due yet; May has not begun and sees the same.
    early_april = vn(4, 3, 12)
    report = await stats_rows.served(store, MARCH_TO_MAY, calendar, early_april)
    for month in ("2026-04", "2026-05"):
        assert counts(report, P, month).in_progress_on_time == 1
        assert counts(report, P, month).in_progress_overdue == 0
        assert counts(report, D, month).in_progress_overdue == 1
    for w in (quarters, days, MARCH_TO_MAY):
        assert (await stats_rows.verify(store, w, calendar, early_april)).ok


async def lienthong(settings: Settings, *args: str) -> tuple[int, str, str]:
    """``lienthong ARGS`` in a process of its own, on the test's database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")}
    env |= {"LIENTHONG_DATA_DIR": str(settings.data_dir), "LIENTHONG_LOG_LEVEL": "warning",
            "LIENTHONG_DATABASE_URL": settings.store_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_verify_names_what_the_tampered_projection_changed(
    store: Store, calendar: WorkingCalendar, settings: Settings
) -> None:
    await small_history(store)
    assert (await stats_rows.verify(store, MARCH_TO_MAY, calendar, LATE_NOW)).ok
    window_args = ("--period", "month", "--from", "2026-03-01", "--to", "2026-06-01")
    code, out, err = await lienthong(settings, "stats", "verify", *window_args)
    assert (code, out) == (0, "OK: 5 agencies × 3 periods agree (6 dossiers folded)\n"), err
    exported = settings.data_dir.parent / "stats.csv"
    code, _, err = await lienthong(settings, "stats", "export", *window_args, "--agency", D,
                                   "--format", "csv", "-o", str(exported))
    assert code == 0, err
    lines = exported.read_text(encoding="utf-8").splitlines()
    assert lines[1].startswith(f"{D},2026-03,2026-03-01T00:00:00+07:00,")
    assert lines[1].endswith(",0,1,4,1,1,1,0,0,0,1,0,4,3.44") and len(lines) == 4
    # The same figures as JSON, as the API serves them.
    code, out, err = await lienthong(settings, "stats", "export", *window_args, "--agency", D,
                                     "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    march = next(r for r in document["rows"] if r["period"] == "2026-03")
    assert (march["agency"], march["accepted"], march["returned"], march["completed_early"],
            march["in_progress_overdue"], march["avg_working_days_per_step"]) == (
        D, 4, 1, 1, 1, 3.44)
    served = await stats_rows.served(store, MARCH_TO_MAY, calendar, LATE_NOW, agency=D)
    assert len(document["rows"]) == len(served.rows([D])) == 3
    async with store.write() as conn:
        # E's appointment moved a month on: the province's late result now looks early.
        await conn.execute(dossiers.update().where(dossiers.c.code == E_).values(
            appointment_at=vn(4, 27, 17)))
        # F's open stretch given to the province instead of the district.
        await conn.execute(dossier_holds.update().where(
            dossier_holds.c.dossier_code == F_, dossier_holds.c.n == 1).values(agency=P))
    found = await stats_rows.verify(store, MARCH_TO_MAY, calendar, LATE_NOW)
    assert not found.ok
    got = {(d.agency, d.period, d.figure): (d.served, d.recomputed) for d in found.differences}
    assert got[(P, "2026-04", "completed_late")] == (0, 1)
    assert got[(P, "2026-04", "completed_early")] == (1, 0)
    for month in ("2026-03", "2026-04", "2026-05"):
        assert got[(D, month, "in_progress_overdue")] == (0, 1)
    assert got[(P, "2026-03", "in_progress_overdue")] == (2, 1)
    lines = found.summary()
    assert lines[0].startswith("DIFFERENT: ")
    assert f"{P} 2026-03 in_progress_overdue: api 2 vs recomputed 1" in lines
    code, out, err = await lienthong(settings, "stats", "verify", *window_args)
    assert (code, out) == (1, "")
    assert err.splitlines() == lines


async def test_verify_reports_a_history_that_does_not_fold(
    store: Store, calendar: WorkingCalendar
) -> None:
    await small_history(store)
    async with store.write() as conn:  # F's accept rewritten as sent by the province
        await conn.execute(dossier_events.update().where(
            dossier_events.c.dossier_code == F_, dossier_events.c.seq == 2).values(actor=P))
    found = await stats_rows.verify(store, MARCH_TO_MAY, calendar, LATE_NOW)
    assert [(b.code, b.seq) for b in found.broken] == [(F_, 2)]
    assert any(line.startswith(f"dossier {F_}: step 2 refused") for line in found.summary())


# -- a generated history ------------------------------------------------------------------------
AGENCIES = (
    C, "000.22.35.H57", "000.21.31.H57", "000.22.31.H57", "000.21.32.H57", "000.21.33.H57",
    MERGED_COMMUNE, SUCCESSOR, "000.00.31.H57", "000.00.32.H57", "000.00.33.H57", D34, D,
    P, "000.00.12.H57", "000.00.13.H57",
)
RECEIVERS = AGENCIES[:12]
GATEWAY = "000.00.00.A00"  # the gateway's own code (alerts)


def random_history(rng: random.Random, code: str, receiving: str, start: datetime,
                   stop: datetime) -> list[tuple[Event, DossierState]]:
    """A random walk of legal steps from a hand-over by the receiving agency: every step is
    checked by :func:`gateway.dossiers.apply` before it is kept."""
    appointment = (start + timedelta(days=rng.randint(3, 30))).replace(hour=17, minute=0)
    at = start + timedelta(minutes=rng.randint(10, 600))
    state: DossierState | None = None
    steps: list[tuple[Event, DossierState]] = []

    def add(step: Step, actor: str, **fields: Any) -> None:
        nonlocal state
        seq = (state.seq if state else 0) + 1
        event = Event(seq=seq, step=step, actor=actor, at=at, message_id=str(uuid.uuid4()),
                      **fields)
        state = apply(state, event, code)
        steps.append((event, state))

    def handover(actor: str) -> None:
        to = rng.choice([a for a in AGENCIES if a != actor])
        add(Step.HANDOVER, actor, to=to, due_at=at + timedelta(hours=rng.randint(4, 400)),
            received_at=start, appointment_at=appointment)

    handover(receiving)
    while at < stop:
        # From minutes to weeks between steps, so that dossiers cross days and months.
        at += timedelta(minutes=int(rng.expovariate(1 / 4000)) + 1)
        if at >= stop:
            break
        assert state is not None
        if state.closed:
            break
        roll = rng.random()
        if roll < 0.02:  # the citizen withdraws it, or its agency stops processing it
            add(Step.WITHDRAW, rng.choice([state.receiving_agency, state.responsible or ""]),
                reason="công dân rút hồ sơ")
        elif roll < 0.04:
            add(Step.APOLOGY, rng.choice(sorted(state.involved)),
                appointment_at=appointment + timedelta(days=7))
        elif roll < 0.06:
            add(Step.ALERT, GATEWAY, alert="overdue", about=f"step-{state.seq}")
        elif roll < 0.12:
            break  # left in progress
        elif state.responsible == MERGED_COMMUNE and roll < 0.6:
            # what the scheduler does once the commune is merged: its successor takes over
            add(Step.TRANSFER, MERGED_COMMUNE, to=SUCCESSOR, reason="sáp nhập")
        elif state.phase is Phase.IN_TRANSIT:
            assert state.pending is not None
            receiver = state.pending.receiver
            if rng.random() < 0.75:
                add(Step.ACCEPT, receiver, about=state.pending.message_id)
            else:
                add(Step.RETURN, receiver, about=state.pending.message_id, reason="thiếu")
        else:
            assert state.holder is not None
            if rng.random() < 0.45:
                handover(state.holder)
            else:
                add(Step.RESULT, state.holder, to=state.receiving_agency)
    return steps


async def write_histories(store: Store, histories: list[tuple[str, list[tuple[Event,
                          DossierState]]]], per_transaction: int = 500) -> None:
    """Many dossiers per transaction through the store's own row functions: one
    :func:`dossier_rows.write` per dossier with its first step and its final state (the
    projection that step-by-step writes leave behind, since each write replaces it with the
    state it is given), then the later raw steps."""
    written = datetime.now(VN_TZ)
    for i in range(0, len(histories), per_transaction):
        later: list[dict[str, Any]] = []
        async with store.write() as conn:
            for code, steps in histories[i:i + per_transaction]:
                first, final = steps[0][0], steps[-1][1]
                await dossier_rows.write(conn, DossierWrite(first, final, PROCEDURE), written)
                later += [dossier_rows._event_row(e, code) for e, _ in steps[1:]]
            if later:
                await conn.execute(dossier_events.insert(), later)


async def test_verify_agrees_on_a_generated_history(store: Store, calendar: WorkingCalendar
                                                    ) -> None:
    rng = random.Random(20260301)
    stop = datetime(2026, 11, 20, tzinfo=VN_TZ)
    histories = []
    for n in range(3000):
        receiving = rng.choice(RECEIVERS)
        start = datetime(2026, 1, 1, 7, tzinfo=VN_TZ) + timedelta(
            minutes=rng.randint(0, 300 * 24 * 60))
        code = f"{receiving}-{start:%y%m%d}-{n:04d}"
        histories.append((code, random_history(rng, code, receiving, start, stop)))
    steps = sum(len(s) for _, s in histories)
    assert steps > 4 * len(histories)  # real walks, not one hand-over each
    kinds = {e.step for _, walk in histories for e, _ in walk}
    assert kinds == set(Step)  # transfers and alerts too
    started = time.monotonic()
    await write_histories(store, histories)
    wrote = time.monotonic() - started
    checks = [
        (window("month", date(2026, 1, 1), date(2027, 1, 1)), LATE_NOW),
        # days, with "now" in the middle of the window: its later days are counted now
        (window("day", date(2026, 6, 1), date(2026, 9, 1)), datetime(2026, 8, 14, 10,
                                                                     tzinfo=VN_TZ)),
    ]
    for win, now in checks:
        started = time.monotonic()
        found: Verification = await stats_rows.verify(store, win, calendar, now)
        assert found.ok, "\n".join(found.summary())
        assert found.dossiers == len(histories)
        assert len(found.agencies) == len(AGENCIES)
        print(f"{store.dialect}: {len(histories)} dossiers, {steps} steps written in "
              f"{wrote:.1f} s; {win.period} verify {time.monotonic() - started:.1f} s",
              file=sys.stderr)
    # The totals are not all zero: the walk reached every kind of figure.
    year = await stats_rows.served(store, window("year", date(2026, 1, 1), date(2027, 1, 1)),
                                   calendar, LATE_NOW)
    totals = Figures()
    for f in year.table.values():
        for name in ("received", "handed_over", "accepted", "returned", "completed_early",
                     "completed_on_time", "completed_late", "in_progress_on_time",
                     "in_progress_overdue", "apologies", "steps_ended"):
            setattr(totals, name, getattr(totals, name) + getattr(f, name))
    assert totals.received == len(histories)
    assert 0 not in (totals.returned, totals.completed_early, totals.completed_on_time,
                     totals.completed_late, totals.in_progress_overdue, totals.apologies)
    # And a single changed row is found among them all: one dossier's received date moved
    # out of the year.
    code, steps = histories[7]
    async with store.write() as conn:
        await conn.execute(dossiers.update().where(dossiers.c.code == code)
                           .values(received_at=datetime(2025, 6, 1, tzinfo=VN_TZ)))
    months = checks[0][0]
    found = await stats_rows.verify(store, months, calendar, LATE_NOW)
    assert [(d.agency, d.period, d.figure) for d in found.differences] == [
        (code.split("-")[0], months.key(steps[0][1].received_at), "received")]
    first = found.differences[0]
    assert (first.served, first.recomputed) == (first.recomputed - 1, first.recomputed)



async def test_a_withdrawn_dossier_is_counted_once_and_no_longer_in_progress(
    store: Store, calendar: WorkingCalendar
) -> None:
    h = History(store)
    code = f"{C}-260302-0009"
    await h.step(code, Step.HANDOVER, C, vn(3, 2, 9), to=D, due=vn(3, 6, 17),
                 received=vn(3, 2, 8), appointment=vn(3, 13, 17))
    await h.step(code, Step.ACCEPT, D, vn(3, 2, 10))
    # The citizen withdraws it at the commune, after the district's step fell due.
    state = h.states[code]
    event = Event(seq=state.seq + 1, step=Step.WITHDRAW, actor=C, at=vn(3, 10, 9),
                  message_id=str(uuid.uuid4()), reason="công dân rút hồ sơ")
    new = apply(state, event, code)
    await store.accept(
        message_id=event.message_id, kind="dossier_status", sender=C, about=None,
        created_at=event.at, envelope=b"{}", recipients_=[D], redirects={},
        idempotency_key=None, request_hash="0" * 64, dossier=DossierWrite(event, new, None))
    report = await stats_rows.served(store, MARCH_TO_MAY, calendar, LATE_NOW)
    assert counts(report, C, "2026-03") == figures(received=1, handed_over=1, withdrawn=1,
                                                   steps_ended=1)
    # The district held it until the withdrawal; it is not in progress (or overdue) after.
    assert counts(report, D, "2026-03") == figures(accepted=1, steps_ended=1)
    assert counts(report, D, "2026-04") == Figures()
    check = await stats_rows.verify(store, MARCH_TO_MAY, calendar, LATE_NOW)
    assert check.ok, "\n".join(check.summary())
