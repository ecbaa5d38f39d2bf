"""Large files (claim check): an edXML package whose attachment is several megabytes is
streamed in, its file kept once in the blob store, and streamed out whole to every recipient,
as edXML (fetched or pushed) or as bytes for JSON systems. Refusals leave no file behind."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from gateway.blobs import UPLOAD_VALID, BlobStore
from gateway.codecs import decode, decode_edxml, encode_edxml
from gateway.directory import Directory
from gateway.service import build_app
from gateway.settings import Settings
from gateway.store.tables import uploads
from tests.conftest import (
    HUE,
    PHONG_DIEN,
    PROVINCE,
    PUSH_AGENCY,
    Gateway,
    GatewayFactory,
    document,
)
from tests.e2e.test_edxml_api import XML, count, edxml_push_gateway, speaking_edxml
from tests.integration.test_stats import lienthong
from tests.peers.push_endpoint import PushEndpoint

_ENCODED = re.compile(rb"(<(?:edXML:)?ContentTransferEncoded[^>]*>)[^<]*(</)")


def big_package(sender: str, to: str, data: bytes, *, document_id: uuid.UUID | None = None
                ) -> bytes:
    """A document package carrying ``data`` as its one attachment, base64 in 76-character
    lines as document systems write it."""
    small = b"placeholder"
    envelope = decode(orjson.dumps(document(sender, [{"agency": to}]) | {"body": {
        **document(sender, [])["body"],
        "attachments": [{"name": "Bản vẽ thiết kế.pdf", "media_type": "application/pdf",
                         "size": len(small), "sha256": hashlib.sha256(small).hexdigest(),
                         "content": base64.b64encode(small).decode()}],
    }}))
    header = envelope.header.model_copy(update={"id": document_id or uuid.uuid4()})
    package = encode_edxml(envelope.model_copy(update={"header": header}))
    encoded = base64.encodebytes(data)
    return _ENCODED.sub(lambda m: m.group(1) + encoded + m.group(2), package)


async def post(gw: Gateway, agency: str, body: bytes) -> Any:
    """A package as a file upload (a stream with its length, as a client sends a file)."""
    return await gw.client.post("/api/v1/edxml/messages", data=io.BytesIO(body),
                                headers={**await gw.auth(agency), **XML})


def stored_files(settings: Settings) -> list[Path]:
    return [p for p in settings.blob_dir.rglob("*") if p.is_file() and p.parent.name != "tmp"]


async def test_a_large_file_travels_whole_and_is_stored_once(gateway: Gateway) -> None:
    data = os.urandom(5 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    body = big_package(HUE, PROVINCE, data)
    response = await post(gateway, HUE, body)
    assert response.status == 202, await response.text()
    message_id = (await response.json())["id"]
    await gateway.wait_state(message_id, PROVINCE, "delivered")
    # The message carries a claim check, not the bytes; the file is in the store once.
    row = await gateway.store.message(message_id)
    attachment = orjson.loads(row.envelope)["body"]["attachments"][0]
    assert (attachment["size"], attachment["sha256"], attachment.get("content")) == (
        len(data), digest, None)
    assert len(row.envelope) < 10_000
    assert [p.name for p in stored_files(gateway.settings)] == [digest]
    # A JSON system downloads the file itself.
    auth = await gateway.auth(PROVINCE)
    got = await gateway.client.get(f"/api/v1/messages/{message_id}/attachments/0", headers=auth)
    assert got.status == 200 and got.headers["Content-Type"] == "application/pdf"
    assert hashlib.sha256(await got.read()).hexdigest() == digest
    assert "filename*=UTF-8''B%E1%BA%A3n" in got.headers["Content-Disposition"]
    missing = await gateway.client.get(f"/api/v1/messages/{message_id}/attachments/1",
                                       headers=auth)
    assert missing.status == 404
    assert (await missing.json())["errors"][0]["pointer"] == "path:n"
    stranger = await gateway.client.get(f"/api/v1/messages/{message_id}/attachments/0",
                                        headers=await gateway.auth(PHONG_DIEN))
    assert stranger.status == 403
    # A document system fetches the package with the file in it, not a reference.
    fetched = await gateway.client.get(f"/api/v1/edxml/messages/{message_id}", headers=auth)
    assert fetched.status == 200
    back = decode_edxml(await fetched.read())
    assert [(a.size, a.sha256) for a in back.body.attachments] == [(len(data), digest)]
    # The same package again is the same message; the same file is still stored once.
    again = await post(gateway, HUE, body)
    assert again.status == 202 and (await again.json())["id"] == message_id
    assert len(stored_files(gateway.settings)) == 1 and await count(gateway) == 1


async def test_the_same_document_id_with_another_file_is_a_conflict(gateway: Gateway) -> None:
    document_id = uuid.uuid4()
    first = await post(gateway, HUE, big_package(HUE, PROVINCE, os.urandom(2_000_000),
                                                 document_id=document_id))
    assert first.status == 202, await first.text()
    other = await post(gateway, HUE, big_package(HUE, PROVINCE, os.urandom(2_000_000),
                                                 document_id=document_id))
    assert other.status == 409, await other.text()
    assert await count(gateway) == 1
    assert len(stored_files(gateway.settings)) == 1  # the refused one's file was removed


async def test_a_refused_large_package_leaves_nothing(gateway: Gateway) -> None:
    # From another agency: 403, and neither a message nor a file stays.
    response = await post(gateway, HUE, big_package(PROVINCE, PHONG_DIEN, os.urandom(3_000_000)))
    assert response.status == 403
    assert (await response.json())["errors"][0]["pointer"].endswith("/From/OrganId")
    # Not well-formed halfway through the file: 400 naming the line.
    broken = big_package(HUE, PROVINCE, os.urandom(3_000_000)).replace(b"</edXML:edXML>", b"")
    bad = await post(gateway, HUE, broken)
    assert bad.status == 400 and "line" in (await bad.json())["detail"]
    assert await count(gateway) == 0
    assert stored_files(gateway.settings) == []
    assert list((gateway.settings.blob_dir / "tmp").iterdir()) == []


async def test_a_package_over_the_limit_is_refused(
    settings: Settings, sample_directory: Directory, aiohttp_client: Any
) -> None:
    small = settings.with_(max_package_bytes=2_000_000)
    gw = Gateway(await aiohttp_client(build_app(small, sample_directory, broker=False)), small,
                 sample_directory, PushEndpoint(), {})
    response = await post(gw, HUE, big_package(HUE, PROVINCE, os.urandom(2_000_000)))
    assert response.status == 413
    assert "too large" in (await response.json())["detail"]
    assert await count(gw) == 0 and stored_files(small) == []


async def test_a_json_claim_check_to_a_file_it_did_not_bring_is_refused(
    gateway: Gateway,
) -> None:
    """The store is shared and addressed by digest: naming a digest must not be a way to
    attach (and then download) somebody else's file, or a file that is not there."""
    data = os.urandom(2_000_000)
    assert (await post(gateway, HUE, big_package(HUE, PROVINCE, data))).status == 202
    envelope = document(PHONG_DIEN, [{"agency": PHONG_DIEN}]) | {"body": {
        **document(PHONG_DIEN, [])["body"],
        "attachments": [{"name": "x.pdf", "media_type": "application/pdf", "size": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()}],
    }}
    envelope["header"]["to"] = [{"agency": PROVINCE}]
    response = await gateway.send(PHONG_DIEN, envelope)
    assert response.status == 422
    assert (await response.json())["errors"][0]["pointer"] == "/body/attachments/0/content"
    assert await count(gateway) == 1


async def test_an_edxml_agency_gets_the_file_pushed_in_its_package(
    settings: Settings, sample_directory: Directory, aiohttp_client: Any, aiohttp_server: Any,
) -> None:
    endpoint = PushEndpoint(max_size=64 * 1024**2)
    gw = await edxml_push_gateway(settings, sample_directory, endpoint, aiohttp_client,
                                  aiohttp_server)
    data = os.urandom(4 * 1024 * 1024)
    response = await post(gw, HUE, big_package(HUE, PUSH_AGENCY, data))
    assert response.status == 202, await response.text()
    message_id = (await response.json())["id"]
    await gw.wait_state(message_id, PUSH_AGENCY, "delivered")
    pushed = decode_edxml(endpoint.effects[message_id])
    assert [(a.size, a.sha256) for a in pushed.body.attachments] == [
        (len(data), hashlib.sha256(data).hexdigest())]
    assert endpoint.headers[message_id]["Content-Type"] == "application/xml"


async def test_a_push_whose_stored_file_is_gone_fails_with_the_reason(
    make_gateway: Any, sample_directory: Directory
) -> None:
    """A file lost from the store (a restore without the blob folder) is a permanent failure
    naming the file, found before the first byte goes out, not a half-sent package."""
    directory = speaking_edxml(sample_directory, PUSH_AGENCY)
    first = await make_gateway(directory=directory, workers=False)
    data = os.urandom(2_000_000)
    response = await post(first, HUE, big_package(HUE, PUSH_AGENCY, data))
    assert response.status == 202, await response.text()
    message_id = (await response.json())["id"]
    [stored] = stored_files(first.settings)
    stored.unlink()
    later = await make_gateway(directory=directory)
    await later.wait_state(message_id, PUSH_AGENCY, "failed")
    row = await later.store.message(message_id)
    [recipient] = [r for r in row.recipients if r.agency == PUSH_AGENCY]
    assert recipient.last_error is not None and "missing from the blob store" in (
        recipient.last_error)
    assert hashlib.sha256(data).hexdigest() in recipient.last_error


async def test_blobs_gc_removes_only_the_files_no_message_names(gateway: Gateway) -> None:
    data = os.urandom(2_000_000)
    response = await post(gateway, HUE, big_package(HUE, PROVINCE, data))
    assert response.status == 202, await response.text()
    kept = hashlib.sha256(data).hexdigest()
    blobs = BlobStore(gateway.settings.blob_dir)
    orphan = blobs.put(os.urandom(1000))  # as a crash between store and accept would leave
    young = blobs.put(os.urandom(1000))  # an upload in progress: inside the grace period
    uploaded = (await (await upload(gateway, HUE, os.urandom(500))).json())["sha256"]
    two_hours_ago = time.time() - 7200
    for digest in (kept, orphan, uploaded):  # the upload: not named yet, but still nameable
        os.utime(blobs.path(digest), (two_hours_ago, two_hours_ago))
    code, out, err = await lienthong(gateway.settings, "blobs", "gc", "--dry-run")
    assert code == 0, err
    assert out.startswith("would remove 1 unreferenced files (1000 bytes); kept 2 ")
    assert blobs.exists(orphan)
    code, out, err = await lienthong(gateway.settings, "blobs", "gc", "--older-than", "1h")
    assert code == 0, err
    assert out.startswith("removed 1 unreferenced files (1000 bytes); kept 2 ")
    assert out.rstrip().endswith("0 expired uploads forgotten")
    assert {d for d in (kept, orphan, young, uploaded) if blobs.exists(d)} == {
        kept, young, uploaded}
    # A day later the upload can no longer be named (refused), and its file goes.
    async with gateway.store.write() as conn:
        await conn.execute(uploads.update().values(
            uploaded_at=datetime.now(UTC) - UPLOAD_VALID - timedelta(minutes=1)))
    late = await gateway.send(HUE, naming(HUE, PROVINCE, 500, uploaded))
    assert late.status == 422
    code, out, err = await lienthong(gateway.settings, "blobs", "gc")
    assert code == 0, err
    assert out.startswith("removed 1 unreferenced files (500 bytes); kept 1 ")
    assert out.rstrip().endswith("1 expired uploads forgotten")
    assert not blobs.exists(uploaded)
    bad = await lienthong(gateway.settings, "blobs", "gc", "--older-than", "soon")
    assert bad[0] == 2 and "--older-than" in bad[2]


async def upload(gw: Gateway, agency: str, data: bytes, **headers: str) -> Any:
    return await gw.client.post("/api/v1/attachments", data=io.BytesIO(data),
                                headers={**await gw.auth(agency), **headers})


def naming(sender: str, to: str, size: int, digest: str) -> dict[str, Any]:
    """A JSON document whose one file is named by a claim check (no content)."""
    envelope = document(sender, [{"agency": to}])
    envelope["body"]["attachments"] = [{"name": "Báo cáo.pdf", "media_type": "application/pdf",
                                        "size": size, "sha256": digest}]
    return envelope


async def test_a_json_message_names_a_file_its_agency_uploaded(gateway: Gateway) -> None:
    data = os.urandom(3_000_000)
    digest = hashlib.sha256(data).hexdigest()
    response = await upload(gateway, HUE, data, **{"X-Content-SHA256": digest.upper()})
    assert response.status == 201, await response.text()
    answer = await response.json()
    assert (answer["sha256"], answer["size"]) == (digest, len(data))
    sent = await gateway.send(HUE, naming(HUE, PROVINCE, len(data), digest))
    assert sent.status == 202, await sent.text()
    message_id = (await sent.json())["id"]
    await gateway.wait_state(message_id, PROVINCE, "delivered")
    got = await gateway.client.get(f"/api/v1/messages/{message_id}/attachments/0",
                                   headers=await gateway.auth(PROVINCE))
    assert got.status == 200 and hashlib.sha256(await got.read()).hexdigest() == digest
    # Another agency that learnt the digest cannot name the file: it did not upload it.
    stranger = await gateway.send(PHONG_DIEN, naming(PHONG_DIEN, PROVINCE, len(data), digest))
    assert stranger.status == 422
    problem = await stranger.json()
    assert problem["errors"][0]["pointer"] == "/body/attachments/0/content"
    assert "POST /api/v1/attachments" in problem["detail"]
    # The uploader naming it with another size is told the size it uploaded.
    wrong = await gateway.send(HUE, naming(HUE, PROVINCE, 42, digest))
    assert wrong.status == 422
    assert (await wrong.json())["errors"] == [
        {"pointer": "/body/attachments/0/size", "detail": f"{len(data)}, as uploaded"}]
    assert await count(gateway) == 1


async def test_an_upload_is_checked_before_it_is_kept(make_gateway: GatewayFactory,
                                                      settings: Settings) -> None:
    gw = await make_gateway(settings=settings.with_(max_package_bytes=2_000_000))
    data = os.urandom(1_000_000)
    cut = await upload(gw, HUE, data[:-1], **{
        "X-Content-SHA256": hashlib.sha256(data).hexdigest()})
    assert cut.status == 422
    assert (await cut.json())["errors"][0]["pointer"] == "header:X-Content-SHA256"
    bad = await upload(gw, HUE, data, **{"X-Content-SHA256": "not-a-digest"})
    assert bad.status == 400
    too_large = await upload(gw, HUE, os.urandom(2_000_001))
    assert too_large.status == 413
    anonymous = await gw.client.post("/api/v1/attachments", data=b"x")
    assert anonymous.status == 401
    assert stored_files(gw.settings) == []
    assert [p.name for p in (gw.settings.blob_dir / "tmp").iterdir()] == []


async def test_a_portal_dossier_names_an_uploaded_scan(make_gateway: GatewayFactory,
                                                       settings: Settings) -> None:
    """The portal's TaiLieuNop without DuLieu: MaBam and KichThuoc of a file uploaded first
    (a scanned application of several megabytes)."""
    from tests.integration.test_one_stop_shop import COMMUNE as PORTAL_COMMUNE
    from tests.integration.test_one_stop_shop import dossier as portal_dossier
    from tests.integration.test_one_stop_shop import post as post_dossier

    gw = await make_gateway()
    scan = os.urandom(2_500_000)
    digest = hashlib.sha256(scan).hexdigest()
    assert (await upload(gw, PORTAL_COMMUNE, scan)).status == 201
    files = [{"TenTepDinhKem": "Don de nghi.pdf", "MaBam": digest, "KichThuoc": len(scan)}]
    response = await post_dossier(gw, PORTAL_COMMUNE, portal_dossier(TaiLieuNop=files))
    assert response.status == 202, await response.text()
    row = await gw.store.message((await response.json())["id"])
    [attachment] = orjson.loads(row.envelope)["body"]["attachments"]
    assert (attachment["sha256"], attachment["size"], attachment.get("content")) == (
        digest, len(scan), None)
