"""Shared fixtures: the real RabbitMQ, a fresh database per test (SQLite and PostgreSQL), and
the whole gateway running in the test's event loop behind a real HTTP test server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import create_async_engine

from gateway import topology as topo
from gateway.api.keys import STORE, WORKER
from gateway.broker import delete_topology
from gateway.delivery import DeliveryWorker
from gateway.directory import Directory, load_directory, with_endpoint
from gateway.readiness import amqp_ready, database_ready
from gateway.service import build_app
from gateway.settings import DEFAULT_DIRECTORY, Settings
from gateway.store.store import Store
from tests.peers.push_endpoint import PushEndpoint

AMQP_URL = os.environ.get("LIENTHONG_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_URL = os.environ.get(
    "LIENTHONG_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)

PROVINCE = "000.00.00.H57"  # UBND tỉnh Thừa Thiên Huế
PUSH_AGENCY = "000.00.12.H57"  # Sở TT&TT (push in the sample directory)
HUE = "000.00.31.H57"  # UBND thành phố Huế (district level)
PHONG_DIEN = "000.00.35.H57"  # UBND huyện Phong Điền
DISTRICTS = ("000.00.31.H57", "000.00.32.H57", "000.00.33.H57", "000.00.34.H57", PHONG_DIEN)
MERGED_COMMUNE = "000.25.34.H57"  # xã Phú Mỹ, merged into 000.21.34.H57
SUCCESSOR = "000.21.34.H57"


def _check(coro: Any) -> str | None:
    # Session fixtures may be first requested from inside a running loop: check in a thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        result: str | None = pool.submit(asyncio.run, coro).result()
    return result


@pytest.fixture(scope="session")
def amqp_url() -> str:
    reason = _check(amqp_ready(AMQP_URL))
    if reason is not None:
        pytest.fail(f"RabbitMQ is needed at {AMQP_URL}: {reason} (scripts/test starts it)")
    return AMQP_URL


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    reason = _check(database_ready(PG_URL))
    if reason is not None:
        pytest.fail(f"PostgreSQL is needed at {PG_URL}: {reason} (scripts/test starts it)")
    return PG_URL


@pytest.fixture(scope="session")
def sample_directory() -> Directory:
    return load_directory(DEFAULT_DIRECTORY, allow_insecure_push=True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database of each kind for each test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    admin = request.getfixturevalue("pg_admin_url")
    name = f"lt_test_{secrets.token_hex(6)}"
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        async with engine.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await engine.dispose()


@pytest.fixture
async def settings(
    tmp_path: Path, db_url: str, amqp_url: str, sample_directory: Directory
) -> AsyncIterator[Settings]:
    """Settings with a namespace of the test's own; its queues are deleted afterwards."""
    value = Settings(
        amqp_url=amqp_url,
        data_dir=tmp_path / "data",
        database_url=db_url,
        namespace=f"t{secrets.token_hex(4)}",
        shards=4,
        prefetch=16,
        retry_delays=(0.2, 0.4),
        max_attempts=3,
        push_timeout=1.0,
        relay_interval=0.2,
        relay_grace=0.5,
        drain_timeout=5.0,
        allow_insecure_push=True,
        log_level="warning",
    )
    yield value
    # With the sample directory: its AMQP-mode agencies' queues go too.
    await delete_topology(amqp_url, topo.build(value, sample_directory))


@dataclass
class Gateway:
    """The gateway under test, its HTTP client, and the agencies' tokens."""

    client: TestClient[Any, Any]
    settings: Settings
    directory: Directory
    push: PushEndpoint
    tokens: dict[str, str]

    @property
    def store(self) -> Store:
        return self.client.app[STORE]

    @property
    def worker(self) -> DeliveryWorker:
        return self.client.app[WORKER]

    async def token(self, agency: str) -> str:
        if agency not in self.tokens:
            self.tokens[agency] = (await self.store.issue_credential(agency, "test"))[1]
        return self.tokens[agency]

    async def auth(self, agency: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token(agency)}"}

    async def send(self, agency: str, envelope: dict[str, Any], **headers: str) -> Any:
        return await self.client.post(
            "/api/v1/messages", json=envelope, headers={**await self.auth(agency), **headers}
        )

    async def wait_for(
        self, predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while not await predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met within the timeout")
            await asyncio.sleep(0.05)

    async def recipient_state(self, message_id: str, agency: str) -> str | None:
        return await self.store.recipient_state(message_id, agency)

    async def wait_state(self, message_id: str, agency: str, state: str,
                         timeout: float = 15.0) -> None:
        async def reached() -> bool:
            return await self.recipient_state(message_id, agency) == state

        await self.wait_for(reached, timeout)


@pytest.fixture
def push_endpoint() -> PushEndpoint:
    return PushEndpoint()


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(
    settings: Settings, sample_directory: Directory, push_endpoint: PushEndpoint,
    aiohttp_client: Any, aiohttp_server: Any,
) -> GatewayFactory:
    """Start the gateway (API + relay + workers by default) on the sample directory, with the
    push agency's endpoint served by :class:`PushEndpoint`."""

    async def start(**options: Any) -> Gateway:
        server = await aiohttp_server(push_endpoint.app())
        directory = with_endpoint(
            options.pop("directory", sample_directory), PUSH_AGENCY,
            str(server.make_url("/receive")),
        )
        app_settings = options.pop("settings", settings)
        client = await aiohttp_client(build_app(app_settings, directory, **options))
        return Gateway(client, app_settings, directory, push_endpoint, {})

    return start


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


def document(sender: str, to: list[dict[str, Any]], subject: str = "Về việc kiểm tra",
             **header: Any) -> dict[str, Any]:
    """A small valid document envelope (văn bản) from ``sender``."""
    return {
        "kind": "document",
        "header": {"sender": sender, "to": to, **header},
        "body": {
            "number": "15",
            "notation": "CT-UBND",
            "type": {"code": "CT", "name": "Chỉ thị"},
            "subject": subject,
            "promulgation": {"place": "Huế", "date": "2026-11-20"},
            "signer": {"name": "Nguyễn Văn Phương", "position": "Chủ tịch"},
        },
    }
