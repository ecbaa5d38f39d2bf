"""Digital signatures (chữ ký số) through the whole gateway: edXML packages checked at ingress
against the sender's policy (refused with the reason and nothing stored, or accepted with the
outcome in the message's record), edXML the gateway emits signed with its own key, the edXML
inbox, and the configuration read at start-up (the committed demo PKI included).

The PKI is made at test time (:mod:`tests.pki`); the directory is the sample one with
certificates and policies set on a few agencies by ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization

from gateway.api.keys import SIGNATURES
from gateway.codecs import decode, decode_edxml, encode_edxml
from gateway.delivery import wire_body
from gateway.directory import Agency, Directory, WireFormat, load_directory, with_endpoint
from gateway.envelope import TraceEntry
from gateway.errors import ConfigError, GatewayError
from gateway.service import build_app
from gateway.settings import DEFAULT_DIRECTORY, Settings
from gateway.signatures import (
    SignaturePolicy,
    SignatureReason,
    SignatureSettings,
    TrustStore,
    sign_package,
    verify_package,
)
from gateway.signing import (
    SIGNER,
    GatewaySigner,
    check_signature,
    load_signature_settings,
    load_signer,
    trace_entry,
)
from gateway.store.tables import audit_events, messages, outbox
from tests.conftest import HUE, PHONG_DIEN, PROVINCE, PUSH_AGENCY, Gateway, document
from tests.peers.push_endpoint import PushEndpoint
from tests.pki import Issued, make_ca, make_signer

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "fixtures" / "edxml" / "samples"
DEMO_PKI = ROOT / "deploy" / "pki"
XML = {"Content-Type": "application/xml"}
SIGNATURE_AT = "/edXML/edXMLEnvelope/edXMLHeader/Signature"
VENDOR = "000.00.00.A80"  # the sender of the vendor sample edoc_new.edxml
VENDOR_PEER = "000.28.22.H17"  # its recipient
GATEWAY = "gateway"  # the name the gateway's certificate is registered under to check pushes
R = SignatureReason


# -- the PKI, the directory and the gateway ---------------------------------------------------
@dataclass(frozen=True)
class Pki:
    root: Issued
    hue: Issued  # registered for HUE (policy require)
    hue_expired: Issued  # registered for HUE, expired
    colleague: Issued  # registered for PHONG_DIEN only
    gateway: Issued  # the gateway's own
    files: dict[str, Path]

    def verify_ours(self, package: bytes) -> R:
        """What a recipient that trusts the CA finds when it checks the gateway's signature."""
        return verify_package(
            package, sender=GATEWAY, policy=SignaturePolicy.REQUIRE,
            trust=TrustStore.from_pem(self.root.cert_pem),
            registered={GATEWAY: [self.gateway.cert_pem]}, now=datetime.now(UTC),
        ).reason


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    root = make_ca("Lienthong Test Root CA")
    now = datetime.now(UTC)
    issued = {
        "hue": make_signer("Nguyễn Văn Huế", root),
        "hue_expired": make_signer("Lê Hết Hạn", root, valid_from=now - timedelta(days=800),
                                   valid_to=now - timedelta(days=70)),
        "colleague": make_signer("Trần Phong Điền", root),
        "gateway": make_signer("Cổng liên thông (test)", root, org="Lienthong"),
    }
    files = {"ca": folder / "ca.pem", "gateway_key": folder / "gateway.key.pem"}
    files["ca"].write_bytes(root.cert_pem)
    files["gateway_key"].write_bytes(issued["gateway"].key_pem)
    for label, item in issued.items():
        files[label] = folder / f"{label}.pem"
        files[label].write_bytes(item.cert_pem)
    return Pki(root=root, files=files, **issued)


def signing_directory(sample: Directory, pki: Pki, push_url: str) -> Directory:
    """The sample directory, with: HUE ``require`` (its two certificates), PHONG_DIEN
    ``verify_if_present`` (the colleague's), the vendor sample's two agencies (the sender
    ``record_only``), and the push agency taking edXML at ``push_url``."""
    directory = with_endpoint(sample, PUSH_AGENCY, push_url)
    agencies = dict(directory.agencies)
    agencies[HUE] = dataclasses.replace(
        agencies[HUE], signature_policy=SignaturePolicy.REQUIRE,
        certificates=(str(pki.files["hue"]), str(pki.files["hue_expired"])),
    )
    agencies[PHONG_DIEN] = dataclasses.replace(
        agencies[PHONG_DIEN], signature_policy=SignaturePolicy.VERIFY_IF_PRESENT,
        certificates=(str(pki.files["colleague"]),),
    )
    agencies[PUSH_AGENCY] = dataclasses.replace(agencies[PUSH_AGENCY], format=WireFormat.EDXML)
    agencies[VENDOR] = Agency(VENDOR, "UBND xã Hòa Tiến (vendor sample)", "central", None,
                              signature_policy=SignaturePolicy.RECORD_ONLY)
    agencies[VENDOR_PEER] = Agency(VENDOR_PEER, "UBND xã Hòa Sơn (vendor sample)", "central",
                                   None)
    children = {**directory.children, VENDOR: (), VENDOR_PEER: ()}
    return Directory(directory.levels, agencies, children)


async def start(
    settings: Settings, directory_of: Any, aiohttp_client: Any, aiohttp_server: Any,
) -> Gateway:
    endpoint = PushEndpoint()
    server = await aiohttp_server(endpoint.app())
    directory = directory_of(str(server.make_url("/receive")))
    client = await aiohttp_client(build_app(settings, directory))
    return Gateway(client, settings, directory, endpoint, {})


@pytest.fixture
async def gw(
    settings: Settings, sample_directory: Directory, pki: Pki, aiohttp_client: Any,
    aiohttp_server: Any,
) -> Gateway:
    """The gateway trusting the test CA, signing with the test gateway key."""
    signed = settings.with_(
        signature_trust=str(pki.files["ca"]),
        signing_key=str(pki.files["gateway_key"]),
        signing_certificate=str(pki.files["gateway"]),
    )
    return await start(signed, lambda url: signing_directory(sample_directory, pki, url),
                       aiohttp_client, aiohttp_server)


# -- helpers ----------------------------------------------------------------------------------
def package(sender: str, to: str, subject: str = "Báo cáo tình hình mưa lũ") -> bytes:
    """A document package as a QLVB&ĐH system writes it, with a fresh DocumentId."""
    envelope = decode(orjson.dumps(document(sender, [{"agency": to}], subject)))
    header = envelope.header.model_copy(update={"id": uuid.uuid4()})
    return encode_edxml(envelope.model_copy(update={"header": header}))


def signed(by: Issued, body: bytes) -> bytes:
    return sign_package(body, key_pem=by.key_pem, cert_pem=by.cert_pem)


async def post(gw: Gateway, agency: str, body: bytes) -> Any:
    return await gw.client.post("/api/v1/edxml/messages", data=body,
                                headers={**await gw.auth(agency), **XML})


async def get_json(gw: Gateway, agency: str, path: str) -> Any:
    response = await gw.client.get(path, headers=await gw.auth(agency))
    assert response.status == 200, await response.text()
    return await response.json()


async def signature_event(gw: Gateway, agency: str, message_id: str) -> dict[str, Any]:
    """The ``signature_checked`` event of the message's trace (exactly one)."""
    trace = await get_json(gw, agency, f"/api/v1/messages/{message_id}/trace")
    [event] = [e for e in trace["events"] if e["event"] == "signature_checked"]
    detail: dict[str, Any] = event["detail"]
    return detail


async def rows(gw: Gateway, table: sa.Table) -> int:
    async with gw.store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))
                    ).scalar_one())


# -- ingress ----------------------------------------------------------------------------------
async def test_a_validly_signed_package_is_accepted_with_its_check_on_record(
    gw: Gateway, pki: Pki
) -> None:
    body = signed(pki.hue, package(HUE, PROVINCE))
    response = await post(gw, HUE, body)
    assert response.status == 202, await response.text()
    message_id = (await response.json())["id"]
    again = await post(gw, HUE, body)  # a resend gets the first answer, not a second check
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert (await again.json())["id"] == message_id

    outcome = await signature_event(gw, HUE, message_id)
    assert (outcome["reason"], outcome["valid"], outcome["accepted"]) == ("valid", True, True)
    assert (outcome["policy"], outcome["sender"]) == ("require", HUE)
    assert outcome["signer_serial"] == pki.hue.serial
    assert outcome["location"] == SIGNATURE_AT
    # The same outcome in the stored envelope's trace, for whoever reads the message.
    view = await get_json(gw, HUE, f"/api/v1/messages/{message_id}")
    [entry] = [t for t in view["envelope"]["header"]["trace"] if t["event"] == "edxml.signature"]
    assert json.loads(entry["detail"]) == outcome

    # The recipient finds it in its edXML inbox; the package it fetches is the gateway's,
    # signed with the gateway's key.
    await gw.wait_state(message_id, PROVINCE, "delivered")
    page = await get_json(gw, PROVINCE, "/api/v1/edxml/inbox")
    [item] = page["items"]
    assert (item["message_id"], item["sender"], item["kind"]) == (message_id, HUE, "document")
    assert item["links"] == {"edxml": f"/api/v1/edxml/messages/{message_id}",
                             "ack": f"/api/v1/inbox/{message_id}/ack"}
    fetched = await gw.client.get(item["links"]["edxml"], headers=await gw.auth(PROVINCE))
    assert fetched.status == 200 and fetched.content_type == "application/xml"
    body = await fetched.read()
    assert pki.verify_ours(body) is R.VALID
    assert str(decode_edxml(body).header.id) == message_id


async def test_refused_packages_say_why_and_store_nothing(gw: Gateway, pki: Pki) -> None:
    original = package(HUE, PROVINCE, "Về việc phân bổ kinh phí")
    good = signed(pki.hue, original)
    tampered = good.replace("phân bổ kinh phí".encode(), "thu hồi kinh phí".encode())
    assert tampered != good
    cases = [
        (tampered, "tampered"),
        (signed(pki.colleague, original), "unknown_signer"),  # registered for PHONG_DIEN only
        (signed(pki.hue_expired, original), "expired_certificate"),
        (original, "no_signature"),  # HUE's policy is require
    ]
    await gw.auth(HUE)  # the token's own audit event comes before the count
    audited = await rows(gw, audit_events)
    for body, reason in cases:
        response = await post(gw, HUE, body)
        assert response.status == 422, (reason, await response.text())
        problem = await response.json()
        assert problem["type"].endswith("/signature-refused"), problem
        assert problem["signature"] == {"reason": reason, "policy": "require",
                                        "present": reason != "no_signature"}
        assert reason in problem["detail"]
        assert problem["errors"][0]["pointer"] == SIGNATURE_AT
    assert (await rows(gw, messages), await rows(gw, outbox)) == (0, 0)
    assert await rows(gw, audit_events) == audited
    # Nothing was kept of the refusals: the well-signed package (same DocumentId) goes in.
    assert (await post(gw, HUE, good)).status == 202


async def test_lenient_policies_accept_and_record_what_they_found(gw: Gateway) -> None:
    # verify_if_present: an unsigned package passes, recorded as such.
    response = await post(gw, PHONG_DIEN, package(PHONG_DIEN, PROVINCE))
    assert response.status == 202, await response.text()
    outcome = await signature_event(gw, PHONG_DIEN, (await response.json())["id"])
    assert (outcome["reason"], outcome["present"], outcome["policy"]) == (
        "no_signature", False, "verify_if_present")

    # record_only: a real vendor package whose signature cannot be checked (truncated
    # certificate) is accepted, and what was found is on record.
    response = await post(gw, VENDOR, (SAMPLES / "edoc_new.edxml").read_bytes())
    assert response.status == 202, await response.text()
    outcome = await signature_event(gw, VENDOR, (await response.json())["id"])
    assert (outcome["reason"], outcome["present"], outcome["valid"], outcome["accepted"]) == (
        "unverifiable_vendor_signature", True, False, True)
    assert outcome["policy"] == "record_only"


async def test_an_edxml_push_is_signed_by_the_gateway(gw: Gateway, pki: Pki) -> None:
    response = await gw.send(PROVINCE, document(PROVINCE, [{"agency": PUSH_AGENCY}]))
    message_id = (await response.json())["id"]
    await gw.wait_state(message_id, PUSH_AGENCY, "delivered")
    assert gw.push.headers[message_id]["Content-Type"] == "application/xml"
    pushed = gw.push.effects[message_id]
    assert pki.verify_ours(pushed) is R.VALID
    assert str(decode_edxml(pushed).header.id) == message_id
    # Signed over every byte: the recipient would notice a change on the way.
    assert pki.verify_ours(pushed.replace(PROVINCE.encode(), HUE.encode(), 1)) is R.TAMPERED


# -- no signature configuration, and the inbox's paging ---------------------------------------
async def test_without_signature_configuration_nothing_is_checked_or_signed(
    settings: Settings, sample_directory: Directory, pki: Pki, aiohttp_client: Any,
    aiohttp_server: Any,
) -> None:
    def unsigned_directory(url: str) -> Directory:
        directory = with_endpoint(sample_directory, PUSH_AGENCY, url)
        agencies = {code: dataclasses.replace(a, signature_policy=None, certificates=())
                    for code, a in directory.agencies.items()}
        return Directory(directory.levels, agencies, directory.children)

    gw = await start(settings, unsigned_directory, aiohttp_client, aiohttp_server)
    assert SIGNATURES not in gw.client.app and SIGNER not in gw.client.app
    # Signed by a CA the gateway does not know: not checked, so not refused either.
    response = await post(gw, HUE, signed(pki.hue, package(HUE, PROVINCE)))
    assert response.status == 202, await response.text()
    first = (await response.json())["id"]
    trace = await get_json(gw, HUE, f"/api/v1/messages/{first}/trace")
    assert "signature_checked" not in {e["event"] for e in trace["events"]}
    ids = [first]
    for subject in ("Thứ hai", "Thứ ba"):
        sent = await gw.send(HUE, document(HUE, [{"agency": PROVINCE}], subject))
        ids.append((await sent.json())["id"])
    for message_id in ids:
        await gw.wait_state(message_id, PROVINCE, "delivered")
    fetched = await gw.client.get(f"/api/v1/edxml/messages/{first}",
                                  headers=await gw.auth(PROVINCE))
    assert b"Signature" not in await fetched.read()

    # The edXML inbox pages like /api/v1/inbox.
    page = await get_json(gw, PROVINCE, "/api/v1/edxml/inbox?limit=2")
    assert len(page["items"]) == 2 and page["next_after"] == page["items"][-1]["seq"]
    rest = await get_json(gw, PROVINCE, f"/api/v1/edxml/inbox?after={page['next_after']}")
    assert rest["next_after"] is None
    listed = [i["message_id"] for i in page["items"] + rest["items"]]
    assert sorted(listed) == sorted(ids)
    ack = await gw.client.post(page["items"][0]["links"]["ack"], headers=await gw.auth(PROVINCE))
    assert ack.status == 200
    unread = await get_json(gw, PROVINCE, "/api/v1/edxml/inbox?unread=true")
    assert [i["message_id"] for i in unread["items"]] == listed[1:]
    read = await get_json(gw, PROVINCE, "/api/v1/edxml/inbox")
    assert "acked_at" in read["items"][0] and "acked_at" not in read["items"][1]
    assert (await get_json(gw, HUE, "/api/v1/edxml/inbox"))["items"] == []

    auth = await gw.auth(PROVINCE)
    other = await gw.client.get(f"/api/v1/edxml/inbox?agency={HUE}", headers=auth)
    assert other.status == 403
    for query, pointer in (("limit=0", "query:limit"), ("after=-1", "query:after"),
                           ("unread=maybe", "query:unread")):
        bad = await gw.client.get(f"/api/v1/edxml/inbox?{query}", headers=auth)
        assert bad.status == 422
        assert (await bad.json())["errors"][0]["pointer"] == pointer
    assert (await gw.client.get("/api/v1/edxml/inbox")).status == 401


# -- configuration at start-up (no database, no broker) ---------------------------------------
def test_signature_configuration_names_the_agency_and_file(
    sample_directory: Directory, pki: Pki, tmp_path: Path
) -> None:
    bare = {code: dataclasses.replace(a, signature_policy=None, certificates=())
            for code, a in sample_directory.agencies.items()}

    def directory(**hue: Any) -> Directory:
        agencies = {**bare, HUE: dataclasses.replace(bare[HUE], **hue)}
        return Directory(sample_directory.levels, agencies, sample_directory.children)

    trusting = Settings(signature_trust=str(pki.files["ca"]))
    with pytest.raises(ConfigError, match=rf"agency {HUE}: .*missing\.pem: cannot read"):
        load_signature_settings(trusting, directory(certificates=("missing.pem",)), tmp_path)
    (tmp_path / "garbage.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=rf"agency {HUE}: .*garbage\.pem"):
        load_signature_settings(trusting, directory(certificates=("garbage.pem",)), tmp_path)
    with pytest.raises(ConfigError, match=r"LIENTHONG_SIGNATURE_TRUST: .*nowhere\.pem"):
        load_signature_settings(Settings(signature_trust="/nowhere.pem"), directory(), tmp_path)
    # Certificates relative to the directory's folder; each agency's policy, else the default.
    (tmp_path / "hue.pem").write_bytes(pki.hue.cert_pem)
    loaded = load_signature_settings(
        trusting.with_(signature_policy="record_only"),
        directory(certificates=("hue.pem",), signature_policy=SignaturePolicy.REQUIRE),
        tmp_path,
    )
    assert loaded is not None and loaded.registered == {HUE: [pki.hue.cert_pem]}
    assert len(loaded.trust) == 1
    assert loaded.policy_for(HUE) is SignaturePolicy.REQUIRE
    assert loaded.policy_for(PROVINCE) is SignaturePolicy.RECORD_ONLY
    # Nothing configured at all: signatures are off. A default policy alone is configuration.
    assert load_signature_settings(Settings(), directory(), tmp_path) is None
    only_policy = load_signature_settings(Settings(signature_policy="record_only"),
                                          directory(), tmp_path)
    assert only_policy is not None and len(only_policy.trust) == 0


def test_the_gateway_signer(pki: Pki, tmp_path: Path) -> None:
    def settings(key: Path | str = "", cert: Path | str = "") -> Settings:
        return Settings(signing_key=str(key), signing_certificate=str(cert))

    assert load_signer(settings()) is None
    with pytest.raises(ConfigError, match="LIENTHONG_SIGNING_CERTIFICATE is needed"):
        load_signer(settings(key=pki.files["gateway_key"]))
    with pytest.raises(ConfigError, match="LIENTHONG_SIGNING_KEY: cannot read"):
        load_signer(settings(tmp_path / "none.pem", pki.files["gateway"]))
    with pytest.raises(ConfigError, match="not the key"):
        load_signer(settings(pki.files["gateway_key"], pki.files["hue"]))
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(pki.gateway.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"mat-khau")))
    with pytest.raises(ConfigError, match="encrypted"):
        load_signer(settings(encrypted, pki.files["gateway"]))
    with pytest.raises(ConfigError, match="what it signs now would be refused"):
        GatewaySigner.from_pem(pki.hue_expired.key_pem, pki.hue_expired.cert_pem)

    signer = load_signer(settings(pki.files["gateway_key"], pki.files["gateway"]))
    assert signer is not None
    body = package(PROVINCE, HUE)
    ours = signer.sign(body)
    # The same bytes as gateway.signatures.sign_package (RSA PKCS#1 v1.5 is deterministic).
    assert ours == sign_package(body, key_pem=pki.gateway.key_pem, cert_pem=pki.gateway.cert_pem)
    assert pki.verify_ours(ours) is R.VALID
    with pytest.raises(GatewayError, match="already carries a Signature"):
        signer.sign(ours)


def test_the_demo_pki_matches_the_sample_directory_for_a_year_more() -> None:
    directory = load_directory(DEFAULT_DIRECTORY)
    settings = Settings(
        signature_trust=str(DEMO_PKI / "demo-ca.pem"),
        signing_key=str(DEMO_PKI / "demo-gateway.key.pem"),
        signing_certificate=str(DEMO_PKI / "demo-gateway.pem"),
    )
    loaded = load_signature_settings(settings, directory, DEFAULT_DIRECTORY.parent)
    assert loaded is not None
    assert loaded.policy_for(PROVINCE) is SignaturePolicy.REQUIRE
    assert loaded.policy_for("000.00.00.G22") is SignaturePolicy.RECORD_ONLY
    signer = load_signer(settings)
    assert signer is not None
    for key in ("demo-gateway.key.pem", f"demo-{PROVINCE}.key.pem"):
        assert (DEMO_PKI / key).read_text().startswith("# DEMO ONLY"), key

    in_a_year = datetime.now(UTC) + timedelta(days=365)
    province_key = (DEMO_PKI / f"demo-{PROVINCE}.key.pem").read_bytes()
    province_cert = (DEMO_PKI / f"demo-{PROVINCE}.pem").read_bytes()
    by_province = sign_package(package(PROVINCE, HUE), key_pem=province_key,
                               cert_pem=province_cert)
    assert loaded.verify(by_province, sender=PROVINCE, now=in_a_year).reason is R.VALID
    gateway_registered = {GATEWAY: [(DEMO_PKI / "demo-gateway.pem").read_bytes()]}
    by_gateway = verify_package(
        signer.sign(package(PROVINCE, HUE)), sender=GATEWAY, policy=SignaturePolicy.REQUIRE,
        trust=loaded.trust, registered=gateway_registered, now=in_a_year,
    )
    assert by_gateway.reason is R.VALID, "the demo PKI expires within a year: re-issue it"


def test_only_edxml_pushes_are_signed(pki: Pki) -> None:
    signer = GatewaySigner.from_pem(pki.gateway.key_pem, pki.gateway.cert_pem)
    canonical = orjson.dumps(document(PROVINCE, [{"agency": HUE}]))
    assert wire_body(WireFormat.JSON, canonical, sign=signer.sign) == (
        canonical, "application/json")
    body, media_type = wire_body(WireFormat.EDXML, canonical, sign=signer.sign)
    assert media_type == "application/xml" and pki.verify_ours(body) is R.VALID


def test_the_record_of_an_outcome_always_fits_the_envelope(pki: Pki) -> None:
    settings = SignatureSettings(trust=TrustStore.from_pem(pki.root.cert_pem),
                                 registered={HUE: [pki.hue.cert_pem]})
    body = signed(pki.hue, package(HUE, PROVINCE))
    envelope = decode_edxml(body)
    now = datetime.now(UTC)
    checked, notes = check_signature(settings, body, envelope, now=now)
    [note] = notes
    assert (note.event, note.detail["reason"]) == ("signature_checked", "valid")
    assert checked.header.trace[-1].event == "edxml.signature"
    # A trace already full (200 entries): the envelope is left as it is, the audit note stays.
    full = [TraceEntry(at=now, event="edxml.trace", agency=HUE)] * 200
    crowded = envelope.model_copy(update={"header": envelope.header.model_copy(
        update={"trace": full})})
    kept, notes = check_signature(settings, body, crowded, now=now)
    assert kept is crowded and len(notes) == 1
    # Texts at their 1000-character cap would overflow TraceEntry.detail (4000): cut to fit.
    outcome = settings.verify(body, sender=HUE, now=now)
    long = dataclasses.replace(outcome, detail="d" * 1000, signer_subject="CN=" + "s" * 997,
                               signer_issuer="CN=" + "i" * 997, location="/x" * 500)
    assert len(long.as_json()) > 4000
    entry = trace_entry(long)
    assert entry.detail is not None and len(entry.detail) <= 4000
    assert json.loads(entry.detail)["reason"] == "valid"
