"""Document-management systems speaking edXML over HTTP: send a package, fetch one, and get
pushes as edXML when the directory says so. Hostile or broken XML stores nothing."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import orjson
import sqlalchemy as sa

from gateway.codecs import decode, decode_edxml, encode_edxml
from gateway.directory import Directory, WireFormat, with_endpoint
from gateway.service import build_app
from gateway.settings import Settings
from gateway.store.tables import messages
from tests.conftest import HUE, PHONG_DIEN, PROVINCE, PUSH_AGENCY, Gateway, document
from tests.peers.push_endpoint import PushEndpoint

XML = {"Content-Type": "application/xml"}


def package(sender: str, to: str, subject: str = "Báo cáo kết quả phòng chống bão") -> bytes:
    """A document package as a QLVB&ĐH system would send it, with its DocumentId."""
    envelope = decode(orjson.dumps(document(sender, [{"agency": to}], subject)))
    header = envelope.header.model_copy(update={"id": uuid.uuid4()})
    return encode_edxml(envelope.model_copy(update={"header": header}))


async def post(gw: Gateway, agency: str, body: bytes) -> Any:
    return await gw.client.post("/api/v1/edxml/messages", data=body,
                                headers={**await gw.auth(agency), **XML})


async def count(gw: Gateway) -> int:
    async with gw.store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(messages))
                    ).scalar_one())


async def test_an_edxml_package_is_delivered_and_fetched_back(gateway: Gateway) -> None:
    response = await post(gateway, HUE, package(HUE, PROVINCE))
    assert response.status == 202, await response.text()
    message_id = (await response.json())["id"]
    await gateway.wait_state(message_id, PROVINCE, "delivered")
    inbox = await (await gateway.client.get("/api/v1/inbox",
                                            headers=await gateway.auth(PROVINCE))).json()
    assert inbox["items"][0]["envelope"]["body"]["subject"] == "Báo cáo kết quả phòng chống bão"

    fetched = await gateway.client.get(f"/api/v1/edxml/messages/{message_id}",
                                       headers=await gateway.auth(PROVINCE))
    assert fetched.status == 200 and fetched.content_type == "application/xml"
    back = decode_edxml(await fetched.read())
    assert (str(back.header.id), back.header.sender) == (message_id, HUE)
    stranger = await gateway.client.get(f"/api/v1/edxml/messages/{message_id}",
                                        headers=await gateway.auth(PHONG_DIEN))
    assert stranger.status == 403


async def test_the_same_package_twice_is_one_message(gateway: Gateway) -> None:
    body = package(HUE, PROVINCE)
    first = await post(gateway, HUE, body)
    second = await post(gateway, HUE, body)
    assert await first.json() == await second.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert await count(gateway) == 1
    # The same DocumentId with other content is a conflict, not a second message.
    altered = body.replace("Báo cáo kết quả".encode(), "Báo cáo khác".encode())
    assert (await post(gateway, HUE, altered)).status == 409
    assert await count(gateway) == 1


async def test_a_package_from_another_agency_is_forbidden(gateway: Gateway) -> None:
    response = await post(gateway, HUE, package(PROVINCE, PHONG_DIEN))
    assert response.status == 403
    pointer = (await response.json())["errors"][0]["pointer"]
    assert pointer.endswith("/From/OrganId")
    assert await count(gateway) == 0


async def test_broken_and_hostile_xml_is_refused_with_where(gateway: Gateway) -> None:
    broken = await post(gateway, HUE, b"<?xml version='1.0'?>\n<edXML><unclosed></edXML>")
    assert broken.status == 400
    assert "line" in (await broken.json())["detail"]
    xxe = (b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n'
           b"<edXML>&e;</edXML>")
    refused = await post(gateway, HUE, xxe)
    assert refused.status == 400
    assert "DOCTYPE" in (await refused.json())["detail"]
    assert await count(gateway) == 0


def speaking_edxml(directory: Directory, code: str) -> Directory:
    """The directory with ``code``'s entry saying ``format: edxml``."""
    agencies = dict(directory.agencies)
    agencies[code] = dataclasses.replace(agencies[code], format=WireFormat.EDXML)
    return Directory(directory.levels, agencies, directory.children)


async def edxml_push_gateway(settings: Settings, directory: Directory, endpoint: PushEndpoint,
                             aiohttp_client: Any, aiohttp_server: Any) -> Gateway:
    """A gateway whose push agency takes edXML at ``endpoint``, served for the test."""
    server = await aiohttp_server(endpoint.app())
    directory = speaking_edxml(
        with_endpoint(directory, PUSH_AGENCY, str(server.make_url("/receive"))), PUSH_AGENCY)
    return Gateway(await aiohttp_client(build_app(settings, directory)), settings, directory,
                   endpoint, {})


async def test_an_edxml_agency_gets_its_pushes_as_edxml(
    settings: Settings, sample_directory: Directory, aiohttp_client: Any, aiohttp_server: Any,
) -> None:
    endpoint = PushEndpoint()
    gw = await edxml_push_gateway(settings, sample_directory, endpoint, aiohttp_client,
                                  aiohttp_server)
    response = await gw.send(PROVINCE, document(PROVINCE, [{"agency": PUSH_AGENCY}]))
    message_id = (await response.json())["id"]
    await gw.wait_state(message_id, PUSH_AGENCY, "delivered")
    assert endpoint.headers[message_id]["Content-Type"] == "application/xml"
    pushed = decode_edxml(endpoint.effects[message_id])
    assert (str(pushed.header.id), pushed.header.sender) == (message_id, PROVINCE)
