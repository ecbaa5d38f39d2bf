"""Per-agency circuit breakers: stop pushing to an endpoint that keeps failing.

Pure values and arithmetic, no I/O and no sleeping; the clock is injected (``time.monotonic``
by default), so the state machine is tested with a fake one::

    closed ──F consecutive failures──▶ open (for the cool-down c)
    open ──c elapsed, the next call──▶ half-open: that call is the one probe; the others wait
    half-open ──the probe succeeds──▶ closed (c back to its base)
    half-open ──the probe fails──▶ open (for min(2c, max))

A caller asks :meth:`CircuitBreaker.acquire` before each call and reports the outcome with
:meth:`~CircuitBreaker.success` or :meth:`~CircuitBreaker.failure`, and always calls
:meth:`~CircuitBreaker.release` afterwards (in a ``finally``): a probe that ends without an outcome
(the message was a duplicate, the task was cancelled) must not hold the half-open breaker shut.

Every transition starts a new *generation*; an outcome reported with a permit of an older one is
ignored. So the calls that were already under way when the breaker opened cannot, failing late,
double the cool-down, nor, succeeding late, close a breaker whose probe has not answered.

The breakers live in one process: with several gateway processes each keeps its own, which is
enough for their purpose (not to keep pushing at an endpoint that is down, and not to let one
agency's dead endpoint hold the worker's prefetch slots for everyone else).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Clock = Callable[[], float]


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Permit:
    """The answer to :meth:`CircuitBreaker.acquire`.

    ``allowed``: make the call. Otherwise ``wait`` is the time until the breaker lets a probe
    through: the rest of the cool-down, or 0 while a probe is under way (its outcome decides).
    """

    allowed: bool
    wait: float = 0.0
    probe: bool = False
    generation: int = 0


def _check(failures: int, cooldown: float, max_cooldown: float) -> None:
    if failures < 1:
        raise ValueError("failures must be at least 1")
    if cooldown <= 0 or max_cooldown <= 0:
        raise ValueError("cool-downs must be longer than zero")


class CircuitBreaker:
    def __init__(
        self, *, failures: int, cooldown: float, max_cooldown: float,
        clock: Clock = time.monotonic,
    ) -> None:
        _check(failures, cooldown, max_cooldown)
        self.threshold = failures
        self.base_cooldown = min(cooldown, max_cooldown)
        self.max_cooldown = max_cooldown
        self.clock = clock
        self.state = CircuitState.CLOSED
        self.failures = 0  # consecutive, while closed
        self.cooldown = self.base_cooldown  # of the current (or next) open period
        self.open_until = 0.0
        self.generation = 0
        self._probe_out = False

    def _enter(self, state: CircuitState) -> None:
        self.state = state
        self.generation += 1
        self._probe_out = False

    def _open(self, cooldown: float) -> None:
        self._enter(CircuitState.OPEN)
        self.cooldown = cooldown
        self.open_until = self.clock() + cooldown

    def remaining(self) -> float:
        """Seconds left of the open period (0 unless open)."""
        if self.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, self.open_until - self.clock())

    def acquire(self) -> Permit:
        """May a call be made now? Never blocks."""
        if self.state is CircuitState.OPEN:
            wait = self.open_until - self.clock()
            if wait > 0:
                return Permit(False, wait=wait, generation=self.generation)
            self._enter(CircuitState.HALF_OPEN)
        if self.state is CircuitState.HALF_OPEN:
            if self._probe_out:
                return Permit(False, wait=0.0, generation=self.generation)
            self._probe_out = True
            return Permit(True, probe=True, generation=self.generation)
        return Permit(True, generation=self.generation)

    def success(self, permit: Permit) -> bool:
        """The call worked (the endpoint answered). True when this closed the breaker."""
        if permit.generation != self.generation or not permit.allowed:
            return False
        if self.state is CircuitState.HALF_OPEN:
            self._enter(CircuitState.CLOSED)
            self.failures = 0
            self.cooldown = self.base_cooldown
            return True
        self.failures = 0
        return False

    def failure(self, permit: Permit) -> bool:
        """The call failed in a way that says the endpoint is unwell. True when this opened the
        breaker."""
        if permit.generation != self.generation or not permit.allowed:
            return False
        if self.state is CircuitState.HALF_OPEN:
            self._open(min(self.cooldown * 2, self.max_cooldown))
            return True
        self.failures += 1
        if self.failures >= self.threshold:
            self.failures = 0
            self._open(self.base_cooldown)
            return True
        return False

    def release(self, permit: Permit) -> None:
        """The call is over. A probe that reported no outcome frees its place for another."""
        if (
            permit.probe
            and permit.generation == self.generation
            and self.state is CircuitState.HALF_OPEN
        ):
            self._probe_out = False


class Breakers:
    """One breaker per key (an agency code), made on first use with the same parameters."""

    def __init__(
        self, *, failures: int, cooldown: float, max_cooldown: float,
        clock: Clock = time.monotonic,
    ) -> None:
        _check(failures, cooldown, max_cooldown)
        self._params = (failures, cooldown, max_cooldown)
        self.clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def __getitem__(self, key: str) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            failures, cooldown, max_cooldown = self._params
            breaker = CircuitBreaker(
                failures=failures, cooldown=cooldown, max_cooldown=max_cooldown, clock=self.clock
            )
            self._breakers[key] = breaker
        return breaker

    def __contains__(self, key: object) -> bool:
        return key in self._breakers

    def __iter__(self) -> Iterator[str]:
        return iter(self._breakers)

    def not_closed(self) -> dict[str, CircuitState]:
        """The keys whose breaker is open or half-open, with that state."""
        return {k: b.state for k, b in self._breakers.items() if b.state is not CircuitState.CLOSED}
