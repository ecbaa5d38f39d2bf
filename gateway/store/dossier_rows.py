"""Dossier rows: the raw steps and the folded projection, written in the transaction of the
message that carries the step (see :mod:`gateway.dossiers`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.dossiers import DossierState, Event, Hold, Step
from gateway.store.tables import dossier_events, dossier_holds, dossiers


@dataclass(frozen=True, slots=True)
class DossierWrite:
    """A step and the state it leads to, written with its message."""

    event: Event
    state: DossierState
    procedure_code: str | None  # the creating hand-over's; None: unchanged
    # Steps the gateway records just before ``event``, in the same transaction: the transfer
    # of a dissolved agency's dossier to the successor that is acting on it.
    preceding: tuple[Event, ...] = ()


@dataclass(frozen=True, slots=True)
class DossierRow:
    """A dossier as the projection has it, with who held it when."""

    code: str
    receiving_agency: str
    procedure_code: str
    received_at: datetime
    appointment_at: datetime
    new_appointment_at: datetime | None
    phase: str
    holder: str | None
    responsible: str | None
    pending_message: str | None
    due_at: datetime | None
    completed_at: datetime | None
    handovers: int
    returns: int
    apologies: int
    seq: int
    holds: tuple[Hold, ...]


def _event_row(event: Event, code: str) -> dict[str, object]:
    return {
        "dossier_code": code, "seq": event.seq, "step": event.step.value, "actor": event.actor,
        "to_agency": event.to, "at": event.at, "message_id": event.message_id,
        "about": event.about, "due_at": event.due_at, "appointment_at": event.appointment_at,
        "received_at": event.received_at, "reason": event.reason, "alert": event.alert,
    }


async def write(conn: AsyncConnection, w: DossierWrite, now: datetime) -> None:
    s = w.state
    await conn.execute(dossier_events.insert(),
                       [_event_row(e, s.code) for e in (*w.preceding, w.event)])
    values = {
        "receiving_agency": s.receiving_agency, "received_at": s.received_at,
        "appointment_at": s.appointment_at, "new_appointment_at": s.new_appointment_at,
        "phase": s.phase.value, "holder": s.holder, "responsible": s.responsible,
        "pending_message": s.pending.message_id if s.pending else None, "due_at": s.due_at,
        "completed_at": s.completed_at, "handovers": s.handovers, "returns": s.returns,
        "apologies": s.apologies, "seq": s.seq, "updated_at": now,
        "alerted": alerted(s),
    }
    if w.event.seq == 1 and not w.preceding:
        await conn.execute(dossiers.insert().values(
            code=s.code, procedure_code=w.procedure_code or "", **values
        ))
    else:  # the unique step number above already refused a concurrent step
        await conn.execute(dossiers.update().where(dossiers.c.code == s.code).values(**values))
    await conn.execute(dossier_holds.delete().where(dossier_holds.c.dossier_code == s.code))
    await conn.execute(dossier_holds.insert(), [
        {"dossier_code": s.code, "n": n, "agency": h.agency, "since": h.since,
         "until": h.until, "due_at": h.due_at, "accepted": int(h.accepted)}
        for n, h in enumerate(s.holds)
    ])


def alerted(s: DossierState) -> str | None:
    """The highest alert level already raised for the running step (None: none, or no step
    running)."""
    if s.step_key is None:
        return None
    levels = {level for level, key in s.alerts if key == s.step_key}
    return next((level for level in ("overdue", "due_soon") if level in levels), None)


def event_of(r: sa.Row[tuple[object, ...]]) -> Event:
    m = r._mapping
    return Event(
        seq=m["seq"], step=Step(m["step"]), actor=m["actor"], at=m["at"],
        message_id=m["message_id"], to=m["to_agency"], about=m["about"], due_at=m["due_at"],
        appointment_at=m["appointment_at"], received_at=m["received_at"], reason=m["reason"],
        alert=m["alert"],
    )


async def events(conn: AsyncConnection, code: str) -> list[Event]:
    rows = (await conn.execute(
        sa.select(dossier_events).where(dossier_events.c.dossier_code == code)
        .order_by(dossier_events.c.seq)
    )).all()
    return [event_of(r) for r in rows]


async def row(conn: AsyncConnection, code: str) -> DossierRow | None:
    found = (await conn.execute(sa.select(dossiers).where(dossiers.c.code == code))).first()
    if found is None:
        return None
    holds = (await conn.execute(
        sa.select(dossier_holds).where(dossier_holds.c.dossier_code == code)
        .order_by(dossier_holds.c.n)
    )).all()
    m = found._mapping
    return DossierRow(
        **{k: m[k] for k in (
            "code", "receiving_agency", "procedure_code", "received_at", "appointment_at",
            "new_appointment_at", "phase", "holder", "responsible", "pending_message", "due_at",
            "completed_at", "handovers", "returns", "apologies", "seq")},
        holds=tuple(Hold(h.agency, h.since, h.until, h.due_at, bool(h.accepted))
                    for h in holds),
    )


def involved(holds: Sequence[Hold]) -> set[str]:
    return {h.agency for h in holds}
