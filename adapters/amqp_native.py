"""AMQP-native agencies: the agency's own system consumes its own RabbitMQ queue.

An agency with ``delivery: {mode: amqp}`` in the directory gets a durable quorum queue,
``{ns}.agency.{code}`` (see :mod:`gateway.topology`), bound to the direct exchange
``{ns}.agency`` with its code as routing key, and a RabbitMQ user of its own that may read that
queue and do nothing else.

Delivery (:class:`AmqpTransport`)
---------------------------------
The delivery worker hands each message for such an agency to :meth:`AmqpTransport.send`, which
publishes it through the gateway's confirming, ``mandatory`` publisher
(:meth:`gateway.broker.Broker.publish`): persistent, ``message_id`` = our message id, the body
as the agency's directory entry asks (canonical JSON, or edXML with ``format: edxml``), headers
naming sender, kind and recipient (edXML signed with the gateway's key when the gateway has
one, as for pushes). It returns once the broker confirms, that is once a majority
of the queue's replicas have it on disk, and the worker then records ``delivered``. A publish
the broker returns (no queue: the topology was declared without this agency) or nacks (the
queue is full: ``x-max-length`` with ``reject-publish``) is :class:`RetryLater`, so the message
goes through the retry tiers and, past the limits, to the dead letters; while the broker itself
is away the :class:`Unavailable` passes through and the worker puts the message back.

As an adapter (:data:`ADAPTER`): mode ``amqp`` with :class:`AmqpTransport`, no routes. Its
codec is the canonical JSON envelope (:data:`CANONICAL`, ``schemas/envelope.schema.json``),
what an agency with the default ``format: json`` consumes; one with ``format: edxml`` gets the
edXML codec's package instead (:data:`CODECS` by format; :func:`gateway.delivery.wire_body`
writes the body).

The agency acknowledges to the broker, not to the gateway: ``delivered`` here means "in the
agency's queue". What the agency's consumer refuses (``reject``/``nack`` without requeue) or
keeps failing on reaches the gateway's dead letters with RabbitMQ's ``x-death`` reason.

Provisioning (:class:`AmqpAccounts`, ``lienthong amqp grant|revoke|ls``)
------------------------------------------------------------------------
Per agency one user, ``{ns}.{code}`` (RabbitMQ user names are any UTF-8 text; the namespace
keeps two gateways on one broker apart), with a random password and, on the gateway's vhost::

    configure  ^$                      declare, delete, bind: nothing
    write      ^$                      publish: nothing (the default exchange is amq.default)
    read       ^{ns}\\.agency\\.{code}$  basic.consume, basic.get on its queue, and purge

Found on RabbitMQ 3.10 by trying each operation as such a user: ``basic.consume`` needs read on
the queue; a passive ``queue.declare`` (how aio-pika and most clients open an existing queue)
needs no permission at all, so it works, and it also tells any user whether another queue
exists and how many messages it holds (a broker limitation: only per-agency vhosts would hide
it). Every other operation is ``ACCESS_REFUSED``: publishing anywhere, declaring, deleting or
binding a queue, declaring an exchange, a server-named queue, consuming another agency's queue.
The regex escapes the dots of the code (``re.escape``), so ``000.00.04.H57`` can never match
``000x00.04.H57``; RabbitMQ searches rather than matches, hence the anchors. Only users with
configure rights (the gateway's) can create queues, so no look-alike name can appear.
Each user is also limited to a few connections and channels (``set_user_limits``), so a
looping client cannot exhaust the broker.

RabbitMQ here has no management plugin, so the accounts are made with ``rabbitmqctl``
(``add_user``, ``change_password``, ``set_permissions``, ``set_user_limits``,
``close_all_user_connections``, ``delete_user``, ``list_users``, ``list_permissions``), run as
a subprocess with a configurable command (``sudo -u rabbitmq rabbitmqctl``, ``docker exec rmq
rabbitmqctl``) and node. The password never appears in a command line (``ps``) or a log: since
3.8 ``add_user`` and ``change_password`` read it from standard input when it is left out, and
that is how it is passed. Granting again rotates the password and closes the user's open
connections, so a leaked password stops working at once; revoking deletes the user, which
closes its connections too (``CONNECTION_FORCED - user ... is deleted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiohttp
import aiormq
import orjson
import structlog
from aiohttp import web

from adapters.base import Adapter, Codec
from adapters.document_management import EDXML
from gateway.api.keys import BROKER
from gateway.broker import Broker, Outgoing
from gateway.codecs import decode, encode
from gateway.delivery import H_ATTEMPT, H_RECIPIENT, H_SENDER, Delivery, wire_body
from gateway.directory import Agency, DeliveryMode, Directory, WireFormat
from gateway.envelope import AGENCY_CODE_RE, AnyEnvelope
from gateway.errors import PermanentFailure, RetryLater, Unavailable, UnprocessableRequest
from gateway.signing import SIGNER
from gateway.topology import Topology

log = structlog.get_logger(__name__)

H_KIND = "x-lienthong-kind"  # document | status | dossier

NOTHING = "^$"  # matches no resource: the default exchange is "amq.default" for permissions
# rabbitmqctl's exit statuses (sysexits): no such user; "already exists" (and other failures
# of the command itself); node or vhost unreachable is 69.
EX_NOUSER = 67
EX_SOFTWARE = 70


# -- delivery ---------------------------------------------------------------------------------
def envelope_kind(canonical: bytes) -> str:
    """The ``kind`` of a canonical JSON envelope (for the header; the body says it too)."""
    try:
        kind = orjson.loads(canonical)["kind"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise PermanentFailure("the stored message is not a canonical JSON envelope") from exc
    if not isinstance(kind, str):
        raise PermanentFailure("the stored message has no kind")
    return kind


class AmqpTransport:
    """AMQP mode: publish to the agency's own queue and return once the broker confirms."""

    def __init__(self, broker: Broker, *, timeout: float = 30.0,
                 sign: Callable[[bytes], bytes] | None = None) -> None:
        self.broker = broker
        self.timeout = timeout
        self.sign = sign  # edXML signed with the gateway's key, as for pushes

    def outgoing(self, agency: Agency, delivery: Delivery) -> Outgoing:
        """The message as the agency's consumer gets it."""
        body, content_type = wire_body(agency.format, delivery.body, sign=self.sign)
        return Outgoing(
            exchange=self.broker.topology.agency_exchange,
            routing_key=agency.code,
            body=body,
            message_id=delivery.message_id,
            headers={
                H_SENDER: delivery.sender,
                H_KIND: envelope_kind(delivery.body),
                # For the dead-letter keeper, should the agency refuse the message.
                H_RECIPIENT: agency.code,
                H_ATTEMPT: delivery.attempt,
            },
            content_type=content_type,
        )

    async def send(self, agency: Agency, delivery: Delivery) -> None:
        topology = self.broker.topology
        if agency.code not in topology.agencies:
            # The broker would return it; saying why helps the operator more.
            raise RetryLater(
                f"no AMQP queue is declared for {agency.code}: the gateway's topology was "
                "built without it (restart the gateway after changing the directory)"
            )
        out = self.outgoing(agency, delivery)
        try:
            await self.broker.publish(out, timeout=self.timeout)
        except Unavailable as exc:
            if not self.broker.connected:
                raise  # the broker is away: the worker puts the message back and waits
            raise RetryLater(
                f"{topology.agency_queue(agency.code)} did not take the message (a full queue "
                f"nacks it, a missing one returns it): {exc.detail}"
            ) from exc


def amqp_transport(app: web.Application, _http: aiohttp.ClientSession) -> AmqpTransport:
    """The delivery worker's transport for mode ``amqp``, on the gateway's own broker."""
    return AmqpTransport(app[BROKER], sign=app[SIGNER].sign if SIGNER in app else None)


class CanonicalCodec:
    """The gateway's canonical JSON envelope, as an AMQP-native agency consumes it."""

    media_type = "application/json"

    def decode(self, data: bytes) -> AnyEnvelope:
        return decode(data)

    def encode(self, envelope: AnyEnvelope) -> bytes:
        return encode(envelope)


CANONICAL = CanonicalCodec()
#: The body an agency's consumer gets, by its directory entry's ``format``.
CODECS: Mapping[WireFormat, Codec] = {WireFormat.JSON: CANONICAL, WireFormat.EDXML: EDXML}

ADAPTER = Adapter(name="amqp_native", codec=CANONICAL, mode=DeliveryMode.AMQP,
                  transport=amqp_transport)


# -- access: pure values ----------------------------------------------------------------------
def user_name(topology: Topology, code: str) -> str:
    return f"{topology.namespace}.{code}"


def exact(name: str) -> str:
    """A permission regex that matches ``name`` and nothing else (RabbitMQ searches)."""
    return f"^{re.escape(name)}$"


@dataclass(frozen=True, slots=True)
class AgencyAccess:
    """What one agency's RabbitMQ user may do: read its queue, nothing more."""

    code: str
    user: str
    queue: str
    vhost: str
    configure: str
    write: str
    read: str

    @property
    def permissions(self) -> tuple[str, str, str]:
        return self.configure, self.write, self.read


def access(topology: Topology, code: str, vhost: str = "/") -> AgencyAccess:
    queue = topology.agency_queue(code)
    return AgencyAccess(code, user_name(topology, code), queue, vhost, NOTHING, NOTHING,
                        exact(queue))


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL names (an empty path is the default vhost ``/``)."""
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def agency_url(base_url: str, user: str, password: str, vhost: str) -> str:
    """``base_url``'s scheme, host, port (and query) with the agency's credentials and vhost."""
    parts = urlsplit(base_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    query = f"?{parts.query}" if parts.query else ""
    return (f"{parts.scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{host}/"
            f"{quote(vhost, safe='')}{query}")


def code_of_user(topology: Topology, user: str) -> str | None:
    """The agency code of one of our users (``{ns}.{code}``), else None."""
    prefix = f"{topology.namespace}."
    code = user[len(prefix):] if user.startswith(prefix) else ""
    return code if AGENCY_CODE_RE.fullmatch(code) else None


# -- rabbitmqctl ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CtlResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error(self) -> str:
        """rabbitmqctl's complaint in one line: what follows ``Error:``, without the pages of
        diagnostics (which name the Erlang cookie's hash) that follow it."""
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        for index, line in enumerate(lines):
            if line.startswith("Error"):
                text = line.removeprefix("Error").lstrip(":").strip()
                if not text and index + 1 < len(lines):
                    text = lines[index + 1]
                return text.split(" Please see")[0][:300]
        return lines[0][:300] if lines else f"exit status {self.returncode}"


class RabbitmqCtl:
    """Runs ``rabbitmqctl`` (or whatever command reaches it) as a subprocess."""

    def __init__(self, command: Sequence[str] = ("rabbitmqctl",), *, node: str | None = None,
                 timeout: float = 60.0) -> None:
        if not command:
            raise ValueError("an empty rabbitmqctl command")
        self.command = tuple(command)
        self.node = node
        self.timeout = timeout

    async def run(self, *args: str, secret: str | None = None) -> CtlResult:
        """Run one command; ``secret`` goes to standard input, never to the arguments."""
        argv = [*self.command, *(("--node", self.node) if self.node else ()), "-q", *args]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise Unavailable(f"cannot run {self.command[0]}: {exc.strerror}") from None
        data = None if secret is None else (secret + "\n").encode()
        try:
            out, err = await asyncio.wait_for(process.communicate(data), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise Unavailable(f"rabbitmqctl {args[0]} took longer than {self.timeout:g} s") \
                from None
        result = CtlResult(process.returncode or 0, out.decode(errors="replace"),
                           err.decode(errors="replace"))
        # Arguments only: the secret never reaches a log.
        log.debug("rabbitmqctl.ran", command=args[0], returncode=result.returncode)
        return result

    async def check(self, *args: str, secret: str | None = None) -> CtlResult:
        result = await self.run(*args, secret=secret)
        if not result.ok:
            raise Unavailable(f"rabbitmqctl {args[0]} failed: {result.error()}")
        return result

    async def json(self, *args: str) -> list[dict[str, Any]]:
        result = await self.check(*args, "--formatter", "json")
        text = result.stdout.strip()
        try:
            rows = orjson.loads(text) if text else []
        except orjson.JSONDecodeError:
            raise Unavailable(f"rabbitmqctl {args[0]} did not answer JSON") from None
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


# -- accounts ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Grant:
    access: AgencyAccess
    password: str
    created: bool  # False: an existing user got a new password

    def url(self, base_url: str) -> str:
        return agency_url(base_url, self.access.user, self.password, self.access.vhost)


@dataclass(frozen=True, slots=True)
class Account:
    """One line of ``lienthong amqp ls``."""

    code: str
    access: AgencyAccess
    amqp_mode: bool  # the directory says ``delivery: {mode: amqp}``
    user_exists: bool
    permissions: tuple[str, str, str] | None  # as the broker has them on the vhost

    @property
    def state(self) -> str:
        if not self.user_exists:
            return "no user"
        if not self.amqp_mode:
            return "orphan user"  # the agency is no longer AMQP-mode: revoke it
        if self.permissions != self.access.permissions:
            return "permissions differ"
        return "granted"


class AmqpAccounts:
    """Per-agency RabbitMQ users for AMQP-mode agencies, through ``rabbitmqctl``."""

    def __init__(self, ctl: RabbitmqCtl, topology: Topology, *, vhost: str = "/",
                 max_connections: int = 8, max_channels: int = 32) -> None:
        self.ctl = ctl
        self.topology = topology
        self.vhost = vhost
        self.limits = orjson.dumps(
            {"max-connections": max_connections, "max-channels": max_channels}
        ).decode()

    def access(self, code: str) -> AgencyAccess:
        return access(self.topology, code, self.vhost)

    def check_agency(self, agency: Agency) -> None:
        if agency.mode is not DeliveryMode.AMQP:
            raise UnprocessableRequest(
                f"{agency.code} is not an AMQP agency (delivery mode {agency.mode.value}); "
                "give it delivery: {mode: amqp} in the directory first"
            )
        if agency.code not in self.topology.agencies:
            raise UnprocessableRequest(f"the topology has no queue for {agency.code}")

    async def grant(self, agency: Agency) -> Grant:
        """Create the agency's user, or give it a new password; set its permissions."""
        self.check_agency(agency)
        grant = self.access(agency.code)
        password = secrets.token_urlsafe(32)
        added = await self.ctl.run("add_user", grant.user, secret=password)
        created = added.ok
        if not created:
            if added.returncode != EX_SOFTWARE:  # not "already exists": the node is away...
                raise Unavailable(f"rabbitmqctl add_user failed: {added.error()}")
            # The user exists: rotate its password instead.
            await self.ctl.check("change_password", grant.user, secret=password)
        try:
            await self.ctl.check("set_permissions", "-p", self.vhost, grant.user,
                                 *grant.permissions)
            await self.ctl.check("set_user_limits", grant.user, self.limits)
        except Unavailable:
            if created:  # nothing half-made: a user without its permissions goes again
                await self.ctl.run("delete_user", grant.user)
            raise
        if not created:
            # Sessions opened with the old password end now: rotation is for a leaked one.
            await self.ctl.check("close_all_user_connections", grant.user, "password rotated")
        log.info("amqp.granted", agency=agency.code, user=grant.user, created=created)
        return Grant(grant, password, created)

    async def revoke(self, code: str) -> bool:
        """Delete the agency's user (its connections close); False if it had none."""
        user = self.access(code).user
        result = await self.ctl.run("delete_user", user)
        if result.returncode == EX_NOUSER:
            return False
        if not result.ok:
            raise Unavailable(f"rabbitmqctl delete_user failed: {result.error()}")
        log.info("amqp.revoked", agency=code, user=user)
        return True

    async def accounts(self, directory: Directory) -> list[Account]:
        """The directory's AMQP agencies and every user of ours, with their state."""
        users = {str(u.get("user")) for u in await self.ctl.json("list_users")}
        perms = {
            str(p.get("user")): (str(p.get("configure")), str(p.get("write")), str(p.get("read")))
            for p in await self.ctl.json("list_permissions", "-p", self.vhost)
        }
        codes = set(self.topology.agencies)
        codes |= {c for u in users if (c := code_of_user(self.topology, u)) is not None}
        rows = []
        for code in sorted(codes):
            agency = directory.agencies.get(code)
            grant = self.access(code)
            rows.append(Account(
                code, grant, agency is not None and agency.mode is DeliveryMode.AMQP,
                grant.user in users, perms.get(grant.user),
            ))
        return rows


async def queue_depths(amqp_url: str, queues: Sequence[str]) -> Mapping[str, tuple[int, int]]:
    """(messages, consumers) of each queue that exists (a passive declare each)."""
    found: dict[str, tuple[int, int]] = {}
    try:
        connection = await aio_pika.connect(amqp_url, timeout=10)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError
            ) as exc:
        raise Unavailable(f"cannot connect to RabbitMQ: {exc.__class__.__name__}") from None
    try:
        channel = await connection.channel()
        for name in queues:
            try:
                queue = await channel.declare_queue(name, passive=True)
            except (aio_pika.exceptions.ChannelClosed, aiormq.exceptions.ChannelClosed):
                channel = await connection.channel()  # a failed passive declare closes it
                continue
            result = queue.declaration_result
            found[name] = (result.message_count or 0, result.consumer_count or 0)
    finally:
        await connection.close()
    return found
