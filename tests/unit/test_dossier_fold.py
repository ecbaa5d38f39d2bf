"""The dossier state fold against a small independent model: for random sequences of steps by
random agencies, the fold accepts exactly the legal ones, refuses every illegal one without
changing the state, and keeps its invariants."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.dossiers import DossierState, Event, IllegalStep, Phase, Step, apply, fold
from gateway.errors import Forbidden

R = "000.21.35.H57"  # the receiving commune
AGENCIES = (R, "000.00.35.H57", "000.00.00.H57", "000.22.35.H57")
CODE = f"{R}-261118-0042"
T0 = datetime(2026, 11, 18, 1, 30, tzinfo=UTC)


@dataclass
class Model:
    """What the rules say, written plainly."""

    exists: bool = False
    holder: str | None = None
    pending: tuple[str, str, str] | None = None  # message id, sender, receiver
    completed: bool = False
    withdrawn: bool = False
    involved: set[str] = field(default_factory=set)

    @property
    def closed(self) -> bool:
        return self.completed or self.withdrawn

    def legal(self, step: Step, actor: str, to: str | None, about: str | None) -> bool:
        if not self.exists:
            return step is Step.HANDOVER and actor == R and to is not None and to != R
        if step is Step.ALERT:
            return True
        responsible = self.pending[2] if self.pending else self.holder
        if step is Step.APOLOGY:
            return not self.closed and actor in self.involved
        if step is Step.TRANSFER:
            return not self.closed and responsible == actor and to not in (None, actor)
        if step is Step.WITHDRAW:  # the citizen's agency, or the one that must act, stops it
            return not self.closed and actor in (R, responsible)
        if self.closed:
            return False
        if step is Step.HANDOVER:
            return self.pending is None and self.holder == actor and to not in (None, actor)
        if step in (Step.ACCEPT, Step.RETURN):
            return (self.pending is not None and self.pending[2] == actor
                    and about in (None, self.pending[0]))
        return self.pending is None and self.holder == actor  # result

    def apply(self, step: Step, actor: str, to: str | None, message_id: str) -> None:
        if step is Step.HANDOVER:
            self.exists = True
            self.involved |= {actor, to or ""}
            self.pending, self.holder = (message_id, actor, to or ""), None
        elif step is Step.ACCEPT:
            assert self.pending
            self.holder, self.pending = actor, None
        elif step is Step.RETURN:
            assert self.pending
            self.holder, self.pending = self.pending[1], None
        elif step is Step.RESULT:
            self.completed = True
            self.holder = R  # the result is with the receiving agency, where the citizen waits
        elif step is Step.WITHDRAW:
            self.withdrawn, self.holder, self.pending = True, R, None
        elif step is Step.TRANSFER:
            self.involved.add(to or "")
            if self.pending:
                self.pending = (self.pending[0], self.pending[1], to or "")
            else:
                self.holder = to


steps = st.lists(
    st.tuples(
        st.sampled_from(list(Step)),
        st.sampled_from(AGENCIES),
        st.sampled_from((*AGENCIES, None)),
        st.booleans(),  # accept/return: name the pending hand-over, or a wrong one
    ),
    max_size=25,
)


def check_invariants(state: DossierState) -> None:
    assert (state.holder is None) == (state.phase is Phase.IN_TRANSIT)
    assert (state.pending is not None) == (state.phase is Phase.IN_TRANSIT)
    open_holds = [h for h in state.holds if h.until is None]
    assert len(open_holds) <= 1
    for before, after in zip(state.holds, state.holds[1:], strict=False):
        assert before.until == after.since  # no gap, no overlap: every moment has an agency
    if state.phase is Phase.COMPLETED:
        assert state.completed_at is not None and not open_holds
    if state.phase is Phase.WITHDRAWN:
        assert state.withdrawn_at is not None and not open_holds
        assert state.responsible is None and state.due_at is None


@settings(max_examples=400, deadline=None)
@given(steps)
def test_fold_accepts_exactly_the_legal_steps(sequence: list[tuple[Step, str, str | None, bool]]
                                              ) -> None:
    model = Model()
    state: DossierState | None = None
    accepted: list[Event] = []
    for i, (step, actor, to, right_about) in enumerate(sequence):
        message_id = f"m{i}"
        about = None
        if step in (Step.ACCEPT, Step.RETURN):
            about = (model.pending[0] if model.pending and right_about else "wrong")
        event = Event(
            seq=len(accepted) + 1, step=step, actor=actor, at=T0 + timedelta(hours=i),
            message_id=message_id, to=to if step in (Step.HANDOVER, Step.TRANSFER) else None,
            about=about,
            received_at=T0, appointment_at=T0 + timedelta(days=20),
            alert="overdue" if step is Step.ALERT else None,
        )
        legal = model.legal(step, actor, event.to, about)
        try:
            new = apply(state, event, CODE)
        except (IllegalStep, Forbidden):
            assert not legal, (step, actor, to, about)
            continue
        assert legal, (step, actor, to, about)
        model.apply(step, actor, event.to, message_id)
        state = new
        accepted.append(event)
        check_invariants(state)
        assert state.holder == model.holder
        assert (state.phase is Phase.COMPLETED) == model.completed
        assert (state.phase is Phase.WITHDRAWN) == model.withdrawn
    # Folding the accepted history again gives the same state: the state is the fold.
    assert fold(CODE, accepted) == state


def test_steps_out_of_order_are_refused() -> None:
    first = Event(1, Step.HANDOVER, R, T0, "m1", to=AGENCIES[1], received_at=T0,
                  appointment_at=T0 + timedelta(days=9))
    state = apply(None, first, CODE)
    skipped = Event(3, Step.ACCEPT, AGENCIES[1], T0, "m3", about="m1")
    with pytest.raises(IllegalStep):
        apply(state, skipped, CODE)
    with pytest.raises(IllegalStep):
        apply(None, Event(1, Step.ACCEPT, R, T0, "m1"), CODE)
