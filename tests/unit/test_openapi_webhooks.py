"""The ``webhooks`` of schemas/openapi.yaml: the requests the gateway makes to others.

Each hub and portal webhook names (``x-lienthong-target``) the peer and path it goes to; the
peer servers (deploy/peers/) serve exactly those routes for the protocol. Then the real
client code (HubClient, PortalTransport, HttpPush) talks to the real peer servers, every
request and answer is recorded on the server's side, and each one is checked against the
operation documented for it: headers, query, JSON bodies (jsonschema, OAS 3.1 dialect) and
the status codes."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from adapters.central_hub import HubClient, signed_headers
from adapters.one_stop_shop import PortalTransport
from deploy.peers.central_hub import CONTROL_PREFIX, CentralHub
from deploy.peers.portal import PortalPeer
from gateway.codecs import encode, encode_edxml
from gateway.delivery import Delivery, HttpPush
from gateway.directory import Directory, WireFormat, with_endpoint
from gateway.envelope import (
    AgencyAddress,
    DocumentBody,
    DocumentEnvelope,
    DocumentType,
    Header,
    Promulgation,
    StatusBody,
    StatusCode,
    StatusEnvelope,
)
from gateway.errors import PermanentFailure, UnprocessableRequest
from tests.conftest import HUE, PUSH_AGENCY
from tests.integration.test_one_stop_shop import PORTAL, a_dossier_envelope, delivery_of
from tests.peers.push_endpoint import PushEndpoint
from tests.unit.test_openapi import ENVELOPE_SCHEMA_PATH, HTTP_METHODS, SPEC_PATH

GATEWAY, BNV = "lienthong-h57", "bnv"
G04, STRANGER = "000.00.00.G04", "000.00.00.G99"
PORTAL_SECRET = "portal-secret-for-the-webhook-test"

#: Routes of the peers that are not part of the protocol the gateway speaks, and why.
NOT_PROTOCOL = {
    "central-hub": {("POST", CONTROL_PREFIX + "fail"), ("GET", CONTROL_PREFIX + "state")},
    # the portal's read-back of a dossier's history and its failure script: tests only
    "portal": {("GET", "/api/TienDoHoSo/{code}"), ("POST", "/api/_script")},
}
PEER_APPS: dict[str, Callable[[], web.Application]] = {
    "central-hub": lambda: CentralHub().app(),
    "portal": lambda: PortalPeer("x").app(),
}

Operation = tuple[str, str]  # (METHOD, path)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return loaded


def webhooks(spec: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """name -> (METHOD, operation)."""
    found = {}
    for name, item in spec["webhooks"].items():
        [(method, op)] = [(m, o) for m, o in item.items() if m in HTTP_METHODS]
        found[name] = (method.upper(), op)
    return found


def documented(spec: dict[str, Any], peer: str) -> dict[Operation, str]:
    """(METHOD, path) -> webhook name, for the webhooks going to ``peer``."""
    return {(method, op["x-lienthong-target"]["path"]): name
            for name, (method, op) in webhooks(spec).items()
            if op["x-lienthong-target"]["peer"] == peer}


def served(app: web.Application) -> set[Operation]:
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.method not in {"HEAD", "*"} and r.resource is not None}


def compare(spec: dict[str, Any], peer: str, app: web.Application
            ) -> tuple[set[Operation], set[Operation]]:
    """(protocol routes the peer serves that no webhook documents, webhooks it does not serve)."""
    protocol = served(app) - NOT_PROTOCOL[peer]
    wanted = set(documented(spec, peer))
    return protocol - wanted, wanted - protocol


# -- the document -----------------------------------------------------------------------------
def test_the_spec_with_webhooks_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    validate(spec, base_uri=SPEC_PATH.as_uri())
    hooks = webhooks(spec)
    assert {op["x-lienthong-target"]["peer"] for _, op in hooks.values()} == {
        "central-hub", "portal", "agency"}
    ids = [op["operationId"] for _, op in hooks.values()]
    assert len(ids) == len(set(ids)) and all(op.get("summary") for _, op in hooks.values())
    path_ids = {op["operationId"] for item in spec["paths"].values()
                for m, op in item.items() if m in HTTP_METHODS}
    assert not path_ids & set(ids)


@pytest.mark.parametrize("peer", sorted(PEER_APPS))
def test_webhooks_are_exactly_the_protocol_routes_the_peer_serves(
    spec: dict[str, Any], peer: str
) -> None:
    app = PEER_APPS[peer]()
    assert NOT_PROTOCOL[peer] <= served(app)  # the exceptions are real routes
    assert compare(spec, peer, app) == (set(), set())


async def _dummy(_request: web.Request) -> web.Response:
    return web.Response()


def test_the_comparison_sees_an_undocumented_route_and_an_unserved_webhook(
    spec: dict[str, Any]
) -> None:
    app = CentralHub().app()
    app.router.add_post("/deleteEdoc", _dummy)
    assert compare(spec, "central-hub", app) == ({("POST", "/deleteEdoc")}, set())
    hooks = {**spec["webhooks"], "hubGone": {"get": {
        "x-lienthong-target": {"peer": "central-hub", "path": "/getGone"}}}}
    assert compare({**spec, "webhooks": hooks}, "central-hub", CentralHub().app()) == (
        set(), {("GET", "/getGone")})


# -- real exchanges against the documented operations -----------------------------------------
@dataclasses.dataclass
class Exchange:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int
    response_type: str
    response_headers: dict[str, str]
    response_body: bytes


def recording(app: web.Application, exchanges: list[Exchange]) -> web.Application:
    """The peer's app with a first middleware that records each request and its answer."""

    @web.middleware
    async def record(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        body = await request.read()
        response = await handler(request)
        content = response.body if isinstance(response, web.Response) else b""
        exchanges.append(Exchange(
            request.method, request.path, dict(request.query), dict(request.headers), body,
            response.status, response.content_type, dict(response.headers),
            content if isinstance(content, bytes) else b"",
        ))
        return response

    app.middlewares.insert(0, record)
    return app


class Checker:
    """Checks exchanges against the webhooks of one peer; collects every mismatch."""

    def __init__(self, spec: dict[str, Any], peer: str) -> None:
        self.spec, self.peer = spec, peer
        self.targets = documented(spec, peer)
        uri = SPEC_PATH.as_uri()
        envelope = orjson.loads(ENVELOPE_SCHEMA_PATH.read_bytes())
        self.registry: Registry[Any] = Registry().with_resources([
            (uri, Resource.from_contents(spec, default_specification=DRAFT202012)),
            (ENVELOPE_SCHEMA_PATH.as_uri(), Resource.from_contents(envelope)),
        ])
        self.wrong: list[str] = []
        self.seen: set[tuple[str, int]] = set()  # (webhook, status)

    def _errors(self, pointer: str, value: Any) -> list[str]:
        validator = OAS31Validator({"$ref": f"{SPEC_PATH.as_uri()}#{pointer}"},
                                   registry=self.registry, format_checker=oas31_format_checker)
        return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(value)]

    def _deref(self, pointer: str, node: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            parts = ref[2:].split("/")
            target: Any = self.spec
            for part in parts:
                target = target[part]
            return ref[1:], target
        return pointer, node

    def check(self, ex: Exchange) -> None:
        # An agency's endpoint is wherever its directory entry says: no path of its own.
        path = None if self.peer == "agency" else ex.path
        name = self.targets.get((ex.method, path))
        if name is None:
            self.wrong.append(f"{ex.method} {ex.path}: no webhook documents it")
            return
        method = ex.method.lower()
        at = f"/webhooks/{name}/{method}"
        op = self.spec["webhooks"][name][method]
        where = f"{name} ({ex.status})"
        self.seen.add((name, ex.status))
        headers = {k.lower(): v for k, v in ex.headers.items()}
        for index, raw in enumerate(op.get("parameters", [])):
            p_at, param = self._deref(f"{at}/parameters/{index}", raw)
            value = (headers.get(param["name"].lower()) if param["in"] == "header"
                     else ex.query.get(param["name"]))
            if value is None:
                if param.get("required"):
                    self.wrong.append(f"{where}: required {param['in']} {param['name']} missing")
                continue
            self.wrong += [f"{where} {param['name']}: {e}"
                           for e in self._errors(f"{p_at}/schema", value)]
        content_type = headers.get("content-type", "").split(";")[0].strip()
        if "requestBody" in op:
            media = op["requestBody"]["content"]
            if content_type not in media:
                self.wrong.append(f"{where}: request body {content_type!r} not documented")
            elif content_type == "application/json":
                self.wrong += [f"{where} request: {e}" for e in self._errors(
                    f"{at}/requestBody/content/application~1json/schema",
                    orjson.loads(ex.body))]
        elif ex.body:
            self.wrong.append(f"{where}: a body the operation does not document")
        responses = op["responses"]
        if str(ex.status) not in responses:
            self.wrong.append(f"{where}: status not documented")
            return
        r_at, response = self._deref(f"{at}/responses/{ex.status}", responses[str(ex.status)])
        content = response.get("content", {})
        if content and ex.response_type not in content:
            self.wrong.append(f"{where}: answer {ex.response_type!r} not documented")
        elif ex.response_type == "application/json" and content:
            self.wrong += [f"{where} answer: {e}" for e in self._errors(
                f"{r_at}/content/application~1json/schema", orjson.loads(ex.response_body))]
        answer_headers = {k.lower(): v for k, v in ex.response_headers.items()}
        for header in response.get("headers", {}):
            value = answer_headers.get(header.lower())
            if value is None:
                self.wrong.append(f"{where}: answer header {header} missing")
                continue
            self.wrong += [f"{where} answer {header}: {e}" for e in self._errors(
                f"{r_at}/headers/{header}/schema", value)]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def ministry_document(to: str) -> bytes:
    envelope = DocumentEnvelope(
        kind="document", header=Header(sender=HUE, to=[AgencyAddress(agency=to)]),
        body=DocumentBody(number="7", notation="UBND-VP", type=DocumentType(code="CV",
                          name="Công văn"), subject="Về việc báo cáo",
                          promulgation=Promulgation(place="Huế", date=date(2026, 11, 20))),
    )
    return encode_edxml(envelope, gateway_extension=False)


async def test_hub_exchanges_match_the_webhooks(
    spec: dict[str, Any], aiohttp_server: Any, http: aiohttp.ClientSession
) -> None:
    hub = CentralHub()
    secret, bnv_secret = hub.add_system(GATEWAY), hub.add_system(BNV)
    hub.serve(GATEWAY, HUE)
    hub.serve(BNV, G04, STRANGER, name="Bộ Nội vụ")
    exchanges: list[Exchange] = []
    server = await aiohttp_server(recording(hub.app(), exchanges))
    url = str(server.make_url("/")).rstrip("/")
    gateway = HubClient(http, url, GATEWAY, secret, timeout=5.0)
    ministry = HubClient(http, url, BNV, bnv_secret, timeout=5.0)

    # What the gateway does: send a document and a status for one recipient each...
    message_id = str(uuid.uuid4())
    [doc_id] = await gateway.send_edoc(ministry_document(G04), message_type="edoc",
                                       message_id=message_id, to=[G04])
    await gateway.send_edoc(ministry_document(G04), message_type="edoc",
                            message_id=message_id, to=[G04])  # a retry: duplicate
    status = StatusEnvelope(kind="status", header=Header(sender=HUE, to=[
        AgencyAddress(agency=G04)]), body=StatusBody(about=uuid.uuid4(), code=StatusCode.ACCEPTED,
                                                     at=datetime(2026, 11, 21, tzinfo=UTC)))
    [status_id] = await gateway.send_edoc(encode_edxml(status), message_type="status",
                                          message_id=str(uuid.uuid4()), to=[G04])
    with pytest.raises(PermanentFailure, match="422"):
        await gateway.send_edoc(ministry_document("000.00.00.G98"), message_type="edoc")
    # ...poll what waits for it, take one, refuse one with its problem...
    [taken, refused] = await ministry.received()
    await ministry.received("edoc")
    assert await ministry.get_edoc(taken.doc_id)
    await ministry.update_status(taken.doc_id, "done")
    problem = UnprocessableRequest("status about unknown message").problem()
    await ministry.update_status(refused.doc_id, "fail", reason="unknown message",
                                 problem=problem)
    with pytest.raises(PermanentFailure, match="409"):
        await ministry.update_status(refused.doc_id, "done")
    with pytest.raises(PermanentFailure, match="404"):
        await ministry.get_edoc("no-such-doc")
    # ...read what became of what it sent, and the hub's agency list; a wrong secret.
    assert (await gateway.edoc_status(doc_id))["status"] == "done"
    assert (await gateway.edoc_status(status_id))["problem"] == problem
    assert {a.code for a in await gateway.agencies()} == {HUE, G04, STRANGER}
    with pytest.raises(PermanentFailure, match="401"):
        await HubClient(http, url, GATEWAY, "wrong", timeout=5.0).agencies()

    checker = Checker(spec, "central-hub")
    for exchange in exchanges:
        checker.check(exchange)
    assert not checker.wrong, "\n".join(checker.wrong)
    # Every hub webhook was exercised with its success answer, and the errors above.
    assert {(name, 200) for name in documented(spec, "central-hub").values()} <= checker.seen
    assert {("hubSendEdoc", 422), ("hubUpdateStatus", 409), ("hubGetEdoc", 404),
            ("hubGetAgenciesList", 401)} <= checker.seen


async def test_the_checker_catches_a_body_that_breaks_the_schema(
    spec: dict[str, Any]
) -> None:
    checker = Checker(spec, "central-hub")
    body = orjson.dumps({"docs": [{"docId": "d1", "to": "H57"}], "duplicate": "no"})
    checker.check(Exchange("GET", "/getAgenciesList", {}, {}, b"", 200, "application/json",
                           {}, orjson.dumps({"agencies": [{"code": HUE}]})))
    checker.check(Exchange("POST", "/sendEdoc", {}, {"Content-Type": "application/xml"},
                           b"<x/>", 200, "application/json", {}, body))
    text = "\n".join(checker.wrong)
    assert "required header X-Lienthong-Signature missing" in text
    assert "required header messageType missing" in text
    assert "'name' is a required property" in text  # an agency without name and system
    assert "'toSystem' is a required property" in text and "'no' is not of type" in text


async def test_portal_exchanges_match_the_webhook(
    spec: dict[str, Any], aiohttp_server: Any, http: aiohttp.ClientSession,
    sample_directory: Directory,
) -> None:
    portal = PortalPeer(PORTAL_SECRET)
    exchanges: list[Exchange] = []
    server = await aiohttp_server(recording(portal.app(), exchanges))
    agency = with_endpoint(sample_directory, PORTAL,
                           str(server.make_url("/api/CapNhatTienDoHoSoMC"))).agencies[PORTAL]
    delivery = delivery_of(a_dossier_envelope())
    await PortalTransport(http, secret=PORTAL_SECRET, timeout=5.0).send(agency, delivery)
    await PortalTransport(http, secret=PORTAL_SECRET, timeout=5.0).send(agency, delivery)
    with pytest.raises(PermanentFailure, match="401"):
        await PortalTransport(http, secret="wrong", timeout=5.0).send(agency, delivery)
    assert len(portal.applied) == 1 and portal.repeats == 1

    checker = Checker(spec, "portal")
    for exchange in exchanges:
        checker.check(exchange)
    assert not checker.wrong, "\n".join(checker.wrong)
    assert {("portalProgress", 200), ("portalProgress", 401)} <= checker.seen
    assert orjson.loads(exchanges[1].response_body)["duplicate"] is True


async def test_agency_pushes_match_the_webhook(
    spec: dict[str, Any], aiohttp_server: Any, http: aiohttp.ClientSession,
    sample_directory: Directory,
) -> None:
    endpoint = PushEndpoint()
    exchanges: list[Exchange] = []
    server = await aiohttp_server(recording(endpoint.app(), exchanges))
    url = str(server.make_url("/receive"))
    directory = with_endpoint(sample_directory, PUSH_AGENCY, url)
    envelope = DocumentEnvelope(
        kind="document", header=Header(id=uuid.uuid4(), sender=HUE, created=datetime.now(UTC),
                                       to=[AgencyAddress(agency=PUSH_AGENCY)]),
        body=DocumentBody(number="7", notation="UBND-VP", type=DocumentType(code="CV",
                          name="Công văn"), subject="Về việc báo cáo",
                          promulgation=Promulgation(place="Huế", date=date(2026, 11, 20))),
    )
    delivery = Delivery(str(envelope.header.id), HUE, 1, encode(envelope))
    push = HttpPush(http, 5.0)
    agency = directory.agencies[PUSH_AGENCY]
    await push.send(agency, delivery)  # the canonical JSON
    await push.send(dataclasses.replace(agency, format=WireFormat.EDXML), delivery)

    checker = Checker(spec, "agency")
    for exchange in exchanges:
        checker.check(exchange)
    assert not checker.wrong, "\n".join(checker.wrong)
    assert [e.headers["Content-Type"].split(";")[0] for e in exchanges] == [
        "application/json", "application/xml"]
    assert checker.seen == {("agencyPush", 200)}


def test_hub_signature_headers_are_documented_as_the_client_sends_them(
    spec: dict[str, Any]
) -> None:
    """The three signing parameters of every hub webhook are the headers HubClient signs."""
    sent = signed_headers("sys", "secret", "GET", "/getAgenciesList", b"", time.time())
    for name, (_, op) in webhooks(spec).items():
        if op["x-lienthong-target"]["peer"] != "central-hub":
            continue
        refs = {p.get("$ref", "").rsplit("/", 1)[-1] for p in op["parameters"]}
        assert {"HubSystem", "HubTimestamp", "HubSignature"} <= refs, name
        assert op["security"] == [{"hubSignature": []}], name
    names = {spec["components"]["parameters"][n]["name"]
             for n in ("HubSystem", "HubTimestamp", "HubSignature")}
    assert names == set(sent)
