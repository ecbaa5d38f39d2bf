"""The central document hub (Trục liên thông văn bản quốc gia), played by a real HTTP server.

The national hub connects the document systems of ministries and provinces: each system sends
edXML packages (QCVN 102:2016) to it and polls it for the packages addressed to the agencies it
serves. This server keeps the hub's state in memory (systems and secrets, which system serves
which agency, every package sent, a queue per receiving system), can fail on command, and lets a
test act as any system (a ministry's) by calling the same HTTP API with that system's secret.
``docs/central-hub.md`` describes the protocol for people; this docstring is its reference.

Authentication (every request)
------------------------------
Each system has an id and a shared secret. A request carries::

    X-Lienthong-System:    the system id
    X-Lienthong-Timestamp: Unix time in whole seconds
    X-Lienthong-Signature: hex(HMAC-SHA256(secret, canonical request))

    canonical request = METHOD "\\n" TARGET "\\n" TIMESTAMP "\\n" hex(SHA-256(body))

METHOD is upper case; TARGET is the request target exactly as sent on the request line (path
and query, percent-encoded as sent, e.g. ``/getEdoc?docId=5f0c...``); the body hash is that of
the empty string for a GET. The hub refuses (``401``, ``{"error": ...}``) an unknown system, a
missing or malformed header, a timestamp more than 300 s from its clock either way, and a
signature that does not match (compared with ``hmac.compare_digest``). The timestamp bounds
replays; the idempotency of ``/sendEdoc`` makes a replay inside the window harmless.

Endpoints
---------
``POST /sendEdoc`` (body: the edXML package, ``Content-Type: application/xml``)
    Headers: ``messageType: edoc|status`` (required); ``X-Lienthong-Message-Id`` (optional:
    else the package's ``DocumentId``, else the SHA-256 of the body); ``X-Lienthong-To``
    (optional, comma-separated agency codes: else every ``To/OrganId`` of an edoc, or the
    ``ResponseFor/OrganId`` of a status). The package's ``From/OrganId`` must be an agency the
    calling system serves (else ``403``); every recipient must be known to the hub (else ``422``
    naming it). One document (``docId``) is queued per recipient, for the system that serves it.
    Idempotent by (calling system, message id, recipient): a repeat returns the same ``docId``
    and stores nothing new. Answer ``200``::

        {"docs": [{"docId": "...", "to": "000.00.31.H57", "toSystem": "..."}],
         "duplicate": false}

``GET /getReceivedEdocList[?messageType=edoc|status]``
    The calling system's documents not yet taken, oldest first::

        {"docs": [{"docId", "messageType", "messageId", "from", "fromSystem", "to",
                   "created", "size", "sha256"}]}

``GET /getEdoc?docId=...``
    The package bytes (``application/xml``) with headers ``messageType``,
    ``X-Lienthong-Message-Id``, ``X-Lienthong-From``, ``X-Lienthong-To``. Only for the system
    the document is queued for (anyone else gets ``404``, as for an unknown id).

``POST /updateStatus`` (JSON ``{"docId", "status": "done"|"fail", "reason", "problem"}``)
    The receiving system took the document (``done``) or refuses it for good (``fail``, with a
    ``reason`` and optionally an RFC 7807 ``problem`` object, which the sender can read).
    Either way it leaves the list. Saying the same thing twice is harmless (``200``);
    contradicting an earlier answer is ``409``.

``GET /getEdocStatus?docId=...``
    For the sending system: ``{"docId", "status": "pending"|"done"|"fail", "reason",
    "problem", "to"}``.

``GET /getAgenciesList``
    ``{"agencies": [{"code", "name", "system"}]}``: every agency the hub knows and which system
    serves it.

Errors are JSON ``{"error": "..."}`` with ``400`` (malformed request: names the header, query
parameter or element), ``401``, ``403``, ``404``, ``409``, ``422``.

Failing on command
------------------
:meth:`CentralHub.fail_next` queues scripted answers, consumed one per request (optionally only
by requests to one endpoint), before authentication, as the network or a proxy would: an HTTP
status (nothing takes effect), ``"reset"`` (the connection is dropped, nothing takes effect) or
``"slow"`` (the request takes effect, the answer comes after ``slow_seconds``, too late for a
client with a shorter timeout). Then the hub answers normally.

The same over HTTP, for a hub running as its own process. These two routes are a test-only
control, not part of the hub's protocol: they are signed like every request, and only by a
system named a controller (``control``, ``--control SYSTEM``); any other system gets ``403``,
an unsigned request ``401``. Scripted answers never apply to them, so a hub told to fail
everything can still be told to stop.

``POST /_peer/fail`` (JSON ``{"answer": 503|"reset"|"slow", "count": 1, "endpoint": null}``)
    Queue ``count`` answers (1..1000), for requests to ``endpoint`` (a protocol path) only,
    or to any; ``{"clear": true}`` drops the queued ones instead. Answer: the state, below.

``GET /_peer/state``
    ``{"script": [{"answer", "endpoint"}], "docs": {"pending", "done", "fail"}, "repeats",
    "calls": {path: count}}``: what is queued and what happened (never a secret).

Run it: ``python -m deploy.peers.central_hub --port 8090 --system lienthong-h57=SECRET
--system vpcp=SECRET2 --agency 000.00.00.G22=vpcp --serve-directory
deploy/directory.yaml=lienthong-h57`` (``--help`` for the rest); ``--fail 503x3@/sendEdoc``
starts it failing (an answer, ``xN`` times, ``@`` an endpoint; repeat the option), and
``--control SYSTEM`` lets that system use the control routes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import io
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from lxml import etree

from gateway.codecs import xmlsafe
from gateway.codecs.edxml import STREAM_LIMITS, spool_edxml
from gateway.directory import DeliveryMode, Directory, load_directory
from gateway.errors import MalformedInput

SYSTEM_HEADER = "X-Lienthong-System"
TIMESTAMP_HEADER = "X-Lienthong-Timestamp"
SIGNATURE_HEADER = "X-Lienthong-Signature"
MESSAGE_ID_HEADER = "X-Lienthong-Message-Id"
TO_HEADER = "X-Lienthong-To"
FROM_HEADER = "X-Lienthong-From"
MESSAGE_TYPE_HEADER = "messageType"
MESSAGE_TYPES = ("edoc", "status")
WINDOW_SECONDS = 300.0
MAX_PACKAGE_BYTES = 32 * 1024 * 1024

PENDING, DONE, FAIL = "pending", "done", "fail"
CONTROL_PREFIX = "/_peer/"  # the test-only control routes (see the module docstring)
PROTOCOL_PATHS = ("/sendEdoc", "/getReceivedEdocList", "/getEdoc", "/updateStatus",
                  "/getEdocStatus", "/getAgenciesList")
MAX_SCRIPTED = 1000
SYSTEM = web.RequestKey("system", str)  # the authenticated calling system

Answer = int | str  # a scripted answer: an HTTP status, "reset" or "slow"


def parse_answer(value: object) -> Answer:
    """A scripted answer: an HTTP error status (400..599), ``reset`` or ``slow``; else
    :class:`ValueError` saying what is allowed."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
        return value
    if value in ("reset", "slow"):
        return str(value)
    raise ValueError(f"{value!r} is not an answer: an HTTP status 400..599, reset or slow")


class HubRefusal(Exception):
    """A request the hub refuses: ``status`` and the JSON ``error`` text."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


# -- authentication (pure) --------------------------------------------------------------------
def canonical_request(method: str, target: str, timestamp: str, body: bytes) -> bytes:
    """What a request's signature covers (see the module docstring)."""
    digest = hashlib.sha256(body).hexdigest()
    return f"{method.upper()}\n{target}\n{timestamp}\n{digest}".encode()


def authenticate(
    systems: Mapping[str, str],
    *,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    window: float = WINDOW_SECONDS,
) -> str:
    """The calling system's id, or :class:`HubRefusal` (401) saying what is wrong."""
    system = headers.get(SYSTEM_HEADER, "")
    stamp = headers.get(TIMESTAMP_HEADER, "")
    signature = headers.get(SIGNATURE_HEADER, "")
    if not system or not stamp or not signature:
        missing = [h for h, v in ((SYSTEM_HEADER, system), (TIMESTAMP_HEADER, stamp),
                                  (SIGNATURE_HEADER, signature)) if not v]
        raise HubRefusal(401, f"missing {', '.join(missing)}")
    secret = systems.get(system)
    if secret is None:
        raise HubRefusal(401, f"unknown system {system!r}")
    if not stamp.isdigit() or len(stamp) > 12:
        raise HubRefusal(401, f"{TIMESTAMP_HEADER} must be Unix time in whole seconds")
    if abs(now - int(stamp)) > window:
        raise HubRefusal(
            401, f"{TIMESTAMP_HEADER} is more than {window:.0f} s from the hub's clock"
        )
    expected = hmac.new(
        secret.encode(), canonical_request(method, target, stamp, body), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(signature.strip().lower().encode(), expected.encode()):
        raise HubRefusal(401, "bad signature")
    return system


# -- packages (pure) --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Routing:
    """What the hub reads from a package to route it."""

    sender: str
    to: tuple[str, ...]
    document_id: str | None


def _texts(root: etree._Element, path: str) -> list[str]:
    found = root.xpath(path)
    assert isinstance(found, list)
    return [str(t).strip() for t in found if str(t).strip()]


#: Packages above this are read as a stream (their files may be large).
_READ_WHOLE = 1024 * 1024


class _Dropped:
    """Where the routing read puts a file's bytes: nowhere (the package is stored whole)."""

    def write(self, data: bytes, /) -> int:
        return len(data)


def read_routing(package: bytes, message_type: str) -> Routing:
    """From, To (or ResponseFor for a status) and DocumentId, by local name (any prefix)."""
    try:
        if len(package) > _READ_WHOLE:
            # A file's base64 is one text node, past libxml2's 10 MB node limit for a file of
            # 7.5 MB: read such a package as a stream, the files' bytes dropped, the rest kept.
            limits = xmlsafe.XmlLimits(max_bytes=MAX_PACKAGE_BYTES,
                                       max_text=STREAM_LIMITS.max_text)
            package = spool_edxml(io.BytesIO(package), lambda _i: _Dropped(),
                                  limits=limits).skeleton
        root = xmlsafe.parse(package, xmlsafe.XmlLimits(max_bytes=MAX_PACKAGE_BYTES))
    except MalformedInput as exc:
        raise HubRefusal(400, f"the package is not acceptable XML: {exc.detail}") from None
    header = "//*[local-name()='MessageHeader']"
    senders = _texts(root, f"{header}/*[local-name()='From']/*[local-name()='OrganId']/text()")
    if not senders:
        raise HubRefusal(400, "the package has no MessageHeader/From/OrganId")
    if message_type == "edoc":
        to = _texts(root, f"{header}/*[local-name()='To']/*[local-name()='OrganId']/text()")
    else:
        to = _texts(
            root, f"{header}/*[local-name()='ResponseFor']/*[local-name()='OrganId']/text()"
        )
    ids = _texts(root, f"{header}/*[local-name()='DocumentId']/text()")
    return Routing(senders[0], tuple(dict.fromkeys(to)), ids[0] if ids else None)


# -- state ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HubAgency:
    code: str
    name: str
    system: str


@dataclass
class HubDoc:
    doc_id: str
    message_type: str
    message_id: str
    sender: str  # From/OrganId
    sender_system: str
    to: str
    to_system: str
    body: bytes
    created: datetime
    status: str = PENDING
    reason: str | None = None
    problem: dict[str, Any] | None = None  # the receiver's RFC 7807 problem, with a fail

    def listing(self) -> dict[str, Any]:
        return {
            "docId": self.doc_id, "messageType": self.message_type,
            "messageId": self.message_id, "from": self.sender,
            "fromSystem": self.sender_system, "to": self.to,
            "created": self.created.isoformat(), "size": len(self.body),
            "sha256": hashlib.sha256(self.body).hexdigest(),
        }


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the hub saw it (for tests and the demo: who called what, and the answer)."""

    system: str | None
    method: str
    path: str
    status: int


@dataclass
class CentralHub:
    """The hub's state and its HTTP app (:meth:`app`)."""

    systems: dict[str, str] = field(default_factory=dict)  # system id -> secret
    agencies: dict[str, HubAgency] = field(default_factory=dict)
    slow_seconds: float = 3.0
    window: float = WINDOW_SECONDS
    clock: Callable[[], float] = time.time
    docs: dict[str, HubDoc] = field(default_factory=dict)
    repeats: int = 0  # /sendEdoc calls that stored nothing new (idempotent repeats)
    seen: list[Seen] = field(default_factory=list)
    script: deque[tuple[str | None, Answer]] = field(default_factory=deque)
    control: set[str] = field(default_factory=set)  # systems allowed to use /_peer/*
    _keys: dict[tuple[str, str, str], str] = field(default_factory=dict)

    # -- configuration --------------------------------------------------------------------
    def add_system(self, system: str, secret: str | None = None) -> str:
        """Register a system; returns its secret (a fresh one when none is given)."""
        self.systems[system] = secret or secrets.token_urlsafe(32)
        return self.systems[system]

    def serve(self, system: str, *codes: str, name: str | None = None) -> None:
        """``system`` serves these agencies."""
        for code in codes:
            self.agencies[code] = HubAgency(code, name or code, system)

    def serve_directory(self, directory: Directory, system: str) -> None:
        """``system`` (a provincial gateway) serves every agency of ``directory`` that it does
        not itself reach through the hub."""
        for agency in directory.agencies.values():
            if agency.mode is not DeliveryMode.HUB:
                self.agencies[agency.code] = HubAgency(agency.code, agency.name, system)

    def fail_next(self, *answers: Answer, endpoint: str | None = None) -> None:
        """Answer the next requests (to ``endpoint`` only, if given) with these."""
        self.script.extend((endpoint, a) for a in answers)

    def state(self) -> dict[str, Any]:
        """What ``GET /_peer/state`` shows: the script, the documents, the calls."""
        docs = {s: 0 for s in (PENDING, DONE, FAIL)}
        for doc in self.docs.values():
            docs[doc.status] += 1
        calls: dict[str, int] = {}
        for seen in self.seen:
            calls[seen.path] = calls.get(seen.path, 0) + 1
        return {
            "script": [{"answer": a, "endpoint": e} for e, a in self.script],
            "docs": docs, "repeats": self.repeats, "calls": calls,
        }

    # -- queries for tests ----------------------------------------------------------------
    def sent_by(self, system: str) -> list[HubDoc]:
        return [d for d in self.docs.values() if d.sender_system == system]

    def queued_for(self, system: str) -> list[HubDoc]:
        return [d for d in self.docs.values() if d.to_system == system and d.status == PENDING]

    def calls(self, path: str, status: int | None = None) -> list[Seen]:
        return [s for s in self.seen if s.path == path and (status is None or s.status == status)]

    # -- operations (also callable directly, without HTTP) --------------------------------
    def submit(
        self, system: str, package: bytes, message_type: str, *, message_id: str | None = None,
        to: Sequence[str] = (),
    ) -> tuple[list[HubDoc], bool]:
        """Store a package sent by ``system``: (its documents, whether all were repeats)."""
        if message_type not in MESSAGE_TYPES:
            raise HubRefusal(400, f"header {MESSAGE_TYPE_HEADER} must be edoc or status")
        routing = read_routing(package, message_type)
        sender = self.agencies.get(routing.sender)
        if sender is None or sender.system != system:
            raise HubRefusal(403, f"system {system} does not serve the sender {routing.sender}")
        recipients = tuple(to) or routing.to
        if not recipients:
            where = "To/OrganId" if message_type == "edoc" else "ResponseFor/OrganId"
            raise HubRefusal(400, f"the package names no recipient ({where})")
        unknown = [code for code in recipients if code not in self.agencies]
        if unknown:
            raise HubRefusal(422, f"recipient(s) unknown to the hub: {', '.join(unknown)}")
        message_id = (message_id or routing.document_id
                      or hashlib.sha256(package).hexdigest())
        docs: list[HubDoc] = []
        fresh = False
        for code in recipients:
            key = (system, message_id, code)
            existing = self._keys.get(key)
            if existing is not None:
                docs.append(self.docs[existing])
                continue
            fresh = True
            doc = HubDoc(
                doc_id=secrets.token_hex(16), message_type=message_type, message_id=message_id,
                sender=routing.sender, sender_system=system, to=code,
                to_system=self.agencies[code].system, body=package, created=datetime.now(UTC),
            )
            self.docs[doc.doc_id] = doc
            self._keys[key] = doc.doc_id
            docs.append(doc)
        if not fresh:
            self.repeats += 1
        return docs, not fresh

    def update(
        self, system: str, doc_id: str, status: str, reason: str | None,
        problem: dict[str, Any] | None = None,
    ) -> HubDoc:
        doc = self.docs.get(doc_id)
        if doc is None or doc.to_system != system:
            raise HubRefusal(404, f"no document {doc_id} for system {system}")
        if status not in (DONE, FAIL):
            raise HubRefusal(400, "status must be done or fail")
        if status == FAIL and not (reason and reason.strip()):
            raise HubRefusal(400, "a fail needs a reason")
        if doc.status == PENDING:
            doc.status = status
            if status == FAIL:
                doc.reason, doc.problem = reason, problem
        elif doc.status != status:
            raise HubRefusal(409, f"document {doc_id} was already marked {doc.status}")
        return doc

    # -- HTTP -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_PACKAGE_BYTES, middlewares=[self._middleware])
        app.router.add_post("/sendEdoc", self._send_edoc)
        app.router.add_get("/getReceivedEdocList", self._received_list)
        app.router.add_get("/getEdoc", self._get_edoc)
        app.router.add_post("/updateStatus", self._update_status)
        app.router.add_get("/getEdocStatus", self._edoc_status)
        app.router.add_get("/getAgenciesList", self._agencies_list)
        app.router.add_post(CONTROL_PREFIX + "fail", self._control_fail)
        app.router.add_get(CONTROL_PREFIX + "state", self._control_state)
        return app

    def _scripted(self, path: str) -> Answer | None:
        if path.startswith(CONTROL_PREFIX):  # the control must work while the hub fails
            return None
        for index, (endpoint, answer) in enumerate(self.script):
            if endpoint is None or endpoint == path:
                del self.script[index]
                return answer
        return None

    @web.middleware
    async def _middleware(
        self, request: web.Request,
        handler: Callable[[web.Request], Any],
    ) -> web.StreamResponse:
        answer = self._scripted(request.path)
        system: str | None = None
        try:
            if answer == "reset":
                assert request.transport is not None
                request.transport.close()
                self.seen.append(Seen(None, request.method, request.path, 0))
                return web.Response(status=500)
            if isinstance(answer, int):
                raise HubRefusal(answer, "scripted failure")
            body = await request.read()
            system = authenticate(
                self.systems, method=request.method, target=request.raw_path,
                headers=request.headers, body=body, now=self.clock(), window=self.window,
            )
            if request.path.startswith(CONTROL_PREFIX) and system not in self.control:
                raise HubRefusal(403, f"system {system} may not control the hub")
            request[SYSTEM] = system
            response: web.StreamResponse = await handler(request)
        except HubRefusal as exc:
            response = web.json_response({"error": exc.error}, status=exc.status)
        self.seen.append(Seen(system, request.method, request.path, response.status))
        if answer == "slow":  # it took effect; the answer comes too late
            await asyncio.sleep(self.slow_seconds)
        return response

    async def _send_edoc(self, request: web.Request) -> web.Response:
        to_header = request.headers.get(TO_HEADER, "")
        docs, duplicate = self.submit(
            request[SYSTEM], await request.read(),
            request.headers.get(MESSAGE_TYPE_HEADER, ""),
            message_id=request.headers.get(MESSAGE_ID_HEADER) or None,
            to=[c.strip() for c in to_header.split(",") if c.strip()],
        )
        return web.json_response({
            "docs": [{"docId": d.doc_id, "to": d.to, "toSystem": d.to_system} for d in docs],
            "duplicate": duplicate,
        })

    async def _received_list(self, request: web.Request) -> web.Response:
        wanted = request.query.get("messageType")
        if wanted is not None and wanted not in MESSAGE_TYPES:
            raise HubRefusal(400, "query messageType must be edoc or status")
        docs = [d.listing() for d in self.queued_for(request[SYSTEM])
                if wanted is None or d.message_type == wanted]
        return web.json_response({"docs": docs})

    def _doc_param(self, request: web.Request) -> str:
        doc_id = request.query.get("docId", "")
        if not doc_id:
            raise HubRefusal(400, "query parameter docId is required")
        return doc_id

    async def _get_edoc(self, request: web.Request) -> web.Response:
        doc_id = self._doc_param(request)
        doc = self.docs.get(doc_id)
        if doc is None or doc.to_system != request[SYSTEM]:
            raise HubRefusal(404, f"no document {doc_id} for this system")
        return web.Response(
            body=doc.body, content_type="application/xml", charset="utf-8",
            headers={MESSAGE_TYPE_HEADER: doc.message_type, MESSAGE_ID_HEADER: doc.message_id,
                     FROM_HEADER: doc.sender, TO_HEADER: doc.to},
        )

    async def _update_status(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except ValueError:
            raise HubRefusal(400, "the body must be JSON {docId, status, reason}") from None
        if not isinstance(data, dict) or not isinstance(data.get("docId"), str):
            raise HubRefusal(400, "docId is required")
        reason, problem = data.get("reason"), data.get("problem")
        doc = self.update(request[SYSTEM], data["docId"], str(data.get("status", "")),
                          reason if isinstance(reason, str) else None,
                          problem if isinstance(problem, dict) else None)
        return web.json_response({"docId": doc.doc_id, "status": doc.status})

    async def _edoc_status(self, request: web.Request) -> web.Response:
        doc_id = self._doc_param(request)
        doc = self.docs.get(doc_id)
        if doc is None or doc.sender_system != request[SYSTEM]:
            raise HubRefusal(404, f"no document {doc_id} sent by this system")
        return web.json_response({"docId": doc.doc_id, "status": doc.status,
                                  "reason": doc.reason, "problem": doc.problem, "to": doc.to})

    async def _agencies_list(self, request: web.Request) -> web.Response:
        return web.json_response({"agencies": [
            {"code": a.code, "name": a.name, "system": a.system}
            for a in sorted(self.agencies.values(), key=lambda a: a.code)
        ]})


    async def _control_fail(self, request: web.Request) -> web.Response:
        try:
            data = await request.json()
        except ValueError:
            raise HubRefusal(400, "the body must be JSON {answer, count, endpoint}") from None
        if not isinstance(data, dict):
            raise HubRefusal(400, "the body must be a JSON object")
        if data.get("clear") is True:
            self.script.clear()
            return web.json_response(self.state())
        try:
            answer = parse_answer(data.get("answer"))
        except ValueError as exc:
            raise HubRefusal(400, f"answer: {exc}") from None
        count, endpoint = data.get("count", 1), data.get("endpoint")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count:
            raise HubRefusal(400, "count must be a positive integer")
        if len(self.script) + count > MAX_SCRIPTED:
            raise HubRefusal(400, f"at most {MAX_SCRIPTED} answers may wait")
        if endpoint is not None and endpoint not in PROTOCOL_PATHS:
            raise HubRefusal(400, f"endpoint must be one of {', '.join(PROTOCOL_PATHS)}")
        self.fail_next(*[answer] * count, endpoint=endpoint)
        return web.json_response(self.state())

    async def _control_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())


# -- entry point ------------------------------------------------------------------------------
def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _failure(text: str) -> tuple[str | None, list[Answer]]:
    """``ANSWER[xN][@ENDPOINT]`` (``503x3@/sendEdoc``, ``reset``) as (endpoint, answers)."""
    what, _, endpoint = text.partition("@")
    answer, _, times = what.partition("x")
    try:
        parsed = parse_answer(answer)
        count = int(times) if times else 1
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not 1 <= count <= MAX_SCRIPTED:
        raise argparse.ArgumentTypeError(f"{text!r}: the count must be 1..{MAX_SCRIPTED}")
    if endpoint and endpoint not in PROTOCOL_PATHS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the endpoint must be one of {', '.join(PROTOCOL_PATHS)}")
    return endpoint or None, [parsed] * count


def build_hub(args: argparse.Namespace) -> CentralHub:
    hub = CentralHub(slow_seconds=args.slow_seconds)
    for system, secret in args.system:
        hub.add_system(system, secret)
    for path, system in args.serve_directory:
        hub.serve_directory(load_directory(Path(path), allow_insecure_push=True), system)
    for code, system in args.agency:
        hub.serve(system, code)
    for endpoint, answers in args.fail:
        hub.fail_next(*answers, endpoint=endpoint)
    hub.control.update(args.control)
    unknown = ({a.system for a in hub.agencies.values()} | hub.control) - set(hub.systems)
    if unknown:
        raise SystemExit(f"unregistered system(s) serving agencies or controlling the hub: "
                         f"{', '.join(sorted(unknown))}")
    return hub


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.peers.central_hub",
        description="The central document hub (Trục liên thông văn bản quốc gia), in memory.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--system", type=_pair, action="append", default=[],
                        metavar="ID=SECRET", help="a system and its HMAC secret (repeat)")
    parser.add_argument("--agency", type=_pair, action="append", default=[],
                        metavar="CODE=SYSTEM", help="an agency and the system serving it")
    parser.add_argument("--serve-directory", type=_pair, action="append", default=[],
                        metavar="FILE=SYSTEM",
                        help="every agency of this directory not in hub mode is served by SYSTEM")
    parser.add_argument("--slow-seconds", type=float, default=3.0)
    parser.add_argument("--fail", type=_failure, action="append", default=[],
                        metavar="ANSWER[xN][@ENDPOINT]",
                        help="start failing: the next N requests (to ENDPOINT only, if given) "
                        "get ANSWER, an HTTP status, reset or slow (repeat)")
    parser.add_argument("--control", action="append", default=[], metavar="SYSTEM",
                        help="a system allowed to use the test-only control routes /_peer/*")
    args = parser.parse_args(argv)
    hub = build_hub(args)
    # Secrets are never printed: only the systems' ids.
    print(f"central hub on http://{args.host}:{args.port}: systems {', '.join(hub.systems)}, "
          f"{len(hub.agencies)} agencies, {len(hub.script)} failures scripted", file=sys.stderr)
    web.run_app(hub.app(), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
