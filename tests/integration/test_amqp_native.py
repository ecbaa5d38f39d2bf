"""AMQP-native agencies on the real broker, with real RabbitMQ users made by ``rabbitmqctl``.

The agency's system is played by aio-pika connected as the agency's own user: it gets its
messages, and the broker refuses it everything else (403 ACCESS_REFUSED). Every user made here
is named after the test's own namespace and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from adapters.amqp_native import (
    H_KIND,
    AmqpAccounts,
    AmqpTransport,
    RabbitmqCtl,
    exact,
    vhost_of,
)
from gateway import topology as topo
from gateway.api.keys import RELAY
from gateway.broker import Broker, delete_topology
from gateway.codecs import decode, decode_edxml, decode_obj, encode
from gateway.delivery import H_ATTEMPT, H_RECIPIENT, H_SENDER, Delivery
from gateway.directory import DeliveryMode, Directory, WireFormat, load_directory
from gateway.envelope import stamp
from gateway.errors import RetryLater, UnprocessableRequest
from gateway.settings import DEFAULT_DIRECTORY, Settings
from gateway.store.store import DeadLetterFilter
from tests.conftest import HUE, PHONG_DIEN, PROVINCE, Gateway, GatewayFactory, document

AMQP_AGENCY = "000.00.04.H57"  # Sở Kế hoạch và Đầu tư: delivery {mode: amqp} in the sample
OTHER_AMQP_AGENCY = "000.00.05.H57"  # Sở Tài chính: pull in the sample, AMQP in one test


@asynccontextmanager
async def _accounts(settings: Settings, directory: Directory) -> AsyncIterator[AmqpAccounts]:
    """Accounts in the settings' namespace; the agency's user is deleted afterwards."""
    accounts = AmqpAccounts(RabbitmqCtl(), topo.build(settings, directory),
                            vhost=vhost_of(settings.amqp_url))
    try:
        yield accounts
    finally:
        await accounts.revoke(AMQP_AGENCY)


@pytest.fixture
async def accounts(settings: Settings, sample_directory: Directory
                   ) -> AsyncIterator[AmqpAccounts]:
    """For tests with the gateway (and so with both databases)."""
    async with _accounts(settings, sample_directory) as value:
        yield value


@pytest.fixture
async def broker_settings(amqp_url: str) -> AsyncIterator[Settings]:
    """Settings of a namespace of its own, for tests that need the broker but no store."""
    value = Settings(amqp_url=amqp_url, namespace=f"t{secrets.token_hex(4)}", shards=2)
    yield value
    await delete_topology(amqp_url, topo.build(value, _edxml_directory()))


@pytest.fixture
async def broker_accounts(broker_settings: Settings, sample_directory: Directory
                          ) -> AsyncIterator[AmqpAccounts]:
    async with _accounts(broker_settings, sample_directory) as value:
        yield value


async def _next(queue: aio_pika.abc.AbstractQueue) -> AbstractIncomingMessage:
    """The next message of a queue, unacked, waiting up to 10 s for one."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = await queue.get(no_ack=False, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"no message arrived on {queue.name}")


async def _refused(connection: AbstractConnection,
                   attempt: Callable[..., Awaitable[Any]], *args: Any) -> str:
    """Run ``attempt(channel, *args)`` on a fresh channel (with confirms, so that a publish
    waits for the broker's answer); it must end in 403 ACCESS_REFUSED, which closes the
    channel. Returns the broker's reason."""
    channel = await connection.channel(publisher_confirms=True)
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused) as refused:
        await attempt(channel, *args)
    reason = str(refused.value)
    assert reason.startswith("ACCESS_REFUSED"), reason
    return reason


# What a client might try; ``ensure=False`` sends nothing until the operation itself.
async def _consume(channel: AbstractChannel, queue: str) -> None:
    await (await channel.get_queue(queue, ensure=False)).consume(_ignore)


async def _ignore(message: AbstractIncomingMessage) -> None:
    raise AssertionError(f"consumed {message.message_id}")


async def _get(channel: AbstractChannel, queue: str) -> None:
    await (await channel.get_queue(queue, ensure=False)).get(fail=False)


async def _publish(channel: AbstractChannel, exchange: str, key: str) -> None:
    target = channel.default_exchange if exchange == "" else \
        await channel.get_exchange(exchange, ensure=False)
    await target.publish(aio_pika.Message(b"forged"), key)


async def _declare(channel: AbstractChannel, queue: str,
                   arguments: dict[str, Any] | None = None) -> None:
    await channel.declare_queue(queue or None, durable=bool(queue), exclusive=not queue,
                                arguments=arguments)


async def _delete(channel: AbstractChannel, queue: str) -> None:
    await channel.queue_delete(queue)


async def _bind(channel: AbstractChannel, queue: str, exchange: str, key: str) -> None:
    await (await channel.get_queue(queue, ensure=False)).bind(exchange, key)


async def _declare_exchange(channel: AbstractChannel, name: str) -> None:
    await channel.declare_exchange(name, "fanout")


def _closed(connection: AbstractConnection) -> asyncio.Event:
    """Set when the broker closes the connection."""
    closed = asyncio.Event()
    connection.close_callbacks.add(lambda *_args: closed.set())
    return closed


async def _send(gateway: Gateway, subject: str) -> str:
    envelope = document(PROVINCE, [{"agency": AMQP_AGENCY}, {"agency": PHONG_DIEN}], subject)
    response = await gateway.send(PROVINCE, envelope)
    assert response.status == 202, await response.text()
    return str((await response.json())["id"])


async def test_an_amqp_agency_consumes_its_own_queue_and_nothing_else(
    gateway: Gateway, accounts: AmqpAccounts, amqp_url: str,
) -> None:
    topology = accounts.topology
    ns = topology.namespace
    grant = await accounts.grant(gateway.directory.get(AMQP_AGENCY))
    assert grant.created
    queue_name = f"{ns}.agency.{AMQP_AGENCY}"
    assert grant.access.queue == queue_name
    # What the broker holds for the user: its queue to read, nothing to configure or write.
    assert await accounts.ctl.json("list_user_permissions", grant.access.user) == [
        {"vhost": "/", "configure": "^$", "write": "^$", "read": exact(queue_name)}
    ]
    first = await _send(gateway, "Về việc đăng ký kinh doanh")
    second = await _send(gateway, "Về việc thẩm định dự án")
    for message_id in (first, second):
        await gateway.wait_state(message_id, AMQP_AGENCY, "delivered")
        await gateway.wait_state(message_id, PHONG_DIEN, "delivered")  # pull, unaffected

    # A look-alike queue: it would match if the dots of the code were not escaped.
    admin = await aio_pika.connect(amqp_url)
    admin_channel = await admin.channel()
    look_alike = f"{ns}.agency.000x00.04.H57"
    await admin_channel.declare_queue(look_alike, durable=True,
                                      arguments={"x-queue-type": "quorum"})
    connection = await aio_pika.connect(grant.url(amqp_url))
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)  # needs no permission
        message = await _next(queue)
        assert message.message_id == first
        assert message.content_type == "application/json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        headers = message.headers or {}
        assert (headers[H_SENDER], headers[H_KIND], headers[H_RECIPIENT]) == (
            PROVINCE, "document", AMQP_AGENCY
        )
        envelope = decode(message.body)
        assert str(envelope.header.id) == first
        assert envelope.body.subject == "Về việc đăng ký kinh doanh"  # type: ignore[union-attr]
        await message.ack()
        # The agency's system cannot take the second one: refused, it goes to the dead letters.
        refused = await _next(queue)
        assert refused.message_id == second
        await refused.reject(requeue=False)

        # Everything else is refused.
        for other in (look_alike, topology.shard_queue(0), topology.dead_queue):
            reason = await _refused(connection, _consume, other)
            assert f"queue '{other}'" in reason
            await _refused(connection, _get, other)
        for exchange, key in (("", queue_name), (topology.agency_exchange, AMQP_AGENCY),
                              (topology.delivery_exchange, "shard.0"), ("amq.direct", "x")):
            reason = await _refused(connection, _publish, exchange, key)
            assert f"exchange '{exchange or 'amq.default'}'" in reason
        own_args = next(q.args for q in topology.queues if q.name == queue_name)
        await _refused(connection, _declare, queue_name, own_args)
        await _refused(connection, _declare, f"{ns}.agency.mine")
        await _refused(connection, _declare, "")  # a server-named amq.gen-* queue
        await _refused(connection, _delete, queue_name)
        await _refused(connection, _delete, look_alike)
        await _refused(connection, _bind, queue_name, topology.agency_exchange, "000.00.31.H57")
        await _refused(connection, _declare_exchange, f"{ns}.mine")

        # Nothing left: the queue held exactly the two messages, one acked, one refused.
        channel = await connection.channel()
        declared = await channel.declare_queue(queue_name, passive=True)
        assert declared.declaration_result.message_count == 0

        # The refusal reached the gateway's dead letters with the broker's reason.
        async def kept() -> bool:
            rows = await gateway.store.dead_letters(DeadLetterFilter(agency=AMQP_AGENCY))
            return [(d.message_id, d.reason) for d in rows] == [(second, "rejected")]

        await gateway.wait_for(kept)
        assert await gateway.recipient_state(second, AMQP_AGENCY) == "delivered"

        # Settled with the agency, an operator replays it: it is in the agency's queue again.
        rows = await gateway.store.replay_dead_letters(
            DeadLetterFilter(agency=AMQP_AGENCY), by="operator", comment="settled by phone")
        assert [r.message_id for r in rows] == [second]
        await gateway.client.app[RELAY].publish(rows)
        again = await _next(queue)
        assert again.message_id == second
        await again.ack()
        await gateway.wait_state(second, AMQP_AGENCY, "delivered")

        # Revoked: the open connection is closed by the broker, a new one is refused.
        closed = _closed(connection)
        assert await accounts.revoke(AMQP_AGENCY)
        await asyncio.wait_for(closed.wait(), 10)
        with pytest.raises(RuntimeError, match="closed"):
            await connection.channel()
        with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(grant.url(amqp_url))
        assert not await accounts.revoke(AMQP_AGENCY)
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
        await admin_channel.queue_delete(look_alike)
        await admin.close()


async def test_granting_again_rotates_the_password_and_ends_old_sessions(
    broker_settings: Settings, broker_accounts: AmqpAccounts, sample_directory: Directory,
) -> None:
    settings, accounts = broker_settings, broker_accounts
    agency = sample_directory.get(AMQP_AGENCY)
    async with Broker.open(settings.amqp_url, accounts.topology, name="t-rotate"):
        old = await accounts.grant(agency)
        connection = await aio_pika.connect(old.url(settings.amqp_url))
        closed = _closed(connection)
        try:
            new = await accounts.grant(agency)
            assert not new.created and new.password != old.password
            assert new.access == old.access
            await asyncio.wait_for(closed.wait(), 10)  # the broker ended the old session
        finally:
            with contextlib.suppress(Exception):
                await connection.close()
        with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(old.url(settings.amqp_url))
        fresh = await aio_pika.connect(new.url(settings.amqp_url))
        channel = await fresh.channel()
        await channel.declare_queue(new.access.queue, passive=True)
        await fresh.close()
    # A pull agency gets no user at all: nothing is run.
    with pytest.raises(UnprocessableRequest, match="not an AMQP agency"):
        await accounts.grant(sample_directory.get(HUE))


# -- the transport alone (no store needed) ----------------------------------------------------

def _edxml_directory() -> Directory:
    sample = load_directory(DEFAULT_DIRECTORY)
    agencies = dict(sample.agencies)
    agencies[AMQP_AGENCY] = dataclasses.replace(agencies[AMQP_AGENCY], format=WireFormat.EDXML)
    return Directory(sample.levels, agencies, sample.children)


def _delivery(attempt: int = 1) -> Delivery:
    message_id = uuid.uuid4()
    envelope = stamp(decode_obj(document(PROVINCE, [{"agency": AMQP_AGENCY}], "Về việc")),
                     message_id=message_id, now=datetime.now(UTC))
    return Delivery(str(message_id), PROVINCE, attempt, encode(envelope))


async def test_the_transport_confirms_translates_and_retries_when_the_queue_refuses(
    broker_settings: Settings,
) -> None:
    directory = _edxml_directory()
    agency = directory.get(AMQP_AGENCY)
    assert agency.mode is DeliveryMode.AMQP and agency.format is WireFormat.EDXML
    # A queue of two messages, to see a full one refuse more.
    topology = topo.build(broker_settings, directory, agency_max_length=2)
    async with Broker.open(broker_settings.amqp_url, topology, name="t-transport") as broker:
        transport = AmqpTransport(broker)
        deliveries = [_delivery(attempt=3), _delivery()]
        for delivery in deliveries:
            await transport.send(agency, delivery)  # returns once confirmed
        # A quorum queue checks the limit after enqueuing: one more message gets in (RabbitMQ
        # 3.10), the next is nacked.
        with pytest.raises(RetryLater, match="did not take the message"):
            for _ in range(2):
                await transport.send(agency, _delivery())

        channel = await broker.connection.channel()
        queue = await channel.declare_queue(topology.agency_queue(AMQP_AGENCY), passive=True)
        assert queue.declaration_result.message_count in (2, 3)
        message = await _next(queue)
        assert message.message_id == deliveries[0].message_id
        assert message.content_type == "application/xml"  # format: edxml
        envelope = decode_edxml(message.body)
        assert str(envelope.header.id) == deliveries[0].message_id
        assert (message.headers or {})[H_ATTEMPT] == 3
        await message.ack()

        # A queue deleted behind the gateway's back: the broker returns the message.
        await channel.queue_delete(queue.name)
        with pytest.raises(RetryLater, match="did not take the message"):
            await transport.send(agency, _delivery())
        await channel.close()

        # An agency the topology was built without: said plainly, before any publish.
        other = dataclasses.replace(agency, code="000.00.10.H57")
        with pytest.raises(RetryLater, match=r"no AMQP queue is declared for 000\.00\.10\.H57"):
            await transport.send(other, _delivery())


# -- the command line (real processes, as an operator runs it) --------------------------------
async def _lienthong(*args: str, namespace: str, amqp_url: str, directory: Path | None = None
                    ) -> tuple[int, list[str], list[str]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")}
    environ |= {"LIENTHONG_AMQP_URL": amqp_url, "LIENTHONG_NAMESPACE": namespace,
                "LIENTHONG_LOG_LEVEL": "warning"}
    if directory is not None:
        environ["LIENTHONG_DIRECTORY"] = str(directory)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "amqp", *args, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode().splitlines(), err.decode().splitlines()


async def test_the_cli_grants_lists_and_revokes(amqp_url: str) -> None:
    namespace = f"t{secrets.token_hex(4)}"
    user = f"{namespace}.{AMQP_AGENCY}"

    async def run(*args: str) -> tuple[int, list[str], list[str]]:
        return await _lienthong(*args, namespace=namespace, amqp_url=amqp_url)

    # Bad input: one readable line, a non-zero exit, nothing on stdout.
    pull, unknown, no_ctl = await asyncio.gather(
        run("grant", HUE), run("grant", "000.00.99.H57"),
        run("grant", AMQP_AGENCY, "--rabbitmqctl", "/nonexistent/rabbitmqctl"),
    )
    assert pull == (2, [], ["lienthong: 000.00.31.H57 is not an AMQP agency (delivery mode "
                            "pull); give it delivery: {mode: amqp} in the directory first"])
    assert unknown == (2, [], ["lienthong: unknown agency 000.00.99.H57"])
    assert no_ctl[:2] == (2, []) and len(no_ctl[2]) == 1
    assert no_ctl[2][0].startswith("lienthong: cannot run /nonexistent/rabbitmqctl")

    try:
        code, out, err = await run("grant", AMQP_AGENCY, "--public-url",
                                   "amqps://mq.example.vn:5671")
        assert code == 0, err
        url, queue = out
        assert url.startswith(f"amqps://{user}:") and url.endswith("@mq.example.vn:5671/%2F")
        assert queue == f"{namespace}.agency.{AMQP_AGENCY}"
        password = url.split(":", 2)[2].rsplit("@", 1)[0]
        assert len(password) >= 40 and password not in "\n".join(err)  # once, on stdout
        # The URL works (its host swapped back to this broker's).
        local = url.replace("amqps://", "amqp://").replace(
            "mq.example.vn:5671", amqp_url.rsplit("@", 1)[-1].rstrip("/"))
        connection = await aio_pika.connect(local)
        await connection.close()
        code, out, _ = await run("ls")
        assert code == 0
        [row] = [line for line in out if line.startswith(AMQP_AGENCY)]
        # No queue yet (no gateway ran in this namespace): no depth to show.
        assert row.split()[:5] == [AMQP_AGENCY, "granted", "-", "-", user]
    finally:
        code, out, err = await run("revoke", AMQP_AGENCY)
    assert (code, out) == (0, [f"deleted AMQP user {user}; its connections were closed"]), err
    code, out, err = await run("revoke", AMQP_AGENCY)
    assert (code, out, err) == (
        1, [], [f"lienthong: {AMQP_AGENCY} has no AMQP user ({user}) to revoke"]
    )


# -- two AMQP agencies: one's user cannot touch the other's queue -----------------------------
def _two_amqp_agencies(tmp_path: Path) -> Path:
    """The sample directory with Sở Tài chính AMQP-mode too, as an operator would edit it."""
    text = DEFAULT_DIRECTORY.read_text(encoding="utf-8")
    entry = (f'  - code: "{OTHER_AMQP_AGENCY}"\n    name: "Sở Tài chính tỉnh Thừa Thiên Huế"\n'
             '    level: province\n    parent: "000.00.00.H57"\n')
    assert text.count(entry) == 1
    path = tmp_path / "directory.yaml"
    path.write_text(text.replace(entry, entry + "    delivery: {mode: amqp}\n"), encoding="utf-8")
    return path


@pytest.fixture
async def two_amqp(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[Path, Directory]]:
    """A directory file with two AMQP agencies; afterwards both users are deleted and the
    second agency's queue too (the settings fixture removes the sample's)."""
    path = _two_amqp_agencies(tmp_path)
    directory = load_directory(path, allow_insecure_push=True)
    assert {c for c, a in directory.agencies.items() if a.mode is DeliveryMode.AMQP} == {
        AMQP_AGENCY, OTHER_AMQP_AGENCY}
    topology = topo.build(settings, directory)
    yield path, directory
    accounts = AmqpAccounts(RabbitmqCtl(), topology, vhost=vhost_of(settings.amqp_url))
    for code in (AMQP_AGENCY, OTHER_AMQP_AGENCY):
        await accounts.revoke(code)
    await delete_topology(settings.amqp_url, topology)


async def _purge(channel: AbstractChannel, queue: str) -> None:
    await (await channel.get_queue(queue, ensure=False)).purge()


async def _passive(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def test_an_amqp_agency_cannot_touch_another_amqp_agencys_queue(
    two_amqp: tuple[Path, Directory], make_gateway: GatewayFactory, settings: Settings,
) -> None:
    path, directory = two_amqp
    gateway = await make_gateway(directory=directory)
    ns, amqp_url = settings.namespace, settings.amqp_url
    topology = topo.build(settings, directory)
    own, others = topology.agency_queue(AMQP_AGENCY), topology.agency_queue(OTHER_AMQP_AGENCY)

    async def run(*args: str) -> tuple[int, list[str], list[str]]:
        return await _lienthong(*args, namespace=ns, amqp_url=amqp_url, directory=path)

    # The operator grants both agencies their own users.
    urls = {}
    for code in (AMQP_AGENCY, OTHER_AMQP_AGENCY):
        rc, out, err = await run("grant", code)
        assert rc == 0, err
        assert out[1] == topology.agency_queue(code)
        urls[code] = out[0]
    assert urls[AMQP_AGENCY].startswith(f"amqp://{ns}.{AMQP_AGENCY}:")
    assert urls[OTHER_AMQP_AGENCY].startswith(f"amqp://{ns}.{OTHER_AMQP_AGENCY}:")

    # One message for each, through the gateway.
    sent = {}
    for code in (AMQP_AGENCY, OTHER_AMQP_AGENCY):
        response = await gateway.send(PROVINCE, document(PROVINCE, [{"agency": code}],
                                                         f"Gửi riêng {code}"))
        assert response.status == 202, await response.text()
        sent[code] = str((await response.json())["id"])
        await gateway.wait_state(sent[code], code, "delivered")
    rc, out, err = await run("ls")
    assert rc == 0, err
    rows = {line.split()[0]: line.split() for line in out[1:]}
    for code in (AMQP_AGENCY, OTHER_AMQP_AGENCY):
        assert rows[code][:4] == [code, "granted", "1", "0"], out  # one waiting, no consumer

    a = await aio_pika.connect(urls[AMQP_AGENCY])
    b: AbstractConnection | None = None
    try:
        # As A's user, B's queue is refused: reading, purging, deleting, declaring it (with
        # its own arguments, as a client that declares on start would), binding it, and
        # publishing to it by either exchange.
        for attempt in (_consume, _get, _purge, _delete):
            reason = await _refused(a, attempt, others)
            assert f"queue '{others}'" in reason, reason
        others_args = next(q.args for q in topology.queues if q.name == others)
        reason = await _refused(a, _declare, others, others_args)
        assert f"queue '{others}'" in reason, reason
        await _refused(a, _bind, others, topology.agency_exchange, AMQP_AGENCY)
        await _refused(a, _bind, own, topology.agency_exchange, OTHER_AMQP_AGENCY)
        for exchange, key in (("", others), (topology.agency_exchange, OTHER_AMQP_AGENCY)):
            reason = await _refused(a, _publish, exchange, key)
            assert f"exchange '{exchange or 'amq.default'}'" in reason, reason
        # A passive declare needs no permission on RabbitMQ (docs/amqp-agencies.md, Limits):
        # A may learn that B's queue exists and how many messages wait in it, nothing more.
        assert await _passive(await a.channel(), others) == 1

        # A still reads its own message, and only its own.
        channel = await a.channel()
        queue = await channel.declare_queue(own, passive=True)
        mine = await _next(queue)
        assert mine.message_id == sent[AMQP_AGENCY]
        assert (mine.headers or {})[H_RECIPIENT] == AMQP_AGENCY
        await mine.ack()
        assert await queue.get(no_ack=False, fail=False) is None

        # B's message is untouched by all of that: B consumes it, and B cannot read A's queue.
        b = await aio_pika.connect(urls[OTHER_AMQP_AGENCY])
        await _refused(b, _consume, own)
        theirs_queue = await (await b.channel()).declare_queue(others, passive=True)
        theirs = await _next(theirs_queue)
        assert theirs.message_id == sent[OTHER_AMQP_AGENCY]
        assert (theirs.headers or {})[H_RECIPIENT] == OTHER_AMQP_AGENCY
        assert decode(theirs.body).body.subject == f"Gửi riêng {OTHER_AMQP_AGENCY}"  # type: ignore[union-attr]
        await theirs.ack()

        # Revoked, A's user is gone: its session ends and it can no longer connect; B's stays.
        closed = _closed(a)
        rc, out, err = await run("revoke", AMQP_AGENCY)
        assert (rc, out) == (0, [f"deleted AMQP user {ns}.{AMQP_AGENCY}; its connections "
                                 "were closed"]), err
        await asyncio.wait_for(closed.wait(), 10)
        with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(urls[AMQP_AGENCY])
        assert await _passive(await b.channel(), others) == 0
        rc, out, err = await run("ls")
        rows = {line.split()[0]: line.split() for line in out[1:]}
        assert rows[AMQP_AGENCY][1] == "no" and rows[OTHER_AMQP_AGENCY][1] == "granted", out
    finally:
        for connection in (a, b):
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()
