"""The per-agency circuit breaker as a state machine, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.circuit import Breakers, CircuitBreaker, CircuitState, Permit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def breaker(clock: FakeClock, failures: int = 3, cooldown: float = 30.0,
            max_cooldown: float = 600.0) -> CircuitBreaker:
    return CircuitBreaker(failures=failures, cooldown=cooldown, max_cooldown=max_cooldown,
                          clock=clock)


def fail(b: CircuitBreaker) -> bool:
    permit = b.acquire()
    assert permit.allowed
    opened = b.failure(permit)
    b.release(permit)
    return opened


def succeed(b: CircuitBreaker) -> bool:
    permit = b.acquire()
    assert permit.allowed
    closed = b.success(permit)
    b.release(permit)
    return closed


def open_it(b: CircuitBreaker) -> None:
    for _ in range(b.threshold):
        fail(b)
    assert b.state is CircuitState.OPEN


def test_closed_lets_everything_through(clock: FakeClock) -> None:
    b = breaker(clock)
    for _ in range(10):
        assert succeed(b) is False
    assert b.state is CircuitState.CLOSED


def test_opens_after_f_consecutive_failures(clock: FakeClock) -> None:
    b = breaker(clock, failures=3)
    assert fail(b) is False
    assert fail(b) is False
    assert b.state is CircuitState.CLOSED
    assert fail(b) is True
    assert b.state is CircuitState.OPEN
    assert b.remaining() == 30.0


def test_a_success_resets_the_count(clock: FakeClock) -> None:
    b = breaker(clock, failures=3)
    fail(b)
    fail(b)
    succeed(b)
    fail(b)
    fail(b)
    assert b.state is CircuitState.CLOSED
    fail(b)
    assert b.state is CircuitState.OPEN


def test_open_refuses_and_says_how_long(clock: FakeClock) -> None:
    b = breaker(clock)
    open_it(b)
    clock.advance(10)
    permit = b.acquire()
    assert not permit.allowed
    assert permit.wait == pytest.approx(20.0)
    assert b.remaining() == pytest.approx(20.0)
    clock.advance(19.9)
    assert not b.acquire().allowed
    assert b.state is CircuitState.OPEN


def test_half_open_lets_exactly_one_probe_through(clock: FakeClock) -> None:
    b = breaker(clock)
    open_it(b)
    clock.advance(30)
    probe = b.acquire()
    assert probe.allowed and probe.probe
    assert b.state is CircuitState.HALF_OPEN
    for _ in range(5):
        other = b.acquire()
        assert not other.allowed
        assert other.wait == 0.0  # the probe's answer decides, not the clock
    clock.advance(3600)
    assert not b.acquire().allowed


def test_probe_success_closes(clock: FakeClock) -> None:
    b = breaker(clock)
    open_it(b)
    clock.advance(30)
    probe = b.acquire()
    assert b.success(probe) is True
    b.release(probe)
    assert b.state is CircuitState.CLOSED
    assert all(b.acquire().allowed for _ in range(5))
    # Counting starts again from zero.
    fail(b)
    fail(b)
    assert b.state is CircuitState.CLOSED


def test_probe_failure_reopens_with_doubled_cooldown_up_to_the_max(clock: FakeClock) -> None:
    b = breaker(clock, cooldown=30, max_cooldown=200)
    open_it(b)
    seen = []
    for _ in range(5):
        clock.advance(b.remaining())
        probe = b.acquire()
        assert probe.probe
        assert b.failure(probe) is True
        assert b.state is CircuitState.OPEN
        seen.append(b.remaining())
    assert seen == [60, 120, 200, 200, 200]


def test_closing_resets_the_cooldown(clock: FakeClock) -> None:
    b = breaker(clock, cooldown=30)
    open_it(b)
    clock.advance(30)
    b.failure(b.acquire())
    assert b.cooldown == 60
    clock.advance(60)
    b.success(b.acquire())
    assert b.state is CircuitState.CLOSED
    open_it(b)
    assert b.remaining() == 30


def test_a_probe_without_outcome_frees_its_place(clock: FakeClock) -> None:
    b = breaker(clock)
    open_it(b)
    clock.advance(30)
    probe = b.acquire()
    assert not b.acquire().allowed
    b.release(probe)  # e.g. the message was a duplicate: no push was made
    assert b.state is CircuitState.HALF_OPEN
    second = b.acquire()
    assert second.allowed and second.probe
    assert not b.acquire().allowed


def test_release_after_an_outcome_changes_nothing(clock: FakeClock) -> None:
    b = breaker(clock)
    open_it(b)
    clock.advance(30)
    probe = b.acquire()
    b.failure(probe)
    b.release(probe)
    assert b.state is CircuitState.OPEN
    clock.advance(60)
    probe = b.acquire()
    b.success(probe)
    b.release(probe)
    assert b.state is CircuitState.CLOSED


def test_late_outcomes_of_an_older_generation_are_ignored(clock: FakeClock) -> None:
    b = breaker(clock, failures=2)
    in_flight = [b.acquire() for _ in range(5)]  # five pushes under way while closed
    assert b.failure(in_flight[0]) is False
    assert b.failure(in_flight[1]) is True
    # The other three fail late: the breaker is open already, its cool-down stays.
    for permit in in_flight[2:4]:
        assert b.failure(permit) is False
    assert b.remaining() == 30
    # One succeeds late: it does not close the breaker (only a probe can).
    assert b.success(in_flight[4]) is False
    assert b.state is CircuitState.OPEN
    clock.advance(30)
    probe = b.acquire()
    assert b.failure(in_flight[2]) is False  # still stale while the probe is out
    assert b.state is CircuitState.HALF_OPEN
    assert b.success(probe) is True


def test_a_refused_permit_reports_nothing(clock: FakeClock) -> None:
    b = breaker(clock)
    open_it(b)
    refused = b.acquire()
    assert b.failure(refused) is False
    assert b.success(refused) is False
    assert b.remaining() == 30


def test_cooldown_never_exceeds_its_max(clock: FakeClock) -> None:
    b = breaker(clock, cooldown=900, max_cooldown=600)
    open_it(b)
    assert b.remaining() == 600


@pytest.mark.parametrize(
    ("failures", "cooldown", "max_cooldown"), [(0, 30, 600), (3, 0, 600), (3, 30, 0)]
)
def test_bad_parameters(failures: int, cooldown: float, max_cooldown: float) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(failures=failures, cooldown=cooldown, max_cooldown=max_cooldown)
    with pytest.raises(ValueError):
        Breakers(failures=failures, cooldown=cooldown, max_cooldown=max_cooldown)


def test_breakers_are_per_key(clock: FakeClock) -> None:
    breakers = Breakers(failures=2, cooldown=30, max_cooldown=600, clock=clock)
    a, b = breakers["000.00.12.H57"], breakers["000.00.05.H57"]
    assert breakers["000.00.12.H57"] is a
    fail(a)
    fail(a)
    assert a.state is CircuitState.OPEN
    assert b.state is CircuitState.CLOSED and b.acquire().allowed
    assert breakers.not_closed() == {"000.00.12.H57": CircuitState.OPEN}
    assert set(breakers) == {"000.00.12.H57", "000.00.05.H57"}
    assert "000.00.31.H57" not in breakers


@given(st.lists(st.sampled_from(["ok", "fail", "drop", "wait"]), max_size=80))
def test_never_more_than_one_probe_and_never_a_call_while_open(steps: list[str]) -> None:
    """Whatever happens, at most one call is under way while not closed, and no call is
    allowed while the open period lasts."""
    clock = FakeClock()
    b = breaker(clock, failures=2, cooldown=5, max_cooldown=20)
    out: list[Permit] = []
    for step in steps:
        if step == "wait":
            clock.advance(3)
            continue
        was_open = b.state is CircuitState.OPEN and b.remaining() > 0
        permit = b.acquire()
        if was_open:
            assert not permit.allowed
        if permit.allowed:
            out.append(permit)
        if out and step != "drop":
            done = out.pop(0)
            (b.success if step == "ok" else b.failure)(done)
            b.release(done)
        elif out and step == "drop":
            b.release(out.pop(0))
        if b.state is not CircuitState.CLOSED:
            current = [p for p in out if p.generation == b.generation]
            assert len(current) <= 1
        assert b.cooldown <= 20
