"""The one-stop-shop adapter through the real gateway (broker, SQLite and PostgreSQL), and the
portal transport against the real portal peer (deploy/peers/portal.py): dossiers in as portal
JSON, out as portal JSON, progress pushed to the portal once whatever fails on the way, and no
personal data in the logs."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import sqlalchemy as sa
import structlog

from adapters.one_stop_shop import VIETNAM as VN
from adapters.one_stop_shop import (
    PortalTransport,
    decode_portal,
    portal_date,
    portal_signature,
)
from deploy.peers.portal import PROGRESS_PATH, PortalPeer
from gateway.codecs import decode_obj, encode
from gateway.delivery import Delivery
from gateway.directory import DeliveryMode, Directory
from gateway.envelope import AgencyAddress
from gateway.errors import PermanentFailure, RetryLater
from gateway.service import build_app
from gateway.settings import Settings
from gateway.store.tables import messages
from tests.conftest import HUE, PHONG_DIEN, PROVINCE, Gateway, document
from tests.peers.push_endpoint import PushEndpoint

REPO = Path(__file__).resolve().parents[2]
PORTAL = "000.20.01.H57"  # Cổng dịch vụ công tỉnh Thừa Thiên Huế (mode portal)
COMMUNE = "000.21.35.H57"  # UBND thị trấn Phong Điền: its one-stop-shop receives the dossier
SECRET = "portal-shared-secret-for-tests"
# The applicant's personal data: it must never reach a log line.
CCCD = "046095001234"
PHONE = "0905123456"
EMAIL = "hoa.nguyen@example.vn"
NAME = "Nguyễn Thị Hoa"
ADDRESS = "Thôn Vĩnh Nguyên, thị trấn Phong Điền"

pytestmark = pytest.mark.integration


def dossier(seq: str = "0042", **changes: Any) -> dict[str, Any]:
    """A dossier received today at the commune's one-stop-shop, on its way to the district."""
    now = datetime.now(VN).replace(microsecond=0)
    value: dict[str, Any] = {
        "MaHoSo": f"{COMMUNE}-{now:%y%m%d}-{seq}",
        "MaTTHC": "1.001193.000.00.00.H57",
        "TenTTHC": "Đăng ký khai sinh kết hợp đăng ký thường trú",
        "ChuHoSo": NAME,
        "SoGiayToChuHoSo": CCCD,
        "SoDienThoaiChuHoSo": PHONE,
        "EmailChuHoSo": EMAIL,
        "DiaChiChuHoSo": ADDRESS,
        "NgayTiepNhan": portal_date(now - timedelta(hours=1)),
        "NgayHenTra": portal_date(now + timedelta(days=30)),
        "TrangThaiHoSo": 2,
        "QuyTrinhXuLy": [
            {"MaDonVi": COMMUNE, "TenBuoc": "Tiếp nhận, kiểm tra", "SoNgayXuLy": 1},
            {"MaDonVi": PHONG_DIEN, "TenBuoc": "Đăng ký thường trú", "SoNgayXuLy": 5},
        ],
        "BuocHienTai": 2,
        "TaiLieuNop": [{"TenTepDinhKem": "To khai.pdf",
                        "DuLieu": base64.b64encode(b"%PDF-1.7 to khai").decode()}],
        "ThongTinKhac": {"NoiSinh": "Bệnh viện Phong Điền"},
    }
    return {**value, **changes}


def with_portal(directory: Directory, endpoint: str) -> Directory:
    agencies = dict(directory.agencies)
    agencies[PORTAL] = dataclasses.replace(agencies[PORTAL], endpoint=endpoint)
    return Directory(directory.levels, agencies, directory.children)


@dataclasses.dataclass
class Setup:
    gw: Gateway
    portal: PortalPeer


@pytest.fixture
def portal_peer() -> PortalPeer:
    return PortalPeer(SECRET, slow_seconds=1.5)


@pytest.fixture
async def start(
    settings: Settings, sample_directory: Directory, portal_peer: PortalPeer,
    aiohttp_client: Any, aiohttp_server: Any,
) -> Any:
    """Start the gateway with the portal agency's endpoint on the portal peer."""

    async def run(**changes: Any) -> Setup:
        server = await aiohttp_server(portal_peer.app())
        directory = with_portal(sample_directory, str(server.make_url(PROGRESS_PATH)))
        app_settings = settings.with_(**{"portal_secret": SECRET, **changes})
        client = await aiohttp_client(build_app(app_settings, directory))
        return Setup(Gateway(client, app_settings, directory, PushEndpoint(), {}), portal_peer)

    return run


async def post(gw: Gateway, agency: str, body: dict[str, Any] | bytes, **headers: str) -> Any:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await gw.client.post("/api/v1/motcua/dossiers", data=data, headers={
        **await gw.auth(agency), "Content-Type": "application/json", **headers})


async def count(gw: Gateway) -> int:
    async with gw.store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(messages))
                    ).scalar_one())


async def view(gw: Gateway, agency: str, message_id: str) -> dict[str, Any]:
    response = await gw.client.get(f"/api/v1/messages/{message_id}",
                                   headers=await gw.auth(agency))
    result: dict[str, Any] = await response.json()
    return result


# -- through the gateway ------------------------------------------------------------------------
async def test_a_communes_dossier_reaches_the_district_and_reads_back(start: Any) -> None:
    gw = (await start()).gw
    sent = dossier()
    response = await post(gw, COMMUNE, sent, **{"Idempotency-Key": "HS-0042"})
    assert response.status == 202, await response.text()
    accepted = await response.json()
    message_id = accepted["id"]
    assert accepted["recipients"] == [PHONG_DIEN]  # the agency of the current step
    assert response.headers["Location"] == f"/api/v1/messages/{message_id}"
    await gw.wait_state(message_id, PHONG_DIEN, "delivered")

    inbox = await (await gw.client.get("/api/v1/inbox", headers=await gw.auth(PHONG_DIEN))).json()
    [item] = inbox["items"]
    assert item["envelope"]["kind"] == "dossier"
    assert item["envelope"]["body"]["code"] == sent["MaHoSo"]
    assert item["envelope"]["body"]["applicant"]["identity"] == CCCD

    for reader in (PHONG_DIEN, COMMUNE):  # a recipient and the sender
        fetched = await gw.client.get(f"/api/v1/motcua/dossiers/{message_id}",
                                      headers=await gw.auth(reader))
        assert fetched.status == 200 and fetched.content_type == "application/json"
        portal = await fetched.json()
        assert (portal["MaThongDiep"], portal["MaDonViGui"], portal["MaDonViNhan"]) == (
            message_id, COMMUNE, PHONG_DIEN)
        assert portal["SoGiayToChuHoSo"] == CCCD and portal["BuocHienTai"] == 2
        back, original = decode_portal(orjson.dumps(portal)), decode_portal(
            orjson.dumps(sent), sender=COMMUNE)
        assert back.body == original.body  # equal in meaning, field by field
        assert back.header.to == original.header.to == [AgencyAddress(agency=PHONG_DIEN)]
    stranger = await gw.client.get(f"/api/v1/motcua/dossiers/{message_id}",
                                   headers=await gw.auth(HUE))
    assert stranger.status == 403

    again = await post(gw, COMMUNE, sent, **{"Idempotency-Key": "HS-0042"})
    assert again.status == 202 and again.headers.get("Idempotent-Replayed") == "true"
    assert (await again.json())["id"] == message_id
    assert await count(gw) == 1

    # A message that is not a dossier has no portal JSON.
    doc = await gw.send(PROVINCE, document(PROVINCE, [{"agency": PHONG_DIEN}]))
    doc_id = (await doc.json())["id"]
    missing = await gw.client.get(f"/api/v1/motcua/dossiers/{doc_id}",
                                  headers=await gw.auth(PHONG_DIEN))
    assert missing.status == 404
    assert (await missing.json())["errors"] == [{"pointer": "path:id", "detail": "not a dossier"}]


async def test_bad_dossiers_name_the_field_and_store_nothing(start: Any) -> None:
    gw = (await start()).gw
    cases: list[tuple[str, dict[str, Any] | bytes, int, str]] = [
        (COMMUNE, dossier(NgayHenTra="2025-03-21"), 422, "/NgayHenTra"),
        (COMMUNE, dossier(MaLinhVuc="Hộ tịch"), 422, "/MaLinhVuc"),
        (COMMUNE, dossier(SoDienThoaiChuHoSo="gọi sau"), 422, "/SoDienThoaiChuHoSo"),
        (COMMUNE, b'{"MaHoSo": ', 400, ""),
        # The ingress's own rules, said in the portal's names:
        (COMMUNE, dossier(MaDonViGui=PHONG_DIEN), 403, "/MaDonViGui"),
        (COMMUNE, dossier(QuyTrinhXuLy=[{"MaDonVi": COMMUNE, "SoNgayXuLy": 1},
                                        {"MaDonVi": "000.99.35.H57", "SoNgayXuLy": 5}]),
         422, "/QuyTrinhXuLy/1/MaDonVi"),
        (COMMUNE, dossier(MaDonViNhan="000.00.99.H57"), 422, "/MaDonViNhan"),
        (COMMUNE, dossier(MaDonViNhan=[PHONG_DIEN, PORTAL]), 422, "/MaDonViNhan"),
        # Only the receiving agency hands a new dossier over first (the MaHoSo says who).
        (PHONG_DIEN, dossier(BuocHienTai=1), 403, "/MaHoSo"),
    ]
    for agency, body, status, pointer in cases:
        response = await post(gw, agency, body)
        problem = await response.json()
        assert response.status == status, (pointer, problem)
        assert response.content_type == "application/problem+json"
        assert pointer in [e["pointer"] for e in problem["errors"]], (pointer, problem)
    unauthenticated = await gw.client.post("/api/v1/motcua/dossiers", data=orjson.dumps(dossier()))
    assert unauthenticated.status == 401
    assert await count(gw) == 0


async def test_progress_reaches_the_portal_once_through_failures(start: Any) -> None:
    setup = await start(max_attempts=5)
    gw, portal = setup.gw, setup.portal
    # Down, connection dropped, then applied but answered after the gateway's timeout (1 s):
    # the gateway retries each time, and the portal deduplicates the last repeat.
    portal.fail_next(503, "reset", "slow")
    sent = dossier(MaDonViNhan=PORTAL, TrangThaiHoSo=4, GhiChu="Đang thẩm định hồ sơ")
    response = await post(gw, COMMUNE, sent)
    assert response.status == 202, await response.text()
    message_id = (await response.json())["id"]
    await gw.wait_state(message_id, PORTAL, "delivered", timeout=30)

    assert portal.requests[message_id] == 4
    assert portal.repeats == 1  # the slow answer's effect, then its retry absorbed
    [update] = portal.history[sent["MaHoSo"]]
    assert update["MaThongDiep"] == message_id
    assert (update["TrangThaiHoSo"], update["NoiDungXuLy"]) == (4, "Đang thẩm định hồ sơ")
    assert (update["DonViXuLy"], update["BuocHienTai"]) == (PHONG_DIEN, 2)
    assert update["NgayHenTra"] == sent["NgayHenTra"]
    assert CCCD not in orjson.dumps(update).decode()
    [recipient] = (await view(gw, COMMUNE, message_id))["recipients"]
    assert (recipient["agency"], recipient["state"], recipient["attempts"]) == (
        PORTAL, "delivered", 4)


async def test_a_document_to_the_portal_is_dead_lettered_with_a_reason(start: Any) -> None:
    setup = await start()
    response = await setup.gw.send(PROVINCE, document(PROVINCE, [{"agency": PORTAL}]))
    message_id = (await response.json())["id"]
    await setup.gw.wait_state(message_id, PORTAL, "failed")
    [recipient] = (await view(setup.gw, PROVINCE, message_id))["recipients"]
    assert "dossier (hồ sơ) progress only" in recipient["last_error"]
    assert recipient["attempts"] == 1
    assert not setup.portal.requests  # refused before any call


async def test_a_wrong_secret_is_a_permanent_failure(start: Any) -> None:
    setup = await start(portal_secret="not-" + SECRET)  # ours is not the portal's
    response = await post(setup.gw, COMMUNE, dossier(MaDonViNhan=PORTAL))
    message_id = (await response.json())["id"]
    await setup.gw.wait_state(message_id, PORTAL, "failed")
    [recipient] = (await view(setup.gw, COMMUNE, message_id))["recipients"]
    assert "HTTP 401" in recipient["last_error"]
    assert "LIENTHONG_PORTAL_SECRET" in recipient["last_error"]
    assert setup.portal.requests[message_id] == 1  # never retried
    assert setup.portal.refusals == [(401, "bad signature")]
    assert not setup.portal.history


async def test_personal_data_never_reaches_the_logs(
    start: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    # Everything at DEBUG, with the AMQP libraries held at WARNING as gateway.logging.configure
    # holds them whatever LIENTHONG_LOG_LEVEL says: at DEBUG aiormq dumps whole frames, message
    # bodies included. structlog events are captured raw, before redaction: the gateway must
    # not hand personal data to a logger at all.
    caplog.set_level(logging.DEBUG)
    for library in ("aio_pika", "aiormq"):
        caplog.set_level(logging.WARNING, logger=library)
    with structlog.testing.capture_logs() as events:
        setup = await start()
        gw = setup.gw
        good = await post(gw, COMMUNE, dossier(MaDonViNhan=PORTAL))
        message_id = (await good.json())["id"]
        await gw.wait_state(message_id, PORTAL, "delivered")
        await gw.client.get(f"/api/v1/motcua/dossiers/{message_id}",
                            headers=await gw.auth(COMMUNE))
        bad = await post(gw, COMMUNE, dossier(seq="0043", SoDienThoaiChuHoSo=PHONE + "x",
                                              EmailChuHoSo="hoa at example"))
        assert bad.status == 422
        forged = await post(gw, HUE, dossier(seq="0044", MaDonViGui=COMMUNE))
        assert forged.status == 403
    logged = repr(events) + caplog.text
    assert events, "the gateway logged nothing: the capture is not working"
    assert any(e.get("message_id") == message_id for e in events)
    for personal in (CCCD, PHONE, EMAIL, "hoa at example", NAME, ADDRESS):
        assert personal not in logged, personal


# -- the transport against the real portal peer, without the gateway ---------------------------
@pytest.fixture
async def peer_url(portal_peer: PortalPeer, aiohttp_server: Any) -> str:
    server = await aiohttp_server(portal_peer.app())
    return str(server.make_url(PROGRESS_PATH))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as value:
        yield value


def delivery_of(envelope: dict[str, Any], message_id: str | None = None) -> Delivery:
    mid = message_id or str(uuid.uuid4())
    value = decode_obj(envelope)
    header = value.header.model_copy(update={"id": uuid.UUID(mid),
                                             "created": datetime.now(VN).replace(microsecond=0)})
    return Delivery(mid, COMMUNE, 1, encode(value.model_copy(update={"header": header})))


def a_dossier_envelope() -> dict[str, Any]:
    return orjson.loads(encode(decode_portal(orjson.dumps(dossier(MaDonViNhan=PORTAL)),
                                             sender=COMMUNE)))


def portal_agency(sample_directory: Directory, url: str) -> Any:
    return with_portal(sample_directory, url).agencies[PORTAL]


async def test_transport_maps_every_answer_and_applies_once(
    portal_peer: PortalPeer, peer_url: str, session: aiohttp.ClientSession,
    sample_directory: Directory,
) -> None:
    agency = portal_agency(sample_directory, peer_url)
    assert agency.mode is DeliveryMode.PORTAL
    transport = PortalTransport(session, secret=SECRET, timeout=0.5)
    portal_peer.slow_seconds = 1.0
    delivery = delivery_of(a_dossier_envelope())
    portal_peer.fail_next(503, "reset", 429, "slow")
    for _ in range(4):
        with pytest.raises(RetryLater):
            await transport.send(agency, delivery)
    await transport.send(agency, delivery)  # the repeat after "slow": absorbed, not reapplied
    assert portal_peer.requests[delivery.message_id] == 5
    assert len(portal_peer.applied) == 1 and portal_peer.repeats == 1

    other = delivery_of(a_dossier_envelope())
    portal_peer.fail_next("refuse")
    with pytest.raises(PermanentFailure, match="error_code -1: scripted refusal"):
        await transport.send(agency, other)
    portal_peer.fail_next(400)
    with pytest.raises(PermanentFailure, match="HTTP 400: scripted failure"):
        await transport.send(agency, other)
    # The same message id with other content is a conflict at the portal, never a second
    # update.
    changed = dict(a_dossier_envelope(), body={**a_dossier_envelope()["body"], "status": 9})
    with pytest.raises(PermanentFailure, match="HTTP 409"):
        await transport.send(agency, delivery_of(changed, delivery.message_id))
    assert sum(len(h) for h in portal_peer.history.values()) == 2  # delivery, then other


async def test_transport_refusals_that_never_reach_the_portal(
    portal_peer: PortalPeer, peer_url: str, session: aiohttp.ClientSession,
    sample_directory: Directory,
) -> None:
    agency = portal_agency(sample_directory, peer_url)
    doc = orjson.loads(encode(decode_obj(document(COMMUNE, [{"agency": PORTAL}]))))
    with pytest.raises(PermanentFailure, match="dossier"):
        await PortalTransport(session, secret=SECRET, timeout=1).send(agency, delivery_of(doc))
    with pytest.raises(PermanentFailure, match="LIENTHONG_PORTAL_SECRET is not set"):
        await PortalTransport(session, secret="", timeout=1).send(
            agency, delivery_of(a_dossier_envelope()))
    assert not portal_peer.requests


async def _signed(session: aiohttp.ClientSession, url: str, body: bytes, *,
                  secret: str = SECRET, stamp: int | None = None) -> tuple[int, dict[str, Any]]:
    timestamp = str(stamp if stamp is not None else int(time.time()))
    headers = {"Content-Type": "application/json", "X-Lienthong-Timestamp": timestamp,
               "X-Lienthong-Signature": portal_signature(secret, timestamp, body)}
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, await response.json()


async def test_the_portal_peer_checks_what_it_is_sent(
    portal_peer: PortalPeer, peer_url: str, session: aiohttp.ClientSession,
) -> None:
    good = {"MaThongDiep": str(uuid.uuid4()), "MaHoSo": f"{COMMUNE}-250314-0042",
            "TrangThaiHoSo": 4, "NgayCapNhat": "20250314091500", "NoiDungXuLy": "Đang xử lý",
            "DonViXuLy": PHONG_DIEN}
    for broken, reason in [
        ({**good, "TrangThaiHoSo": 11}, "TrangThaiHoSo"),
        ({**good, "MaHoSo": "HS-1"}, "MaHoSo"),
        ({**good, "NgayCapNhat": "2025-03-14"}, "NgayCapNhat"),
        ({**good, "MaThongDiep": "x"}, "MaThongDiep"),
        ({k: v for k, v in good.items() if k != "NoiDungXuLy"}, "NoiDungXuLy"),
    ]:
        status, answer = await _signed(session, peer_url, orjson.dumps(broken))
        assert (status, answer["error_code"]) == (400, -1)
        assert answer["message"].startswith(reason)
    body = orjson.dumps(good)
    assert (await _signed(session, peer_url, body, secret="other"))[0] == 401
    assert (await _signed(session, peer_url, body, stamp=int(time.time()) - 3600))[0] == 401
    assert not portal_peer.history
    assert await _signed(session, peer_url, body) == (
        200, {"error_code": 0, "message": "Cập nhật tiến độ thành công", "duplicate": False})
    status, answer = await _signed(session, peer_url, body)
    assert (status, answer["duplicate"]) == (200, True)
    history_url = peer_url.replace(PROGRESS_PATH, f"/api/TienDoHoSo/{good['MaHoSo']}")
    async with session.get(history_url) as unsigned:
        assert unsigned.status == 401
    stamp = str(int(time.time()))
    async with session.get(history_url, headers={
        "X-Lienthong-Timestamp": stamp,
        "X-Lienthong-Signature": portal_signature(SECRET, stamp, b"")}) as signed:
        assert (await signed.json())["TienDo"] == [good]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_the_portal_peer_runs_as_a_module(session: aiohttp.ClientSession) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "deploy.peers.portal", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "PORTAL_SECRET"}
    refused = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=env, stderr=asyncio.subprocess.PIPE)
    _, err = await refused.communicate()
    assert refused.returncode == 2 and b"PORTAL_SECRET" in err
    process = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env={**env, "PORTAL_SECRET": SECRET})
    try:
        url = f"http://127.0.0.1:{port}{PROGRESS_PATH}"
        update = {"MaThongDiep": str(uuid.uuid4()), "MaHoSo": f"{COMMUNE}-250314-0042",
                  "TrangThaiHoSo": 9, "NgayCapNhat": "20250314091500",
                  "NoiDungXuLy": "Đã xử lý xong", "DonViXuLy": PHONG_DIEN}
        deadline = time.monotonic() + 15
        while True:
            try:
                status, answer = await _signed(session, url, orjson.dumps(update))
                break
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        assert (status, answer["error_code"]) == (200, 0)
    finally:
        process.terminate()
        await process.wait()
