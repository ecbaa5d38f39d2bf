"""Dossier hand-over (hồ sơ liên thông): a dossier's state is the fold of its events.

Pure: :func:`apply` takes the state so far and one event and returns the next state, or raises
:class:`IllegalStep` naming what is wrong; :func:`fold` runs a whole history. The store keeps
the raw events (one row per step, numbered) and a projection of the folded state; the API,
the scheduler and the statistics read the projection, and ``lienthong stats verify`` folds the
raw events again to prove the two agree.

The steps, each a message routed through the gateway::

    handover  A -> B   a ``dossier`` envelope: A gives the dossier to B (chuyển). The first one
                       creates the dossier and must come from its receiving agency (cơ quan
                       tiếp nhận), which has held it since its received date. Later ones come
                       from the agency holding it: to the next agency of the route, back down,
                       or to a peer.
    accept    B        B takes the hand-over it was sent (tiếp nhận); B now holds the dossier.
    return    B -> A   B sends it back with a reason (trả lại, e.g. thiếu hồ sơ); A holds it
                       again and may hand it over again once completed.
    result    H -> R   the holder sends the result (kết quả) to the receiving agency; the
                       dossier is completed. Only once.
    apology   X        an agency that held the dossier apologises and sets a new appointment
                       date (phiếu xin lỗi và hẹn lại, Nghị định 61/2018/NĐ-CP, Điều 19); the
                       dossier is counted late all the same.
    withdraw  R or H   the dossier ends without a result (reason required): the citizen asked
                       the receiving agency R to withdraw it (rút hồ sơ, TrangThaiHoSo 7), or
                       the agency H responsible for it stopped processing it (dừng xử lý, 8).
                       It is no longer in progress, overdue or alerted; counted as withdrawn.
    alert     gateway  due soon / overdue: recorded, changes no state.

Who held it for how long: every stretch between taking the dossier (creation, accept, a
return) and giving it away (hand-over, result) is one :class:`Hold`; the time a hand-over waits
for the receiver's answer is a stretch of its own, with ``agency`` the receiver and
``accepted`` False, so a receiver that sits on a hand-over is seen doing it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from gateway.errors import Conflict, FieldError, Forbidden


class WorkingDays(Protocol):
    """The working-day calendar (:class:`gateway.calendar.WorkingCalendar`) as steps use it."""

    def add_working_days(self, start: datetime, days: float) -> datetime: ...

    def working_days_between(self, start: datetime, end: datetime) -> float: ...

    def working_time(self, start: datetime, end: datetime) -> float: ...


class Phase(enum.StrEnum):
    IN_TRANSIT = "in_transit"  # handed over, waiting for the receiver to accept or return it
    HELD = "held"  # an agency holds it (đang xử lý)
    COMPLETED = "completed"  # the result went back to the receiving agency (đã có kết quả)
    WITHDRAWN = "withdrawn"  # ended without a result: rút hồ sơ, dừng xử lý


class Step(enum.StrEnum):
    HANDOVER = "handover"
    ACCEPT = "accept"
    RETURN = "return"
    RESULT = "result"
    APOLOGY = "apology"
    WITHDRAW = "withdraw"
    ALERT = "alert"
    TRANSFER = "transfer"


@dataclass(frozen=True, slots=True)
class Event:
    """One step as the store keeps it."""

    seq: int  # 1, 2, 3... per dossier
    step: Step
    actor: str  # the agency that sent the step (the gateway's own code for alerts)
    at: datetime  # when the gateway accepted it
    message_id: str
    to: str | None = None  # handover: the receiver; result: the receiving agency
    about: str | None = None  # accept / return: the hand-over message
    due_at: datetime | None = None  # handover: when the receiver's step falls due
    appointment_at: datetime | None = None  # creation: ngày hẹn trả; apology: the new one
    received_at: datetime | None = None  # creation: ngày tiếp nhận
    reason: str | None = None
    alert: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    agency: str
    since: datetime
    until: datetime | None = None
    due_at: datetime | None = None
    accepted: bool = True  # False: a hand-over waiting for this agency's answer


@dataclass(frozen=True, slots=True)
class Pending:
    message_id: str
    sender: str
    receiver: str
    at: datetime
    due_at: datetime | None


@dataclass(frozen=True, slots=True)
class DossierState:
    code: str
    receiving_agency: str
    received_at: datetime
    appointment_at: datetime  # ngày hẹn trả as first set
    phase: Phase
    holder: str | None  # None while in transit
    pending: Pending | None = None
    holds: tuple[Hold, ...] = ()
    due_at: datetime | None = None  # the current step's (returned: the appointment)
    new_appointment_at: datetime | None = None  # set by the latest apology
    completed_at: datetime | None = None
    withdrawn_at: datetime | None = None
    handovers: int = 0
    returns: int = 0
    apologies: int = 0
    alerts: tuple[tuple[str, str], ...] = ()  # (level, step key) already raised
    step_key: str | None = None  # the hand-over (or transfer) that started the running step
    seq: int = 0
    involved: frozenset[str] = field(default_factory=frozenset)

    @property
    def responsible(self) -> str | None:
        """The agency whose move it is: the holder, or the receiver of a pending hand-over;
        nobody once it was withdrawn."""
        if self.phase is Phase.WITHDRAWN:
            return None
        return self.pending.receiver if self.pending else self.holder

    @property
    def closed(self) -> bool:
        """Completed or withdrawn: no step but alerts is allowed any more."""
        return self.phase in (Phase.COMPLETED, Phase.WITHDRAWN)


class IllegalStep(Conflict):
    """A step the dossier's history does not allow (409), e.g. accepting a dossier that was
    never sent to you or completing one twice."""


def _refuse(detail: str, pointer: str = "/body") -> IllegalStep:
    return IllegalStep(detail, errors=[FieldError(pointer, detail)])


def _close(holds: tuple[Hold, ...], at: datetime) -> tuple[Hold, ...]:
    if holds and holds[-1].until is None:
        return (*holds[:-1], replace(holds[-1], until=at))
    return holds


def apply(state: DossierState | None, event: Event, code: str) -> DossierState:
    """The state after ``event``, or :class:`IllegalStep` (or :class:`Forbidden` for an agency
    acting on a dossier that is not in its hands)."""
    if state is None:
        return _create(event, code)
    if event.seq != state.seq + 1:
        raise _refuse(f"dossier {code}: step {event.seq} after step {state.seq}")
    s = replace(state, seq=event.seq)
    match event.step:
        case Step.HANDOVER:
            return _handover(s, event)
        case Step.ACCEPT | Step.RETURN:
            return _answer(s, event)
        case Step.RESULT:
            if s.closed:
                raise _refuse(f"dossier {code} is {s.phase.value} already", "/body/action")
            _must_hold(s, event)
            return replace(s, phase=Phase.COMPLETED, completed_at=event.at,
                           holds=_close(s.holds, event.at), holder=s.receiving_agency,
                           due_at=None,
                           step_key=None)
        case Step.APOLOGY:
            if s.closed:
                raise _refuse(f"dossier {code} is {s.phase.value}: nothing to apologise for",
                              "/body/action")
            if event.actor not in s.involved:
                raise Forbidden(f"agency {event.actor} never held dossier {code}",
                                errors=[FieldError("/body/dossier", "not involved")])
            return replace(s, new_appointment_at=event.appointment_at,
                           apologies=s.apologies + 1)
        case Step.WITHDRAW:
            return _withdraw(s, event)
        case Step.TRANSFER:
            return _transfer(s, event)
        case Step.ALERT:
            key = (event.alert or "", event.about or "")
            return replace(s, alerts=(*s.alerts, key))
    raise _refuse(f"unknown step {event.step}")  # pragma: no cover - Step is closed


def _create(event: Event, code: str) -> DossierState:
    if event.step is not Step.HANDOVER:
        raise _refuse(f"dossier {code} does not exist: its first step must be a hand-over",
                      "/body/dossier")
    if event.seq != 1:
        raise _refuse(f"dossier {code}: the first step is numbered 1, not {event.seq}")
    receiving = code.split("-", 1)[0]
    if event.actor != receiving:
        raise Forbidden(
            f"dossier {code} was received at {receiving}: only it can first hand it over",
            errors=[FieldError("/body/code", "a dossier of another agency")],
        )
    if event.received_at is None or event.appointment_at is None:
        raise _refuse(f"dossier {code}: its first hand-over carries the received and "
                      "appointment dates")
    base = DossierState(
        code=code, receiving_agency=receiving, received_at=event.received_at,
        appointment_at=event.appointment_at, phase=Phase.HELD, holder=receiving,
        holds=(Hold(receiving, event.received_at),), involved=frozenset({receiving}),
        seq=event.seq,
    )
    return _handover(base, event)


def _must_hold(s: DossierState, event: Event) -> None:
    if s.closed:
        raise _refuse(f"dossier {s.code} is {s.phase.value}", "/body/action")
    if s.phase is Phase.IN_TRANSIT:
        assert s.pending is not None
        raise _refuse(
            f"dossier {s.code} is on its way to {s.pending.receiver}, not in the hands of "
            f"{event.actor}", "/body/dossier",
        )
    if s.holder != event.actor:
        raise Forbidden(f"dossier {s.code} is held by {s.holder}, not by {event.actor}",
                        errors=[FieldError("/body/dossier", "not in the caller's hands")])


def _handover(s: DossierState, event: Event) -> DossierState:
    _must_hold(s, event)
    if event.to is None or event.to == event.actor:
        raise _refuse("a dossier is handed over to another agency", "/header/to")
    pending = Pending(event.message_id, event.actor, event.to, event.at, event.due_at)
    holds = (*_close(s.holds, event.at),
             Hold(event.to, event.at, due_at=event.due_at, accepted=False))
    return replace(s, phase=Phase.IN_TRANSIT, holder=None, pending=pending, holds=holds,
                   due_at=event.due_at, handovers=s.handovers + 1, step_key=event.message_id,
                   involved=s.involved | {event.to})


def _answer(s: DossierState, event: Event) -> DossierState:
    p = s.pending
    if s.phase is not Phase.IN_TRANSIT or p is None or p.receiver != event.actor:
        raise Forbidden(
            f"dossier {s.code} was not handed over to {event.actor}",
            errors=[FieldError("/body/about", "no hand-over of this dossier waits for you")],
        )
    if event.about is not None and event.about != p.message_id:
        raise _refuse(f"the pending hand-over of {s.code} is {p.message_id}", "/body/about")
    if event.step is Step.ACCEPT:  # the receiver's stretch began with the hand-over
        holds = (*s.holds[:-1], replace(s.holds[-1], accepted=True))
        return replace(s, phase=Phase.HELD, holder=event.actor, pending=None, holds=holds)
    # Returned: back in the sender's hands, with no route step running until it hands it over
    # again; what it is late against meanwhile is the appointment (as the statistics count it),
    # and the return starts the alerts for that.
    return replace(s, phase=Phase.HELD, holder=p.sender, pending=None, returns=s.returns + 1,
                   holds=(*_close(s.holds, event.at), Hold(p.sender, event.at)),
                   due_at=s.appointment_at, step_key=event.message_id)


def _withdraw(s: DossierState, event: Event) -> DossierState:
    if s.closed:
        raise _refuse(f"dossier {s.code} is {s.phase.value}", "/body/action")
    if event.actor not in {s.receiving_agency, s.responsible}:
        raise Forbidden(
            f"dossier {s.code} is withdrawn by its receiving agency {s.receiving_agency} or "
            f"stopped by {s.responsible}, not by {event.actor}",
            errors=[FieldError("/body/dossier", "neither the receiving nor the responsible "
                                                "agency")],
        )
    # Back with the receiving agency, which gives the papers back to the citizen; no one's
    # stretch runs any more, no step is due.
    return replace(s, phase=Phase.WITHDRAWN, withdrawn_at=event.at, holder=s.receiving_agency,
                   pending=None, holds=_close(s.holds, event.at), due_at=None, step_key=None)


def _transfer(s: DossierState, event: Event) -> DossierState:
    if s.closed:
        raise _refuse(f"dossier {s.code} is {s.phase.value}", "/body/action")
    if s.responsible != event.actor or event.to is None or event.to == event.actor:
        raise _refuse(f"dossier {s.code} is not in the hands of {event.actor}")
    last = s.holds[-1]
    holds = (*_close(s.holds, event.at),
             Hold(event.to, event.at, due_at=last.due_at, accepted=last.accepted))
    pending = replace(s.pending, receiver=event.to) if s.pending else None
    holder = event.to if s.holder is not None else None
    # The running step goes on under a new key: alerts already raised were for the agency
    # that is gone; the successor, which must act now, is alerted in its own right.
    step_key = event.message_id if s.step_key is not None else None
    return replace(s, holds=holds, pending=pending, holder=holder, step_key=step_key,
                   involved=s.involved | {event.to})


def fold(code: str, events: Iterable[Event]) -> DossierState | None:
    state: DossierState | None = None
    for event in events:
        state = apply(state, event, code)
    return state
