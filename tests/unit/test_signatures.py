"""Digital signatures: verifying incoming edXML packages, signing what the gateway emits.

The PKI is made at test time with ``cryptography`` (``tests/pki.py``): a root CA, an
intermediate, agency signer certificates (valid, expired, not yet valid, from another CA) and
the gateway's own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lxml import etree
from signxml.verifier import XMLVerifier

from gateway.codecs.edxml import decode_edxml, encode_edxml
from gateway.codecs.xmlsafe import DEFAULT_LIMITS, XmlLimits
from gateway.envelope import (
    AgencyAddress,
    DocumentBody,
    DocumentEnvelope,
    DocumentType,
    Header,
    Promulgation,
    Signer,
    TraceEntry,
)
from gateway.errors import ConfigError, MalformedInput, UnprocessableRequest
from gateway.signatures import (
    AUDIT_EVENT,
    TRACE_EVENT,
    SignatureOutcome,
    SignaturePolicy,
    SignatureReason,
    SignatureSettings,
    TrustStore,
    check_registered,
    sign_package,
    verify_package,
)
from tests.pki import Issued, make_ca, make_signer

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "fixtures" / "edxml" / "samples"  # copied from shared/samples
DSIG = "http://www.w3.org/2000/09/xmldsig#"
EDXML = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
NOW = datetime(2025, 6, 2, 9, 30, tzinfo=UTC)
SENDER = "000.00.00.G22"  # Văn phòng Chính phủ in the samples
OTHER = "000.00.00.H41"
SUBJECT = "V/v kết nối, liên thông phần mềm quản lý văn bản điện tử"

REQUIRE = SignaturePolicy.REQUIRE
IF_PRESENT = SignaturePolicy.VERIFY_IF_PRESENT
RECORD = SignaturePolicy.RECORD_ONLY
POLICIES = [REQUIRE, IF_PRESENT, RECORD]
R = SignatureReason


# -- the PKI (tests/pki.py), at the fixed NOW of these tests ------------------------------------
def _ca(cn: str, issuer: Issued | None = None) -> Issued:
    return make_ca(cn, issuer, now=NOW)


def _signer(
    cn: str,
    ca: Issued,
    *,
    valid_from: datetime = NOW - timedelta(days=30),
    valid_to: datetime = NOW + timedelta(days=365),
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    return make_signer(cn, ca, valid_from=valid_from, valid_to=valid_to, key=key,
                       org="Văn phòng Chính phủ")


@dataclass(frozen=True)
class Pki:
    root: Issued
    intermediate: Issued
    other_root: Issued
    agency: Issued  # SENDER's registered signer, issued by root
    colleague: Issued  # issued by root, registered for OTHER only
    expired: Issued
    not_yet: Issued
    foreign: Issued  # issued by other_root, registered for SENDER
    via_intermediate: Issued
    ec_signer: Issued

    @property
    def trust(self) -> TrustStore:
        return TrustStore.from_pem(self.root.cert_pem)

    @property
    def registered(self) -> dict[str, list[bytes]]:
        return {
            SENDER: [
                self.agency.cert_pem,
                self.expired.cert_pem,
                self.not_yet.cert_pem,
                self.foreign.cert_pem,
                self.via_intermediate.cert_pem,
                self.ec_signer.cert_pem,
            ],
            OTHER: [self.colleague.cert_pem],
        }


@pytest.fixture(scope="module")
def pki() -> Pki:
    root = _ca("Lienthong Test Root CA")
    intermediate = _ca("Lienthong Test Issuing CA", root)
    other_root = _ca("Some Other Root CA")
    return Pki(
        root=root,
        intermediate=intermediate,
        other_root=other_root,
        agency=_signer("Nguyễn Văn Thư", root),
        colleague=_signer("Trần Thị Đồng Nghiệp", root),
        expired=_signer(
            "Lê Văn Hết Hạn",
            root,
            valid_from=NOW - timedelta(days=800),
            valid_to=NOW - timedelta(days=70),
        ),
        not_yet=_signer("Phạm Chưa Tới", root, valid_from=NOW + timedelta(days=5)),
        foreign=_signer("Ngoài Danh Bạ", other_root),
        via_intermediate=_signer("Qua Trung Gian", intermediate),
        ec_signer=_signer("Khóa EC", root, key=ec.generate_private_key(ec.SECP256R1())),
    )


# -- the packages ---------------------------------------------------------------------------------
def _document() -> bytes:
    envelope = DocumentEnvelope(
        kind="document",
        header=Header(
            sender=SENDER,
            to=[AgencyAddress(agency=OTHER), AgencyAddress(agency="000.00.00.H14")],
            created=datetime(2025, 6, 1, 8, 0, tzinfo=UTC),
        ),
        body=DocumentBody(
            number="7816",
            notation="VPCP-TTĐT",
            type=DocumentType(code="1", name="Công văn"),
            subject=SUBJECT,
            promulgation=Promulgation(place="Hà Nội", date=date(2025, 6, 1)),
            signer=Signer(name="Nguyễn Văn Thư", position="Phó Chủ nhiệm"),
            content="Kính gửi các Bộ, cơ quan ngang Bộ và UBND các tỉnh, thành phố.",
        ),
    )
    return encode_edxml(envelope)


DOCUMENT = _document()


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def signed_by(issued: Issued, package: bytes = DOCUMENT, *, chain: bytes = b"") -> bytes:
    return sign_package(package, key_pem=issued.key_pem, cert_pem=issued.cert_pem + chain)


def check(
    pki: Pki,
    package: bytes,
    policy: SignaturePolicy = REQUIRE,
    *,
    allow_sha1: bool = False,
    limits: XmlLimits = DEFAULT_LIMITS,
) -> SignatureOutcome:
    return verify_package(
        package,
        sender=SENDER,
        policy=policy,
        trust=pki.trust,
        registered=pki.registered,
        now=NOW,
        allow_sha1=allow_sha1,
        limits=limits,
    )


def _serial(issued: Issued) -> str:
    return format(issued.cert.serial_number, "X")


# -- valid ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", POLICIES)
def test_a_valid_signature_is_accepted(pki: Pki, policy: SignaturePolicy) -> None:
    outcome = check(pki, signed_by(pki.agency), policy)
    assert (outcome.present, outcome.valid, outcome.reason, outcome.accepted) == (
        True,
        True,
        R.VALID,
        True,
    )
    assert outcome.signer_subject == pki.agency.cert.subject.rfc4514_string()
    assert "CN=Nguyễn Văn Thư" in (outcome.signer_subject or "")
    assert outcome.signer_serial == _serial(pki.agency)
    assert outcome.signer_issuer == pki.root.cert.subject.rfc4514_string()
    assert outcome.signer_fingerprint == pki.agency.cert.fingerprint(hashes.SHA256()).hex()
    assert outcome.location == "/edXML/edXMLEnvelope/edXMLHeader/Signature"
    assert outcome.algorithm == "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
    assert outcome.policy is policy and outcome.sender == SENDER and outcome.checked_at == NOW
    assert outcome.rejection() is None
    outcome.raise_for_policy()


def test_the_signature_sits_in_the_header_and_the_package_still_decodes(pki: Pki) -> None:
    signed = signed_by(pki.agency)
    root = etree.fromstring(signed)
    header = root.find(f"{{{EDXML}}}edXMLEnvelope/{{{EDXML}}}edXMLHeader")
    assert header is not None
    last = header[-1]
    assert last.tag == f"{{{DSIG}}}Signature"
    method = last.find(f"{{{DSIG}}}SignedInfo/{{{DSIG}}}CanonicalizationMethod")
    assert (
        method is not None and method.get("Algorithm") == "http://www.w3.org/2001/10/xml-exc-c14n#"
    )
    # The codec does not carry the signature: the signed package means what the unsigned one did.
    assert decode_edxml(signed) == decode_edxml(DOCUMENT)


def test_a_real_sample_re_encoded_and_signed_by_the_gateway_verifies(pki: Pki) -> None:
    # edoc_new.edxml: a new document with a base64 ZIP attachment (≈370 KB), its vendor
    # signature dropped by the codec; the gateway signs what it writes.
    package = encode_edxml(decode_edxml(sample("edoc_new.edxml")))
    assert b"Signature" not in package
    signed = signed_by(pki.agency, package)
    assert check(pki, signed).reason is R.VALID
    assert decode_edxml(signed) == decode_edxml(package)


def test_a_chain_carried_in_the_signature_reaches_the_root(pki: Pki) -> None:
    signed = signed_by(pki.via_intermediate, chain=pki.intermediate.cert_pem)
    assert signed.count(b"X509Certificate>") == 4  # leaf and intermediate, open and close tags
    outcome = check(pki, signed)
    assert outcome.reason is R.VALID
    assert outcome.signer_serial == _serial(pki.via_intermediate)
    # Without the intermediate the leaf does not reach the root.
    assert check(pki, signed_by(pki.via_intermediate)).reason is R.UNTRUSTED_CHAIN


def test_an_ec_key_signs_with_ecdsa(pki: Pki) -> None:
    outcome = check(pki, signed_by(pki.ec_signer))
    assert outcome.reason is R.VALID
    assert outcome.algorithm == "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"


# -- tampered -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "accepted"), [(REQUIRE, False), (IF_PRESENT, False), (RECORD, True)]
)
def test_a_tampered_subject(pki: Pki, policy: SignaturePolicy, accepted: bool) -> None:
    signed = signed_by(pki.agency)
    original = f"<edXML:Subject>{SUBJECT}</edXML:Subject>".encode()
    assert signed.count(original) == 1
    tampered = signed.replace(original, "<edXML:Subject>V/v hủy kết nối</edXML:Subject>".encode())
    outcome = check(pki, tampered, policy)
    assert (outcome.present, outcome.valid, outcome.reason, outcome.accepted) == (
        True,
        False,
        R.TAMPERED,
        accepted,
    )
    assert "Digest mismatch" in outcome.detail
    # Recorded even when accepted: who the signature names is there.
    assert outcome.signer_serial == _serial(pki.agency)
    if accepted:
        assert outcome.rejection() is None
    else:
        error = outcome.rejection()
        assert isinstance(error, UnprocessableRequest) and error.status == 422
        assert error.errors[0].pointer == "/edXML/edXMLEnvelope/edXMLHeader/Signature"
        assert "tampered" in error.detail
        with pytest.raises(UnprocessableRequest):
            outcome.raise_for_policy()


def test_tampering_anywhere_is_caught(pki: Pki) -> None:
    signed = signed_by(pki.agency)
    for old, new in [
        (b"<edXML:CodeNumber>7816<", b"<edXML:CodeNumber>7817<"),  # the document number
        (f">{OTHER}<".encode(), b">000.00.00.H99<"),  # a recipient
        (b"<edXML:edXMLEnvelope>", b'<edXML:edXMLEnvelope Id="x">'),  # an attribute added
    ]:
        assert signed.count(old) >= 1, old
        assert check(pki, signed.replace(old, new, 1)).reason is R.TAMPERED, old


def test_a_changed_signature_value_is_tampered(pki: Pki) -> None:
    signed = signed_by(pki.agency)
    root = etree.fromstring(signed)
    value = root.find(f".//{{{DSIG}}}SignatureValue")
    assert value is not None and value.text
    value.text = ("A" if value.text[0] != "A" else "B") + value.text[1:]
    outcome = check(pki, etree.tostring(root))
    assert outcome.reason is R.TAMPERED
    assert "Signature verification failed" in outcome.detail


def test_whitespace_between_elements_is_signed_too(pki: Pki) -> None:
    # C14N keeps whitespace text: re-indenting a signed package breaks it (documented here, so
    # that no adapter pretty-prints a package it forwards).
    signed = signed_by(pki.agency)
    assert check(pki, signed.replace(b"\n    <edXML:edXMLBody>", b"<edXML:edXMLBody>")).reason is (
        R.TAMPERED
    )


# -- who signed -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "accepted"), [(REQUIRE, False), (IF_PRESENT, False), (RECORD, True)]
)
def test_an_unknown_signer(pki: Pki, policy: SignaturePolicy, accepted: bool) -> None:
    # A good chain, but the certificate is registered for another agency only.
    outcome = check(pki, signed_by(pki.colleague), policy)
    assert (outcome.present, outcome.valid, outcome.reason, outcome.accepted) == (
        True,
        False,
        R.UNKNOWN_SIGNER,
        accepted,
    )
    assert SENDER in outcome.detail
    assert outcome.signer_serial == _serial(pki.colleague)
    # The same package is valid when the colleague's own agency sends it.
    mine = verify_package(
        signed_by(pki.colleague),
        sender=OTHER,
        policy=REQUIRE,
        trust=pki.trust,
        registered=pki.registered,
        now=NOW,
    )
    assert mine.reason is R.VALID


def test_an_agency_without_registered_certificates_has_only_unknown_signers(pki: Pki) -> None:
    outcome = verify_package(
        signed_by(pki.agency),
        sender="000.00.00.A80",
        policy=REQUIRE,
        trust=pki.trust,
        registered=pki.registered,
        now=NOW,
    )
    assert outcome.reason is R.UNKNOWN_SIGNER


@pytest.mark.parametrize(
    ("policy", "accepted"), [(REQUIRE, False), (IF_PRESENT, False), (RECORD, True)]
)
def test_an_expired_certificate(pki: Pki, policy: SignaturePolicy, accepted: bool) -> None:
    outcome = check(pki, signed_by(pki.expired), policy)
    assert (outcome.present, outcome.valid, outcome.reason, outcome.accepted) == (
        True,
        False,
        R.EXPIRED_CERTIFICATE,
        accepted,
    )
    assert outcome.signer_not_after == pki.expired.cert.not_valid_after_utc
    assert "expired at" in outcome.detail


def test_the_certificate_is_judged_at_now(pki: Pki) -> None:
    signed = signed_by(pki.expired)
    during = pki.expired.cert.not_valid_after_utc - timedelta(days=1)
    outcome = verify_package(
        signed,
        sender=SENDER,
        policy=REQUIRE,
        trust=pki.trust,
        registered=pki.registered,
        now=during,
    )
    assert outcome.reason is R.VALID
    # A tampered package with an expired certificate is reported as tampered: the content is
    # checked first, the certificate's time after.
    tampered = signed.replace(b"VPCP-TT", b"VPCP-XX")
    assert check(pki, tampered).reason is R.TAMPERED


def test_a_certificate_not_yet_valid(pki: Pki) -> None:
    outcome = check(pki, signed_by(pki.not_yet))
    assert (outcome.valid, outcome.reason, outcome.accepted) == (False, R.NOT_YET_VALID, False)


@pytest.mark.parametrize(
    ("policy", "accepted"), [(REQUIRE, False), (IF_PRESENT, False), (RECORD, True)]
)
def test_a_certificate_from_an_untrusted_ca(
    pki: Pki, policy: SignaturePolicy, accepted: bool
) -> None:
    # Registered for the sender, but issued by a CA the trust store does not hold.
    outcome = check(pki, signed_by(pki.foreign), policy)
    assert (outcome.present, outcome.valid, outcome.reason, outcome.accepted) == (
        True,
        False,
        R.UNTRUSTED_CHAIN,
        accepted,
    )
    assert outcome.signer_issuer == pki.other_root.cert.subject.rfc4514_string()
    # Unregistered too: still the chain is what is reported first.
    unregistered = verify_package(
        signed_by(pki.foreign),
        sender=SENDER,
        policy=REQUIRE,
        trust=pki.trust,
        registered={},
        now=NOW,
    )
    assert unregistered.reason is R.UNTRUSTED_CHAIN
    # Trusting the other root makes it valid.
    both = TrustStore.from_pem(pki.root.cert_pem + pki.other_root.cert_pem)
    assert len(both) == 2
    trusted = verify_package(
        signed_by(pki.foreign),
        sender=SENDER,
        policy=REQUIRE,
        trust=both,
        registered=pki.registered,
        now=NOW,
    )
    assert trusted.reason is R.VALID


def test_an_empty_trust_store_trusts_nobody(pki: Pki) -> None:
    outcome = verify_package(
        signed_by(pki.agency),
        sender=SENDER,
        policy=REQUIRE,
        trust=TrustStore(()),
        registered=pki.registered,
        now=NOW,
    )
    assert outcome.reason is R.UNTRUSTED_CHAIN and "empty" in outcome.detail


# -- no signature ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "accepted"), [(REQUIRE, False), (IF_PRESENT, True), (RECORD, True)]
)
def test_no_signature(pki: Pki, policy: SignaturePolicy, accepted: bool) -> None:
    outcome = check(pki, DOCUMENT, policy)
    assert (outcome.present, outcome.valid, outcome.reason, outcome.accepted) == (
        False,
        False,
        R.NO_SIGNATURE,
        accepted,
    )
    assert outcome.location is None and outcome.signer_subject is None


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("status*.edxml")))
def test_the_status_samples_are_unsigned(pki: Pki, name: str) -> None:
    assert check(pki, sample(name), IF_PRESENT).reason is R.NO_SIGNATURE


# -- the vendor samples ---------------------------------------------------------------------------
SIGNED_SAMPLES = [
    "edoc.edxml",  # XML-DSig namespace, full (VNPT-CA, expired) certificate; not well-formed XML
    "edoc_new.edxml",  # Signature in the edXML namespace, truncated certificate
    "edoc_update.edxml",
    "edoc_revocation.edxml",
    "edoc_replacement.edxml",
]


def test_these_are_the_samples_that_carry_a_signature() -> None:
    carrying = sorted(p.name for p in SAMPLES.glob("*.edxml") if b"<Signature" in p.read_bytes())
    assert carrying == sorted(SIGNED_SAMPLES)


@pytest.mark.parametrize(
    ("policy", "accepted"), [(REQUIRE, False), (IF_PRESENT, False), (RECORD, True)]
)
@pytest.mark.parametrize("name", SIGNED_SAMPLES)
def test_vendor_signatures_are_recorded_as_unverifiable(
    pki: Pki, name: str, policy: SignaturePolicy, accepted: bool
) -> None:
    outcome = verify_package(
        sample(name),
        sender=SENDER,
        policy=policy,
        trust=pki.trust,
        registered=pki.registered,
        now=NOW,
        allow_sha1=True,  # even with SHA-1 allowed, nothing here can be checked
    )
    assert (outcome.present, outcome.valid, outcome.reason, outcome.accepted) == (
        True,
        False,
        R.UNVERIFIABLE,
        accepted,
    )
    assert outcome.algorithm == "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
    json.dumps(outcome.as_dict())


def test_what_is_recorded_of_the_vendor_signatures(pki: Pki) -> None:
    new = check(pki, sample("edoc_new.edxml"), RECORD)
    assert new.location == "/edXML/edXMLEnvelope/edXMLHeader/Signature"
    assert "not in the XML-DSig namespace" in new.detail
    assert new.signer_subject is None  # "MIIFqTCCBJG": truncated
    broken = check(pki, sample("edoc.edxml"), RECORD)
    assert "not well-formed" in broken.detail and "line 74" in broken.detail
    # Its certificate is complete: who it names is recorded, unproved.
    assert broken.signer_subject is not None and "TRẦN ANH TUẤN" in broken.signer_subject
    assert broken.signer_serial == "5401F8B96391CA0971053BE87920EF25"
    assert broken.signer_not_after == datetime(2018, 10, 19, 16, 55, tzinfo=UTC)


def test_a_truncated_certificate_in_the_dsig_namespace_is_unverifiable(pki: Pki) -> None:
    root = etree.fromstring(signed_by(pki.agency))
    certificate = root.find(f".//{{{DSIG}}}X509Certificate")
    assert certificate is not None and certificate.text
    certificate.text = "MIIFqTCCBJG"
    outcome = check(pki, etree.tostring(root), RECORD)
    assert (outcome.reason, outcome.accepted) == (R.UNVERIFIABLE, True)
    assert "truncated" in outcome.detail


def test_a_signature_without_a_certificate_is_unverifiable(pki: Pki) -> None:
    root = etree.fromstring(signed_by(pki.agency))
    key_info = root.find(f".//{{{DSIG}}}KeyInfo")
    assert key_info is not None
    key_info.getparent().remove(key_info)  # type: ignore[union-attr]
    outcome = check(pki, etree.tostring(root))
    assert outcome.reason is R.UNVERIFIABLE and "no X509Certificate" in outcome.detail


def test_a_signature_that_breaks_the_xmldsig_schema_is_unverifiable(pki: Pki) -> None:
    root = etree.fromstring(signed_by(pki.agency))
    value = root.find(f".//{{{DSIG}}}SignatureValue")
    assert value is not None
    value.getparent().remove(value)  # type: ignore[union-attr]
    outcome = check(pki, etree.tostring(root))
    assert outcome.reason is R.UNVERIFIABLE and "cannot be checked" in outcome.detail


def test_an_empty_signature_value_is_unverifiable_not_a_crash(pki: Pki) -> None:
    root = etree.fromstring(signed_by(pki.agency))
    value = root.find(f".//{{{DSIG}}}SignatureValue")
    assert value is not None
    value.text = None  # valid for the XML-DSig schema (base64Binary), None to signxml
    outcome = check(pki, etree.tostring(root), RECORD)
    assert (outcome.reason, outcome.accepted) == (R.UNVERIFIABLE, True)


# -- what a signature must cover, and how ---------------------------------------------------------
def test_sha1_is_weak_unless_allowed(pki: Pki) -> None:
    signed = signed_by(pki.agency).replace(
        b"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
        b"http://www.w3.org/2000/09/xmldsig#rsa-sha1",
    )
    outcome = check(pki, signed)
    assert (outcome.reason, outcome.valid) == (R.WEAK_ALGORITHM, False)
    assert "SHA-1" in outcome.detail
    # Allowed (legacy signers), it is checked; here SignedInfo was edited, so it fails.
    assert check(pki, signed, allow_sha1=True).reason is R.TAMPERED


def test_a_signature_over_a_fragment_is_partial(pki: Pki) -> None:
    signed = signed_by(pki.agency).replace(b'Reference URI=""', b'Reference URI="#header"')
    outcome = check(pki, signed, IF_PRESENT)
    assert (outcome.reason, outcome.accepted) == (R.PARTIAL, False)


def test_two_signatures_are_refused_as_ambiguous(pki: Pki) -> None:
    root = etree.fromstring(signed_by(pki.agency))
    signature = root.find(f".//{{{DSIG}}}Signature")
    assert signature is not None
    root.append(etree.fromstring(etree.tostring(signature)))
    outcome = check(pki, etree.tostring(root), IF_PRESENT)
    assert (outcome.reason, outcome.accepted) == (R.MULTIPLE, False)
    assert "2 Signature elements" in outcome.detail


# -- hostile XML ----------------------------------------------------------------------------------
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<edXML:edXML xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016">&lol3;</edXML:edXML>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE edXML [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<edXML:edXML xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016">&xxe;</edXML:edXML>"""


@pytest.fixture
def no_crypto(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("cryptography reached for hostile XML")

    monkeypatch.setattr(XMLVerifier, "verify", refuse)
    monkeypatch.setattr(TrustStore, "chain_error", refuse)


@pytest.mark.usefixtures("no_crypto")
@pytest.mark.parametrize("policy", POLICIES)
def test_hostile_packages_are_refused_before_any_crypto(pki: Pki, policy: SignaturePolicy) -> None:
    signed = signed_by(pki.agency)
    # A DOCTYPE slipped into a package that carries a good signature.
    doctype = signed.replace(b"?>\n", b'?>\n<!DOCTYPE edXML [<!ENTITY t "VPCP">]>\n', 1).replace(
        b"VPCP-TT", b"&t;-TT"
    )
    assert doctype.count(b"<!DOCTYPE") == 1
    for hostile in (BILLION_LAUGHS, EXTERNAL_ENTITY, doctype):
        with pytest.raises(MalformedInput, match="DOCTYPE is not allowed"):
            check(pki, hostile, policy)
    with pytest.raises(MalformedInput, match="only UTF-8"):
        check(pki, signed.decode().encode("utf-16"), policy)
    with pytest.raises(MalformedInput, match="more than the limit"):
        check(pki, signed, policy, limits=XmlLimits(max_bytes=1000))


def test_bytes_that_are_not_xml_raise(pki: Pki) -> None:
    with pytest.raises(MalformedInput, match="empty"):
        check(pki, b"   ")
    with pytest.raises(MalformedInput, match="not well-formed"):
        check(pki, b"not xml at all")


# -- the outcome as a record ----------------------------------------------------------------------
def test_the_outcome_is_json_and_comes_back(pki: Pki) -> None:
    outcome = check(pki, signed_by(pki.agency), IF_PRESENT)
    data = outcome.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["reason"] == "valid" and data["policy"] == "verify_if_present"
    assert data["accepted"] is True and data["present"] is True
    assert data["checked_at"] == "2025-06-02T09:30:00+00:00"
    assert set(data) >= {
        "sender",
        "policy",
        "present",
        "valid",
        "reason",
        "accepted",
        "detail",
        "location",
        "signer_subject",
        "signer_serial",
        "signer_issuer",
        "signer_fingerprint",
    }
    assert SignatureOutcome.from_dict(json.loads(outcome.as_json())) == outcome


def test_the_outcome_as_a_trace_entry(pki: Pki) -> None:
    outcome = check(pki, signed_by(pki.colleague), RECORD)
    entry = outcome.as_trace_entry()
    assert isinstance(entry, TraceEntry)
    assert (entry.event, entry.agency, entry.at) == (TRACE_EVENT, SENDER, NOW)
    assert entry.detail is not None and json.loads(entry.detail)["reason"] == "unknown_signer"
    assert len(AUDIT_EVENT) <= 32  # audit_events.event is String(32)


def test_now_must_be_aware(pki: Pki) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_package(
            DOCUMENT,
            sender=SENDER,
            policy=REQUIRE,
            trust=pki.trust,
            registered={},
            now=datetime(2025, 6, 2, 9, 30),
        )


# -- configuration --------------------------------------------------------------------------------
def test_trust_store_from_files(pki: Pki, tmp_path: Path) -> None:
    one = tmp_path / "root.pem"
    one.write_bytes(pki.root.cert_pem)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.other_root.cert_pem + pki.intermediate.cert_pem)
    store = TrustStore.from_paths(one, str(bundle))
    assert len(store) == 3
    with pytest.raises(ConfigError, match="cannot read"):
        TrustStore.from_paths(tmp_path / "missing.pem")


def test_trust_store_refuses_what_is_not_a_ca(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="not a CA certificate"):
        TrustStore.from_pem(pki.agency.cert_pem)
    with pytest.raises(ConfigError, match="not PEM"):
        TrustStore.from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_a_registered_certificate_that_is_not_pem_names_its_agency(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=rf"{OTHER}\[1\]"):
        check_registered({SENDER: [pki.agency.cert_pem], OTHER: [pki.colleague.cert_pem, b"x"]})


def test_settings_pick_each_agency_policy(pki: Pki) -> None:
    settings = SignatureSettings(
        trust=pki.trust,
        registered=pki.registered,
        policies={SENDER: REQUIRE},
        default=RECORD,
    )
    assert settings.policy_for(SENDER) is REQUIRE and settings.policy_for(OTHER) is RECORD
    assert settings.verify(DOCUMENT, sender=SENDER, now=NOW).accepted is False
    assert settings.verify(DOCUMENT, sender=OTHER, now=NOW).accepted is True
    assert settings.verify(signed_by(pki.agency), sender=SENDER, now=NOW).reason is R.VALID
    with pytest.raises(ConfigError):
        SignatureSettings(trust=pki.trust, registered={SENDER: [b"garbage"]})


# -- signing --------------------------------------------------------------------------------------
def test_signing_refuses_a_package_already_signed(pki: Pki) -> None:
    with pytest.raises(ValueError, match="already carries a Signature"):
        signed_by(pki.agency, signed_by(pki.agency))
    with pytest.raises(ValueError, match="already carries a Signature"):
        signed_by(pki.agency, sample("edoc_new.edxml"))


def test_signing_needs_the_key_of_the_certificate(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="not the key"):
        sign_package(DOCUMENT, key_pem=pki.colleague.key_pem, cert_pem=pki.agency.cert_pem)
    with pytest.raises(ConfigError, match="cannot load"):
        sign_package(DOCUMENT, key_pem=b"nope", cert_pem=pki.agency.cert_pem)
    with pytest.raises(ConfigError, match=r"not PEM|no certificate"):
        sign_package(DOCUMENT, key_pem=pki.agency.key_pem, cert_pem=b"nope")


def test_signing_an_encrypted_key(pki: Pki) -> None:
    key_pem = pki.agency.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"mat-khau"),
    )
    signed = sign_package(
        DOCUMENT, key_pem=key_pem, cert_pem=pki.agency.cert_pem, password=b"mat-khau"
    )
    assert check(pki, signed).reason is R.VALID


def test_signing_refuses_hostile_xml(pki: Pki) -> None:
    with pytest.raises(MalformedInput, match="DOCTYPE"):
        signed_by(pki.agency, BILLION_LAUGHS)


def test_a_status_package_is_signed_in_its_header_too(pki: Pki) -> None:
    status = sample("status_acceptance_03.edxml")
    signed = signed_by(pki.agency, status)
    outcome = check(pki, signed)
    assert outcome.reason is R.VALID
    assert outcome.location == "/edXML/edXMLEnvelope/edXMLHeader/Signature"
