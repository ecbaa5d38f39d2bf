"""The central document hub bridge, both directions, against the real broker, both databases
and the hub played by its real HTTP server (``deploy.peers.central_hub``).

Systems at the hub: ours (``lienthong-h57``, serving the Thừa Thiên Huế agencies of the sample
directory), Văn phòng Chính phủ's (``vpcp``: 000.00.00.G22) and Bộ Nội vụ's (``bnv``: the other
central agencies, and 000.00.00.G99, which our directory does not know). A test acts as ``bnv``
through the same signed client the gateway uses."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import sqlalchemy as sa
from aiohttp import web
from lxml import etree

from adapters.central_hub import HUB_POLLER, HubClient, HubPoller, signed_headers
from deploy.peers.central_hub import DONE, FAIL, PENDING, CentralHub
from gateway.api.keys import DIRECTORY, STORE
from gateway.codecs import decode_edxml, encode_edxml
from gateway.codecs.edxml import NS, message_id_for
from gateway.directory import Directory
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
from gateway.errors import PermanentFailure, RetryLater
from gateway.settings import Settings
from gateway.store.store import DeadLetterFilter, Store
from gateway.store.tables import inbox, messages
from tests.conftest import HUE, PHONG_DIEN, PROVINCE, Gateway, GatewayFactory, document

GATEWAY_SYSTEM = "lienthong-h57"
VPCP, BNV = "vpcp", "bnv"
G22 = "000.00.00.G22"  # Văn phòng Chính phủ
G04 = "000.00.00.G04"  # Bộ Nội vụ
G13 = "000.00.00.G13"  # Bộ Thông tin và Truyền thông
STRANGER = "000.00.00.G99"  # known to the hub, not to our directory


@dataclass
class HubPeer:
    hub: CentralHub
    url: str

    def settings(self, base: Settings, **changes: Any) -> Settings:
        return base.with_(**{
            "hub_url": self.url, "hub_system_id": GATEWAY_SYSTEM,
            "hub_secret": self.hub.systems[GATEWAY_SYSTEM], "hub_poll_interval": 0.2,
            **changes,
        })


@pytest.fixture
async def peer(aiohttp_server: Any, sample_directory: Directory) -> HubPeer:
    hub = CentralHub(slow_seconds=1.5)
    for system in (GATEWAY_SYSTEM, VPCP, BNV):
        hub.add_system(system)
    hub.serve(VPCP, G22)
    hub.serve(BNV, G04, "000.00.00.G05", "000.00.00.G07", G13, STRANGER)
    hub.serve_directory(sample_directory, GATEWAY_SYSTEM)
    server = await aiohttp_server(hub.app())
    return HubPeer(hub, str(server.make_url("/")).rstrip("/"))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def ministry(peer: HubPeer, http: aiohttp.ClientSession) -> HubClient:
    """Bộ Nội vụ's document system, talking to the hub."""
    return HubClient(http, peer.url, BNV, peer.hub.systems[BNV], timeout=5.0)


def ministry_document(to: list[str], number: str = "12", subject: str = "Về việc tinh gọn bộ máy"
                      ) -> tuple[bytes, str]:
    """An edXML package as Bộ Nội vụ's system writes it, and its DocumentId."""
    envelope = DocumentEnvelope(
        kind="document",
        header=Header(sender=G04, to=[AgencyAddress(agency=a) for a in to]),
        body=DocumentBody(
            number=number, notation="BNV-VP", type=DocumentType(code="CV", name="Công văn"),
            subject=subject, promulgation=Promulgation(place="Hà Nội", date=date(2026, 11, 20)),
        ),
    )
    package = encode_edxml(envelope, gateway_extension=False)
    return package, f"{G04},2026/11/20,{number}/BNV-VP"


def ministry_status(about: uuid.UUID, to: str) -> bytes:
    envelope = StatusEnvelope(
        kind="status",
        header=Header(sender=G04, to=[AgencyAddress(agency=to)]),
        body=StatusBody(about=about, code=StatusCode.ACCEPTED, at=datetime(2026, 11, 21, 8, 0,
                                                                           tzinfo=UTC)),
    )
    return encode_edxml(envelope, gateway_extension=False)


async def settled(gw: Gateway, peer: HubPeer, system: str = GATEWAY_SYSTEM) -> None:
    """Until the hub holds nothing more for ``system``."""
    async def empty() -> bool:
        return not peer.hub.queued_for(system)

    await gw.wait_for(empty)


async def count(gw: Gateway, query: Any) -> int:
    async with gw.store.read() as conn:
        return int((await conn.execute(query)).scalar_one())


def response_for_document_id(package: bytes) -> str:
    root = etree.fromstring(package)
    found = root.findtext(f".//{{{NS}}}ResponseFor/{{{NS}}}DocumentId")
    assert found is not None
    return found


async def test_document_to_the_government_office_reaches_the_hub_signed_as_edxml(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer, http: aiohttp.ClientSession
) -> None:
    gw = await make_gateway(settings=peer.settings(settings))
    response = await gw.send(PROVINCE, document(PROVINCE, [{"agency": G22}], "Báo cáo tình hình"))
    assert response.status == 202, await response.text()
    message_id = (await response.json())["id"]
    await gw.wait_state(message_id, G22, "delivered")

    # The hub's view: one edoc from our system for VPCP's agency, accepted with our HMAC.
    [doc] = peer.hub.sent_by(GATEWAY_SYSTEM)
    assert (doc.message_type, doc.to, doc.to_system) == ("edoc", G22, VPCP)
    assert doc.message_id == message_id
    sends = peer.hub.calls("/sendEdoc")
    assert sends and all(s.system == GATEWAY_SYSTEM and s.status == 200 for s in sends)
    assert not [s for s in peer.hub.seen if s.status == 401]
    package = decode_edxml(doc.body)
    assert package.header.sender == PROVINCE
    assert str(package.header.id) == message_id
    assert isinstance(package, DocumentEnvelope)
    assert package.body.subject == "Báo cáo tình hình"

    # VPCP's system finds it waiting, and no one else's does.
    vpcp = HubClient(http, peer.url, VPCP, peer.hub.systems[VPCP], timeout=5.0)
    [waiting] = await vpcp.received()
    assert (waiting.doc_id, waiting.sender, waiting.sender_system) == (
        doc.doc_id, PROVINCE, GATEWAY_SYSTEM
    )
    assert await vpcp.get_edoc(doc.doc_id) == doc.body


async def test_a_ministry_document_lands_in_the_inboxes_and_the_answer_goes_back(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer, ministry: HubClient
) -> None:
    gw = await make_gateway(settings=peer.settings(settings))
    # To two of our agencies and to the Government Office, which the hub serves itself.
    package, document_id = ministry_document([HUE, PHONG_DIEN, G22])
    doc_ids = await ministry.send_edoc(package, message_type="edoc", message_id=document_id)
    assert len(doc_ids) == 3
    await settled(gw, peer)

    message_id = str(message_id_for(document_id))
    row = await gw.store.message(message_id)
    assert row.sender == G04
    assert {r.agency for r in row.recipients} == {HUE, PHONG_DIEN}  # not back to the hub
    for agency in (HUE, PHONG_DIEN):
        await gw.wait_state(message_id, agency, "delivered")
        page = await gw.client.get("/api/v1/inbox", headers=await gw.auth(agency))
        assert [item["message_id"] for item in (await page.json())["items"]] == [message_id]
    ours = [d for d in peer.hub.docs.values() if d.to_system == GATEWAY_SYSTEM]
    assert len(ours) == 2 and all(d.status == DONE for d in ours)
    assert peer.hub.sent_by(GATEWAY_SYSTEM) == []  # nothing was sent back through the hub

    # UBND thành phố Huế answers "đã tiếp nhận" (03): it travels to the ministry as a status.
    status = {
        "kind": "status",
        "header": {"sender": HUE, "to": [{"agency": G04}]},
        "body": {"about": message_id, "code": "03", "at": "2026-11-21T02:00:00Z",
                 "by": "Lê Văn Tám"},
    }
    response = await gw.send(HUE, status)
    assert response.status == 202, await response.text()
    status_id = (await response.json())["id"]
    await gw.wait_state(status_id, G04, "delivered")

    [waiting] = await ministry.received("status")
    assert (waiting.sender, waiting.to, waiting.message_id) == (HUE, G04, status_id)
    answer = await ministry.get_edoc(waiting.doc_id)
    decoded = decode_edxml(answer)
    assert isinstance(decoded, StatusEnvelope)
    assert decoded.body.code is StatusCode.ACCEPTED
    assert str(decoded.body.about) == message_id
    # Named by the DocumentId the ministry gave it, not by our message id.
    assert response_for_document_id(answer) == document_id


async def test_hub_failures_are_retried_and_the_document_stored_once(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer
) -> None:
    gw = await make_gateway(settings=peer.settings(settings, max_attempts=6))
    # A 503, a dropped connection, then an answer too late (it took effect): then up again.
    peer.hub.fail_next(503, "reset", "slow", endpoint="/sendEdoc")
    response = await gw.send(HUE, document(HUE, [{"agency": G13}]))
    assert response.status == 202
    message_id = (await response.json())["id"]
    await gw.wait_state(message_id, G13, "delivered", timeout=25.0)

    assert [s.status for s in peer.hub.calls("/sendEdoc")][:2] == [503, 0]
    assert len(peer.hub.calls("/sendEdoc")) == 4
    [doc] = peer.hub.sent_by(GATEWAY_SYSTEM)  # one document at the hub, however many tries
    assert (doc.message_id, doc.to, doc.to_system) == (message_id, G13, BNV)
    assert peer.hub.repeats == 1  # the try after the late answer stored nothing new
    [recipient] = (await gw.store.message(message_id)).recipients
    assert recipient.attempts == 4


async def test_a_package_waits_at_the_hub_while_our_store_or_the_hub_is_away(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer, ministry: HubClient,
    http: aiohttp.ClientSession, sample_directory: Directory, tmp_path: Path,
) -> None:
    gw = await make_gateway(settings=peer.settings(settings, hub_poll_interval=3600.0))

    async def first_poll_done() -> bool:  # the gateway's own poller, then it sleeps
        return bool(peer.hub.calls("/getReceivedEdocList", 200))

    await gw.wait_for(first_poll_done)
    package, document_id = ministry_document([HUE])
    [doc_id] = await ministry.send_edoc(package, message_type="edoc", message_id=document_id)
    client = HubClient(http, peer.url, GATEWAY_SYSTEM, peer.hub.systems[GATEWAY_SYSTEM],
                       timeout=5.0)

    # A gateway process whose store is away: the package stays listed.
    unreachable = f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'store.db'}"
    async with Store.open(unreachable, migrate_schema=False) as broken:
        app = web.Application()
        app[STORE], app[DIRECTORY] = broken, sample_directory
        result = await HubPoller(app, client, interval=3600.0).poll_once()
    assert (result.deferred, result.admitted, result.refused) == ([doc_id], [], {})
    assert peer.hub.docs[doc_id].status == PENDING

    # The hub is away when the package is fetched: still listed.
    poller = HubPoller(gw.client.app, client, interval=3600.0)
    peer.hub.fail_next(503, endpoint="/getEdoc")
    assert (await poller.poll_once()).deferred == [doc_id]
    assert peer.hub.docs[doc_id].status == PENDING

    # Both back: taken, once.
    assert (await poller.poll_once()).admitted == [doc_id]
    assert peer.hub.docs[doc_id].status == DONE
    await gw.wait_state(str(message_id_for(document_id)), HUE, "delivered")
    assert await count(gw, sa.select(sa.func.count()).select_from(messages)) == 1


async def test_without_a_hub_url_a_hub_agency_is_dead_lettered_with_the_reason(
    gateway: Gateway, peer: HubPeer
) -> None:
    response = await gateway.send(PROVINCE, document(PROVINCE, [{"agency": G22}]))
    message_id = (await response.json())["id"]
    await gateway.wait_state(message_id, G22, "failed")
    [dead] = await gateway.store.dead_letters(DeadLetterFilter(agency=G22))
    assert dead.error == "no hub transport is configured"
    assert HUB_POLLER not in gateway.client.app
    assert peer.hub.seen == []


async def test_a_wrong_secret_is_refused_by_the_hub_and_dead_lettered(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer
) -> None:
    gw = await make_gateway(settings=peer.settings(settings, hub_secret="not-our-secret"))
    response = await gw.send(PROVINCE, document(PROVINCE, [{"agency": G22}]))
    message_id = (await response.json())["id"]
    await gw.wait_state(message_id, G22, "failed")

    assert peer.hub.docs == {}
    refused = peer.hub.calls("/sendEdoc", 401)
    assert len(refused) == 1  # permanent: not retried
    [dead] = await gw.store.dead_letters(DeadLetterFilter(agency=G22))
    assert dead.message_id == message_id and dead.reason == "permanent"
    assert dead.error is not None and "HTTP 401" in dead.error and "bad signature" in dead.error
    assert "not-our-secret" not in dead.error
    [recipient] = (await gw.store.message(message_id)).recipients
    assert recipient.last_error is not None and "401" in recipient.last_error
    assert peer.hub.calls("/getReceivedEdocList", 401)  # the poller is refused as well


async def test_poisoned_packages_are_marked_fail_with_the_reason_and_nothing_is_stored(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer, ministry: HubClient
) -> None:
    gw = await make_gateway(settings=peer.settings(settings))
    package, _ = ministry_document([HUE])
    no_subject = re.sub(rb"<edXML:Subject>.*?</edXML:Subject>", b"", package, flags=re.S)
    stranger = package.replace(f"<edXML:OrganId>{G04}<".encode(),
                               f"<edXML:OrganId>{STRANGER}<".encode(), 1)
    unknown_status = ministry_status(uuid.uuid4(), HUE)
    [schema_doc] = await ministry.send_edoc(no_subject, message_type="edoc", message_id="p-1")
    [stranger_doc] = await ministry.send_edoc(stranger, message_type="edoc", message_id="p-2")
    [status_doc] = await ministry.send_edoc(unknown_status, message_type="status")
    # What is not XML at all the hub itself refuses.
    with pytest.raises(PermanentFailure, match="HTTP 400"):
        await ministry.send_edoc(b"not xml", message_type="edoc", message_id="p-4")
    await settled(gw, peer)

    reasons = {}
    for doc_id in (schema_doc, stranger_doc, status_doc):
        answer = await ministry.edoc_status(doc_id)
        assert answer["status"] == FAIL
        assert isinstance(answer["problem"], dict) and answer["problem"]["status"] in (403, 422)
        reasons[doc_id] = answer["reason"]
    assert "Subject" in reasons[schema_doc]
    assert f"cannot speak for {STRANGER}" in reasons[stranger_doc]
    assert "unknown message" in reasons[status_doc]
    assert await count(gw, sa.select(sa.func.count()).select_from(messages)) == 0
    assert await count(gw, sa.select(sa.func.count()).select_from(inbox)) == 0
    # Marked once each, then no longer listed: not retried forever.
    await asyncio.sleep(0.5)
    fetches = peer.hub.calls("/getEdoc")
    assert len(fetches) == 3


async def test_two_pollers_at_once_admit_each_package_once(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer, ministry: HubClient,
    http: aiohttp.ClientSession,
) -> None:
    gw = await make_gateway(settings=peer.settings(settings, hub_poll_interval=3600.0))

    async def first_poll_done() -> bool:  # the gateway's own poller, then it sleeps
        return bool(peer.hub.calls("/getReceivedEdocList", 200))

    await gw.wait_for(first_poll_done)
    sent: list[str] = []
    for number, to in (("1", [HUE]), ("2", [HUE]), ("3", [PHONG_DIEN]), ("4", [HUE, PHONG_DIEN])):
        package, document_id = ministry_document(to, number=number)
        await ministry.send_edoc(package, message_type="edoc", message_id=document_id)
        sent.append(str(message_id_for(document_id)))
    assert len(peer.hub.queued_for(GATEWAY_SYSTEM)) == 5

    secret = peer.hub.systems[GATEWAY_SYSTEM]
    pollers = [
        HubPoller(gw.client.app, HubClient(http, peer.url, GATEWAY_SYSTEM, secret, timeout=5.0),
                  interval=3600.0)
        for _ in range(2)
    ]
    # Both see the whole list before either takes anything: every package is taken twice.
    listed = [await p.client.received() for p in pollers]
    results = await asyncio.gather(*(p.take(docs) for p, docs in zip(pollers, listed,
                                                                       strict=True)))

    assert all(len(docs) == 5 for docs in listed)
    assert all(sorted(r.admitted) == sorted(d.doc_id for d in listed[0]) for r in results)
    assert len(peer.hub.calls("/getEdoc", 200)) == 10
    assert peer.hub.queued_for(GATEWAY_SYSTEM) == []
    assert await count(gw, sa.select(sa.func.count()).select_from(messages)) == 4
    for message_id in sent:
        row = await gw.store.message(message_id)
        for recipient in row.recipients:
            await gw.wait_state(message_id, recipient.agency, "delivered")
    rows = await count(gw, sa.select(sa.func.count()).select_from(inbox))
    assert rows == 5  # one inbox row per (package, agency): 1+1+1+2
    assert all(d.status != PENDING for d in peer.hub.docs.values())


def government_office_status(package: bytes, code: StatusCode = StatusCode.ACCEPTED) -> bytes:
    """A status as Văn phòng Chính phủ's system writes it about a package it received: it knows
    only the package, so it names the document by the package's own DocumentId and sends the
    status back to its From/OrganId (never a gateway message id)."""
    root = etree.fromstring(package)
    header = root.find(f".//{{{NS}}}MessageHeader")
    assert header is not None
    document_id = header.findtext(f"{{{NS}}}DocumentId")
    sender = header.findtext(f"{{{NS}}}From/{{{NS}}}OrganId")
    assert document_id and sender
    status = StatusEnvelope(
        kind="status",
        header=Header(sender=G22, to=[AgencyAddress(agency=sender)]),
        body=StatusBody(about=uuid.uuid4(), code=code, at=datetime(2026, 11, 21, 9, 0,
                                                                   tzinfo=UTC), by="Văn thư VPCP"),
    )
    written = encode_edxml(status, gateway_extension=False)
    # The placeholder id becomes the DocumentId it answers, as that system writes it.
    written = written.replace(str(status.body.about).encode(), document_id.encode())
    assert response_for_document_id(written) == document_id
    return written


@pytest.mark.parametrize("document_id", [None, f"{PROVINCE},2026/11/20,15/CT-UBND"],
                         ids=["gateway-id", "sender-chosen-id"])
async def test_a_status_from_a_hub_agency_goes_back_to_our_sender_once(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer,
    http: aiohttp.ClientSession, document_id: str | None,
) -> None:
    gw = await make_gateway(settings=peer.settings(settings, hub_poll_interval=3600.0))
    sent = document(PROVINCE, [{"agency": G22}], "Báo cáo kết quả")
    if document_id is not None:  # a document system choosing its own DocumentId
        sent["body"]["document_id"] = document_id
    response = await gw.send(PROVINCE, sent)
    assert response.status == 202, await response.text()
    message_id = (await response.json())["id"]
    await gw.wait_state(message_id, G22, "delivered")

    # Văn phòng Chính phủ's system takes the document and answers 03 (đã tiếp nhận).
    vpcp = HubClient(http, peer.url, VPCP, peer.hub.systems[VPCP], timeout=5.0)
    [doc] = await vpcp.received()
    package = await vpcp.get_edoc(doc.doc_id)
    await vpcp.update_status(doc.doc_id, "done")
    [status_doc] = await vpcp.send_edoc(government_office_status(package), message_type="status")
    assert peer.hub.docs[status_doc].to == PROVINCE

    client = HubClient(http, peer.url, GATEWAY_SYSTEM, peer.hub.systems[GATEWAY_SYSTEM],
                       timeout=5.0)
    poller = HubPoller(gw.client.app, client, interval=3600.0)
    first = await poller.poll_once()
    assert (first.admitted, first.refused, first.deferred) == ([status_doc], {}, [])
    assert peer.hub.docs[status_doc].status == DONE

    # Matched to the original: its recipient G22 now shows 03, and the sender has it.
    view = await gw.client.get(f"/api/v1/messages/{message_id}",
                               headers=await gw.auth(PROVINCE))
    [recipient] = (await view.json())["recipients"]
    assert recipient["agency"] == G22 and recipient["status"]["code"] == "03"
    page = await (await gw.client.get("/api/v1/inbox", headers=await gw.auth(PROVINCE))).json()
    [item] = page["items"]
    status_row = await gw.store.message(item["message_id"])
    assert (status_row.sender, status_row.about, status_row.status_code) == (
        G22, message_id, "03")

    # Polled again (the hub lists it again, as after a lost "done"): still one status.
    peer.hub.docs[status_doc].status = PENDING
    again = await poller.poll_once()
    assert again.admitted == [status_doc]
    assert await count(gw, sa.select(sa.func.count()).select_from(messages)
                       .where(messages.c.kind == "status")) == 1
    page = await (await gw.client.get("/api/v1/inbox", headers=await gw.auth(PROVINCE))).json()
    assert [i["message_id"] for i in page["items"]] == [item["message_id"]]


async def control(http: aiohttp.ClientSession, peer: HubPeer, system: str, method: str,
                  path: str, body: dict[str, Any] | None = None,
                  secret: str | None = None) -> tuple[int, Any]:
    """One signed call to the hub's control routes as ``system``."""
    data = orjson.dumps(body) if body is not None else b""
    key = secret if secret is not None else peer.hub.systems[system]
    headers = signed_headers(system, key, method, path, data, time.time())
    async with http.request(method, peer.url + path, data=data or None,
                            headers=headers) as response:
        return response.status, await response.json()


async def test_the_hub_fails_on_command_over_http_for_its_controller_only(
    peer: HubPeer, http: aiohttp.ClientSession, ministry: HubClient
) -> None:
    peer.hub.add_system("ops")
    peer.hub.control.add("ops")
    order = {"answer": 503, "count": 2, "endpoint": "/getAgenciesList"}

    # Not without the hub's own auth, and not for a system that is not a controller.
    async with http.post(peer.url + "/_peer/fail", json=order) as unsigned:
        assert unsigned.status == 401
    assert await control(http, peer, BNV, "POST", "/_peer/fail", order) == (
        403, {"error": "system bnv may not control the hub"})
    status, _ = await control(http, peer, "ops", "POST", "/_peer/fail", order,
                              secret="not-the-secret")
    assert status == 401
    assert not peer.hub.script

    status, state = await control(http, peer, "ops", "POST", "/_peer/fail", order)
    assert status == 200
    assert state["script"] == [{"answer": 503, "endpoint": "/getAgenciesList"}] * 2
    status, _ = await control(http, peer, "ops", "POST", "/_peer/fail",
                              {"answer": "reset", "endpoint": "/sendEdoc"})
    assert status == 200
    # Scripted answers do not touch the control routes, nor other endpoints.
    status, state = await control(http, peer, "ops", "GET", "/_peer/state")
    assert status == 200 and len(state["script"]) == 3

    # The next two agency lists fail with 503, the next send is dropped (nothing stored):
    # then the hub answers normally again.
    for _ in range(2):
        with pytest.raises(RetryLater, match="HTTP 503"):
            await ministry.agencies()
    package, document_id = ministry_document([HUE])
    with pytest.raises(RetryLater, match="/sendEdoc"):
        await ministry.send_edoc(package, message_type="edoc", message_id=document_id)
    assert peer.hub.docs == {}
    assert G04 in {a.code for a in await ministry.agencies()}
    assert len(await ministry.send_edoc(package, message_type="edoc",
                                        message_id=document_id)) == 1
    status, state = await control(http, peer, "ops", "GET", "/_peer/state")
    assert state["script"] == []
    assert state["calls"]["/getAgenciesList"] == 3

    # A malformed order is refused and queues nothing; clear drops what waits.
    for bad in ({"answer": 200}, {"answer": "slow", "count": 0},
                {"answer": "slow", "endpoint": "/_peer/state"}):
        status, _ = await control(http, peer, "ops", "POST", "/_peer/fail", bad)
        assert status == 400, bad
    await control(http, peer, "ops", "POST", "/_peer/fail", {"answer": "slow", "count": 5})
    status, state = await control(http, peer, "ops", "POST", "/_peer/fail", {"clear": True})
    assert (status, state["script"]) == (200, [])


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def start_hub(hub: CentralHub, port: int) -> web.AppRunner:
    runner = web.AppRunner(hub.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_documents_wait_while_the_hub_is_down_and_arrive_once_when_it_is_back(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer, free_port: int
) -> None:
    # The same hub (state kept) served on a port of its own, so that it can really go away.
    hub = peer.hub
    url = f"http://127.0.0.1:{free_port}"
    runner = await start_hub(hub, free_port)
    gw = await make_gateway(settings=HubPeer(hub, url).settings(
        settings, retry_delays=(0.2, 0.5), max_attempts=100, breaker_cooldown=0.5,
        breaker_max_cooldown=1.0,
    ))
    try:
        before = (await (await gw.send(PROVINCE, document(PROVINCE, [{"agency": G22}])))
                  .json())["id"]
        await gw.wait_state(before, G22, "delivered")

        await runner.cleanup()  # the hub is gone: connections refused
        sent: dict[str, str] = {}
        for number, (sender, to) in enumerate([(PROVINCE, G22), (HUE, G22), (HUE, G04),
                                               (PHONG_DIEN, G13)]):
            body = document(sender, [{"agency": to}], f"Văn bản số {number}")
            response = await gw.send(sender, body)
            assert response.status == 202, await response.text()
            sent[(await response.json())["id"]] = to

        async def all_tried() -> bool:
            rows = [await gw.store.message(m) for m in sent]
            return all(r.recipients[0].attempts >= 2 for r in rows)

        await gw.wait_for(all_tried)
        for message_id in sent:
            [recipient] = (await gw.store.message(message_id)).recipients
            assert recipient.state == "pending", recipient
            assert recipient.last_error is not None and "hub /sendEdoc" in recipient.last_error
        assert [d.message_id for d in hub.sent_by(GATEWAY_SYSTEM)] == [before]

        runner = await start_hub(hub, free_port)  # back, on the same port, with its state
        for message_id, to in sent.items():
            await gw.wait_state(message_id, to, "delivered", timeout=20.0)
    finally:
        await runner.cleanup()

    docs = hub.sent_by(GATEWAY_SYSTEM)
    assert sorted(d.message_id for d in docs) == sorted([before, *sent])  # each exactly once
    assert {d.message_id: d.to for d in docs if d.message_id in sent} == sent
    assert len(hub.queued_for(VPCP)) == 3 and len(hub.queued_for(BNV)) == 2


async def test_a_large_file_reaches_the_hub_inside_the_package(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer
) -> None:
    """A file streamed into the blob store goes to the hub in the package itself (the hub's
    protocol takes one package per request), not as a reference the ministry cannot open."""
    import hashlib
    import io
    import os

    from tests.e2e.test_large_attachments import big_package

    gw = await make_gateway(settings=peer.settings(settings))
    data = os.urandom(3 * 1024 * 1024)
    response = await gw.client.post(
        "/api/v1/edxml/messages", data=io.BytesIO(big_package(HUE, G22, data)),
        headers={**await gw.auth(HUE), "Content-Type": "application/xml"})
    assert response.status == 202, await response.text()
    message_id = (await response.json())["id"]
    await gw.wait_state(message_id, G22, "delivered")
    [doc] = peer.hub.sent_by(GATEWAY_SYSTEM)
    package = decode_edxml(doc.body)
    assert isinstance(package, DocumentEnvelope)
    assert [(a.size, a.sha256) for a in package.body.attachments] == [
        (len(data), hashlib.sha256(data).hexdigest())]


async def test_a_large_file_from_the_hub_is_kept_whole_for_our_agency(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer, ministry: HubClient
) -> None:
    """A ministry's package with a 3 MB file, polled from the hub: the file goes to the blob
    store like one sent to our API, and our agency downloads it whole."""
    import hashlib
    import os

    from tests.e2e.test_large_attachments import big_package

    gw = await make_gateway(settings=peer.settings(settings))
    data = os.urandom(3 * 1024 * 1024)
    package = big_package(G04, HUE, data)
    [doc_id] = await ministry.send_edoc(package, message_type="edoc",
                                        message_id=str(uuid.uuid4()))
    await settled(gw, peer)
    assert peer.hub.docs[doc_id].status == DONE
    page = await (await gw.client.get("/api/v1/inbox", headers=await gw.auth(HUE))).json()
    [item] = page["items"]
    message_id = item["message_id"]
    assert item["envelope"]["body"]["attachments"][0]["sha256"] == hashlib.sha256(
        data).hexdigest()
    got = await gw.client.get(f"/api/v1/messages/{message_id}/attachments/0",
                              headers=await gw.auth(HUE))
    assert got.status == 200
    assert hashlib.sha256(await got.read()).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_a_package_over_our_size_limit_is_refused_at_the_hub_not_fetched_forever(
    make_gateway: GatewayFactory, settings: Settings, peer: HubPeer, ministry: HubClient
) -> None:
    """LIENTHONG_MAX_PACKAGE_BYTES bounds what the poller reads from /getEdoc too: a larger
    package is marked ``fail`` with the limit as the reason (fetched again, it would be as
    large), and the next one still comes in."""
    import os

    from tests.e2e.test_large_attachments import big_package

    gw = await make_gateway(settings=peer.settings(settings, max_package_bytes=1_000_000))
    large = big_package(G04, HUE, os.urandom(1_000_000))
    [large_doc] = await ministry.send_edoc(large, message_type="edoc",
                                           message_id=str(uuid.uuid4()))
    package, document_id = ministry_document([HUE], number="7")
    [small_doc] = await ministry.send_edoc(package, message_type="edoc",
                                           message_id=document_id)
    await settled(gw, peer)
    answer = await ministry.edoc_status(large_doc)
    assert answer["status"] == FAIL
    assert "larger than the limit of 1000000 bytes" in answer["reason"]
    assert answer["problem"]["status"] == 413
    assert peer.hub.docs[small_doc].status == DONE
    page = await (await gw.client.get("/api/v1/inbox", headers=await gw.auth(HUE))).json()
    assert [i["message_id"] for i in page["items"]] == [str(message_id_for(document_id))]
    await asyncio.sleep(0.5)  # marked once, then no longer listed
    assert len(peer.hub.calls("/getEdoc")) == 2
