"""Retries against the real RabbitMQ: Retry-After and the delay tiers, which answers are retried,
limits by attempts and by age (per priority), and the per-agency circuit breaker."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway import topology as topo
from gateway.broker import delete_topology
from gateway.circuit import CircuitBreaker, CircuitState
from gateway.delivery import (
    H_FIRST_ATTEMPT,
    H_PRIORITY,
    delivery_age,
    message_priority,
    parse_retry_after,
    retry_tier,
    tier_at_least,
)
from gateway.directory import Directory, with_endpoint
from gateway.errors import ConfigError
from gateway.service import build_app
from gateway.settings import Limits, Settings
from tests.conftest import PROVINCE, PUSH_AGENCY, Gateway, GatewayFactory, document
from tests.peers.push_endpoint import PushEndpoint

OTHER_PUSH_AGENCY = "000.00.05.H57"  # a sở, made a push agency for these tests


@dataclass
class TimedEndpoint(PushEndpoint):
    """The test endpoint, also noting when each request came and able to send Retry-After."""

    retry_after: str | None = None
    times: list[float] = field(default_factory=list)

    async def receive(self, request: web.Request) -> web.StreamResponse:
        self.times.append(time.monotonic())
        response = await super().receive(request)
        if response.status >= 300 and self.retry_after is not None:
            response.headers["Retry-After"] = self.retry_after
        return response

    @property
    def total(self) -> int:
        return sum(self.requests.values())


@pytest.fixture
def push_endpoint() -> TimedEndpoint:
    return TimedEndpoint()


@pytest.fixture
async def tuned(settings: Settings, amqp_url: str) -> AsyncIterator[Callable[..., Settings]]:
    """``settings.with_(...)``; retry tiers of its own are deleted afterwards (the namespace's
    other queues are deleted by the ``settings`` fixture)."""
    made: list[Settings] = []

    def tune(**changes: Any) -> Settings:
        made.append(settings.with_(**changes))
        return made[-1]

    yield tune
    base = topo.build(settings)
    for variant in made:
        extra = topo.build(variant)
        queues = tuple(q for q in extra.queues if q not in base.queues)
        exchanges = tuple(e for e in extra.exchanges if e not in base.exchanges)
        if queues or exchanges:
            await delete_topology(
                amqp_url, dataclasses.replace(extra, queues=queues, exchanges=exchanges)
            )


async def send(gw: Gateway, recipient: str, **header: Any) -> str:
    response = await gw.send(PROVINCE, document(PROVINCE, [{"agency": recipient}], **header))
    assert response.status == 202, await response.text()
    return str((await response.json())["id"])


async def given_up(gw: Gateway, message_id: str) -> tuple[str, int]:
    """Why and after how many attempts a failed recipient was given up, as the store says
    (the dead letter's own headers say the same; the store is read so that these tests do not
    depend on who consumes the dead-letter queue)."""
    [recipient] = (await gw.store.message(message_id)).recipients
    assert recipient.state == "failed"
    assert recipient.last_error is not None
    return recipient.last_error.split(":", 1)[0], recipient.attempts


async def attempts(gw: Gateway, message_id: str) -> int:
    return (await gw.store.message(message_id)).recipients[0].attempts


def endpoint(gw: Gateway) -> TimedEndpoint:
    assert isinstance(gw.push, TimedEndpoint)
    return gw.push


def breaker(gw: Gateway, agency: str = PUSH_AGENCY) -> CircuitBreaker:
    return gw.worker.breakers[agency]


# -- pure parts: which tier, which limits --------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "tier"),
    [(0, 0), (0.1, 0), (5, 0), (5.001, 1), (30, 1), (31, 2), (299, 2), (7200, 4), (86400, 4)],
)
def test_tier_at_least_is_the_shortest_long_enough(seconds: float, tier: int) -> None:
    assert tier_at_least((5000, 30000, 300000, 1800000, 7200000), seconds) == tier


def test_tier_at_least_goes_by_duration_not_position() -> None:
    assert tier_at_least((30000, 5000, 300000), 4) == 1
    assert tier_at_least((30000, 5000, 300000), 10) == 0
    assert tier_at_least((30000, 5000, 300000), 1000) == 2


@pytest.mark.parametrize(
    ("attempt", "delay", "tier"),
    [
        (1, None, 0),
        (3, None, 2),
        (9, None, 4),
        (1, 1, 0),  # Retry-After shorter than the attempt's tier: the tier
        (1, 20, 1),  # longer: the shortest tier that long
        (1, 600, 3),
        (4, 20, 3),  # the attempt's own tier is longer still
        (1, 10**6, 4),  # longer than any tier: the longest
    ],
)
def test_retry_tier_takes_retry_after_as_a_floor(
    attempt: int, delay: float | None, tier: int
) -> None:
    topology = topo.build(Settings())
    assert retry_tier(topology, attempt, delay) == tier


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Fri, 20 Nov 2026 08:01:30 GMT", now) == 90.0
    assert parse_retry_after("Fri, 20 Nov 2026 07:00:00 GMT", now) == 0.0  # in the past
    for bad in (None, "", "-5", "1.5", "soon", "Fri, 99 Nov 2026"):
        assert parse_retry_after(bad, now) is None


def test_priority_from_the_header_first_then_the_body() -> None:
    body = orjson.dumps({"kind": "document", "header": {"priority": "flash"}, "body": {}})
    assert message_priority({}, body) == "flash"
    assert message_priority({H_PRIORITY: "urgent"}, body) == "urgent"
    assert message_priority({H_PRIORITY: b"very_urgent"}, body) == "very_urgent"
    assert message_priority({}, orjson.dumps({"header": {}})) == "normal"
    for broken in (b"", b"not json", b"[]", b'{"header": 5}'):
        assert message_priority({}, broken) == "normal"


def test_age_counts_from_the_first_failed_attempt() -> None:
    now = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    assert delivery_age({}, now) == 0.0
    assert delivery_age({H_FIRST_ATTEMPT: (now - timedelta(hours=2)).isoformat()}, now) == 7200
    assert delivery_age({H_FIRST_ATTEMPT: "2026-11-20T07:59:00"}, now) == 60  # naive: UTC
    assert delivery_age({H_FIRST_ATTEMPT: "garbage"}, now) == 0.0
    assert delivery_age({H_FIRST_ATTEMPT: (now + timedelta(minutes=1)).isoformat()}, now) == 0


def test_limit_settings() -> None:
    settings = Settings.from_env(
        {
            "LIENTHONG_MAX_ATTEMPTS": "8",
            "LIENTHONG_MAX_AGE": "72h",
            "LIENTHONG_PRIORITY_LIMITS": "flash=12/6h, very_urgent=10/24h",
            "LIENTHONG_BREAKER_FAILURES": "4",
            "LIENTHONG_BREAKER_COOLDOWN": "15s",
            "LIENTHONG_BREAKER_MAX_COOLDOWN": "5m",
        }
    )
    assert settings.limits("flash") == Limits(12, 6 * 3600)
    assert settings.limits("very_urgent") == Limits(10, 24 * 3600)
    assert settings.limits("urgent") == settings.limits("normal") == Limits(8, 72 * 3600)
    assert settings.limits(None) == Limits(8, 72 * 3600)
    assert (settings.breaker_failures, settings.breaker_cooldown) == (4, 15.0)
    assert settings.breaker_max_cooldown == 300.0
    defaults = Settings()
    assert (defaults.max_age, defaults.priority_limits) == (72 * 3600, ())
    assert (defaults.breaker_failures, defaults.breaker_cooldown) == (5, 30.0)
    assert defaults.breaker_max_cooldown == 600.0
    assert Settings.from_env({"LIENTHONG_PRIORITY_LIMITS": ""}).priority_limits == ()


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("LIENTHONG_PRIORITY_LIMITS", "flash=12", "not PRIORITY=ATTEMPTS/AGE"),
        ("LIENTHONG_PRIORITY_LIMITS", "flash:12/6h", "not PRIORITY=ATTEMPTS/AGE"),
        ("LIENTHONG_PRIORITY_LIMITS", "FLASH=12/6h", "not PRIORITY=ATTEMPTS/AGE"),
        ("LIENTHONG_PRIORITY_LIMITS", "fl ash=12/6h", "not PRIORITY=ATTEMPTS/AGE"),
        ("LIENTHONG_PRIORITY_LIMITS", "hot=12/6h", "unknown priority 'hot'"),
        ("LIENTHONG_PRIORITY_LIMITS", "flash=12/6h,flash=3/1h", "given twice"),
        ("LIENTHONG_PRIORITY_LIMITS", "flash=12/6h,,urgent=3/1h", "empty entry"),
        ("LIENTHONG_PRIORITY_LIMITS", "flash=0/6h", "positive"),
        ("LIENTHONG_PRIORITY_LIMITS", "flash=12/0s", "longer than zero"),
        ("LIENTHONG_PRIORITY_LIMITS", "flash=12/6 days", "not PRIORITY=ATTEMPTS/AGE"),
        ("LIENTHONG_PRIORITY_LIMITS", "flash=12/soon", "not a duration"),
        ("LIENTHONG_MAX_AGE", "0", "longer than zero"),
        ("LIENTHONG_MAX_AGE", "3d", "not a duration"),
        ("LIENTHONG_BREAKER_FAILURES", "0", "positive"),
        ("LIENTHONG_BREAKER_COOLDOWN", "0s", "longer than zero"),
        ("LIENTHONG_BREAKER_MAX_COOLDOWN", "forever", "not a duration"),
    ],
)
def test_bad_limit_settings_name_the_variable(name: str, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: text})
    assert info.value.detail.startswith(f"{name}={text!r}: ")
    assert fragment in info.value.detail


# -- retries through the broker -------------------------------------------------------------------


async def test_retry_after_picks_the_shortest_tier_at_least_that_long(
    make_gateway: GatewayFactory, tuned: Callable[..., Settings]
) -> None:
    gw = await make_gateway(settings=tuned(retry_delays=(0.1, 0.3, 1.2)))
    push = endpoint(gw)
    push.retry_after = "1"
    push.fail_next(503)
    message_id = await send(gw, PUSH_AGENCY)
    await gw.wait_state(message_id, PUSH_AGENCY, "delivered")
    assert push.requests[message_id] == 2
    # Without Retry-After the first retry waits 0.1 s; with "1" it takes the 1.2 s tier (a
    # TTL never expires early, so this lower bound cannot flake).
    assert push.times[1] - push.times[0] >= 1.2
    assert await attempts(gw, message_id) == 2


async def test_429_is_retried(gateway: Gateway) -> None:
    push = endpoint(gateway)
    push.fail_next(429, 429)
    message_id = await send(gateway, PUSH_AGENCY)
    await gateway.wait_state(message_id, PUSH_AGENCY, "delivered")
    assert push.requests[message_id] == 3
    assert await attempts(gateway, message_id) == 3
    assert list(push.effects) == [message_id]


async def test_404_is_permanent(gateway: Gateway) -> None:
    push = endpoint(gateway)
    push.fail_next(404)
    message_id = await send(gateway, PUSH_AGENCY)
    await gateway.wait_state(message_id, PUSH_AGENCY, "failed")
    assert push.requests[message_id] == 1
    row = await gateway.store.message(message_id)
    assert row.recipients[0].last_error == "permanent: push answered HTTP 404"
    assert await given_up(gateway, message_id) == ("permanent", 1)
    # The endpoint answered: that is no reason to stop pushing to it.
    assert breaker(gateway).state is CircuitState.CLOSED
    assert breaker(gateway).failures == 0


async def test_age_limit_dead_letters(
    make_gateway: GatewayFactory, settings: Settings
) -> None:
    gw = await make_gateway(
        settings=settings.with_(max_age=0.5, max_attempts=100, breaker_failures=100)
    )
    push = endpoint(gw)
    push.fail_next(*[500] * 100)
    message_id = await send(gw, PUSH_AGENCY)
    await gw.wait_state(message_id, PUSH_AGENCY, "failed")
    # 0.2 s then 0.4 s tiers: the second failure is about 0.2 s after the first, the third
    # about 0.6 s, past the limit.
    assert 2 <= push.requests[message_id] <= 3
    assert await given_up(gw, message_id) == ("max_age", push.requests[message_id])
    row = await gw.store.message(message_id)
    assert row.recipients[0].last_error == "max_age: push answered HTTP 500"


async def test_per_priority_limit_applies(
    make_gateway: GatewayFactory, settings: Settings
) -> None:
    limits = Settings.from_env({"LIENTHONG_PRIORITY_LIMITS": "flash=2/1h"}).priority_limits
    gw = await make_gateway(
        settings=settings.with_(max_attempts=5, priority_limits=limits, breaker_failures=100)
    )
    push = endpoint(gw)
    push.fail_next(*[500] * 5)
    flash = await send(gw, PUSH_AGENCY, priority="flash")
    await gw.wait_state(flash, PUSH_AGENCY, "failed")
    assert push.requests[flash] == 2
    assert await given_up(gw, flash) == ("max_attempts", 2)
    # A normal message keeps the default of 5: it takes the 3 failures left and gets through.
    normal = await send(gw, PUSH_AGENCY)
    await gw.wait_state(normal, PUSH_AGENCY, "delivered")
    assert push.requests[normal] == 4


async def test_breaker_opens_after_f_failures_then_lets_one_probe_through(
    make_gateway: GatewayFactory, settings: Settings
) -> None:
    gw = await make_gateway(
        settings=settings.with_(
            breaker_failures=3, breaker_cooldown=0.6, breaker_max_cooldown=1.2, max_attempts=20
        )
    )
    push = endpoint(gw)
    push.fail_next(503, 503, 503, 503)  # three to open the breaker, then one failed probe
    first = await send(gw, PUSH_AGENCY)
    b = breaker(gw)
    await gw.wait_for(_state_is(b, CircuitState.OPEN))
    assert push.total == 3
    others = [await send(gw, PUSH_AGENCY) for _ in range(2)]

    async def while_open(requests: int) -> None:
        """Watch one open period (one generation) to its end: no request may come."""
        generation = b.generation
        while b.generation == generation and b.remaining() > 0:
            assert push.total == requests, "the endpoint was called while the breaker was open"
            await asyncio.sleep(0.02)

    opened = b.generation
    await while_open(3)
    # The first message back after the cool-down is the probe; it fails: open again, longer.
    async def probe_failed() -> bool:
        return b.generation >= opened + 2  # open -> half-open -> open

    await gw.wait_for(probe_failed)
    assert b.state is CircuitState.OPEN
    assert push.total == 4
    assert b.cooldown == 1.2
    await while_open(4)
    for message_id in [first, *others]:
        await gw.wait_state(message_id, PUSH_AGENCY, "delivered")
    assert b.state is CircuitState.CLOSED
    # 3 failures, 1 failed probe, then each message once; the time spent waiting for the
    # breaker used none of a message's attempts.
    assert push.total == 7
    assert sorted(push.effects) == sorted([first, *others])
    for message_id in [first, *others]:
        assert await attempts(gw, message_id) == push.requests[message_id]


def _state_is(b: CircuitBreaker, state: CircuitState) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return b.state is state

    return check


async def test_messages_waiting_on_an_open_breaker_still_age(
    make_gateway: GatewayFactory, settings: Settings
) -> None:
    gw = await make_gateway(
        settings=settings.with_(
            breaker_failures=1, breaker_cooldown=30, max_age=0.5, max_attempts=100
        )
    )
    push = endpoint(gw)
    push.fail_next(503)
    first = await send(gw, PUSH_AGENCY)
    await gw.wait_for(_state_is(breaker(gw), CircuitState.OPEN))
    second = await send(gw, PUSH_AGENCY)
    await gw.wait_state(first, PUSH_AGENCY, "failed")
    await gw.wait_state(second, PUSH_AGENCY, "failed")
    assert push.total == 1
    assert await given_up(gw, first) == ("max_age", 1)
    assert await given_up(gw, second) == ("max_age", 0)  # never pushed


async def test_an_open_breaker_does_not_slow_another_agency(
    settings: Settings, sample_directory: Directory, aiohttp_client: Any, aiohttp_server: Any,
    push_endpoint: TimedEndpoint,
) -> None:
    other_endpoint = TimedEndpoint()
    urls = []
    for peer in (push_endpoint, other_endpoint):
        server = await aiohttp_server(peer.app())
        urls.append(str(server.make_url("/receive")))
    directory = with_endpoint(
        with_endpoint(sample_directory, PUSH_AGENCY, urls[0]), OTHER_PUSH_AGENCY, urls[1]
    )
    app_settings = settings.with_(breaker_failures=2, breaker_cooldown=30, max_attempts=100)
    client = await aiohttp_client(build_app(app_settings, directory))
    gw = Gateway(client, app_settings, directory, push_endpoint, {})

    push_endpoint.fail_next(*["reset"] * 100)
    down = [await send(gw, PUSH_AGENCY)]
    await gw.wait_for(_state_is(breaker(gw), CircuitState.OPEN))
    assert push_endpoint.total == 2
    # Now a mix: the closed agency's messages go straight through, however many wait for the
    # open one.
    started = time.monotonic()
    up = []
    for _ in range(10):
        down.append(await send(gw, PUSH_AGENCY))
        down.append(await send(gw, PUSH_AGENCY))
        up.append(await send(gw, OTHER_PUSH_AGENCY))
    for message_id in up:
        await gw.wait_state(message_id, OTHER_PUSH_AGENCY, "delivered", timeout=5)
    elapsed = time.monotonic() - started
    assert sorted(other_endpoint.effects) == sorted(up)
    assert other_endpoint.total == len(up)  # each once, no retry
    assert elapsed < 5
    assert breaker(gw).state is CircuitState.OPEN
    assert breaker(gw, OTHER_PUSH_AGENCY).state is CircuitState.CLOSED
    assert push_endpoint.total == 2
    for message_id in down:
        assert await gw.recipient_state(message_id, PUSH_AGENCY) == "pending"
