"""The edXML codec: samples, the XSD, round trips, order, lenient rules and precise rejections."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import orjson
import pytest
import xmlschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.codecs import canonical
from gateway.codecs.edxml import (
    CARRY_KEY,
    EXT_NS,
    ICT,
    NS,
    TRACE_EVENT,
    carried,
    content_digest,
    decode_edxml,
    document_id,
    encode_edxml,
    message_id_for,
    operation_message_id,
    package_message_id,
    xsd_text,
)
from gateway.envelope import (
    AgencyAddress,
    AnyEnvelope,
    DocumentEnvelope,
    Header,
    Operation,
    Priority,
    StatusBody,
    StatusCode,
    StatusEnvelope,
    SubtreeAddress,
    TraceEntry,
)
from gateway.errors import MalformedInput, SchemaViolation
from tests.unit.strategies import (
    agency_codes,
    attachments,
    document_bodies,
    envelopes,
    long_texts,
    short_texts,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "fixtures" / "edxml" / "samples"  # copied from shared/samples
FIXTURES = ROOT / "tests" / "fixtures" / "edxml"
XSD_FILE = ROOT / "schemas" / "edxml.xsd"
SCHEMA = etree.XMLSchema(etree.parse(str(XSD_FILE)))

#: edoc.edxml is not well-formed and carries a JMeter placeholder instead of base64 (see below).
BROKEN = "edoc.edxml"
ALL_SAMPLES = sorted(p.name for p in SAMPLES.glob("*.edxml"))
SAMPLE_FILES = [n for n in ALL_SAMPLES if n != BROKEN]
FIXTURE_FILES = sorted(p.name for p in FIXTURES.glob("*.edxml"))
STATUS_BY_FILE = {
    "status.edxml": "01",
    "status_inbox_01.edxml": "01",
    "status_rejection_02.edxml": "02",
    "status_acceptance_03.edxml": "03",
    "status_assignment_04.edxml": "04",
    "status_processing_05.edxml": "05",
    "status_finish_06.edxml": "06",
    "status_cancellation_13.edxml": "13",
    "status_change-acceptance_15.edxml": "15",
    "status_change-rejection_16.edxml": "16",
}
MH = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader"
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _names(data: bytes, parent: str) -> list[str]:
    """Local names of the children of the first element named ``parent``."""
    root = etree.fromstring(data)
    element = next(root.iter(f"{{{NS}}}{parent}"))
    return [etree.QName(c).localname for c in element if isinstance(c.tag, str)]


# -- the samples ----------------------------------------------------------------------------------
def test_the_samples_are_all_there() -> None:
    assert len(ALL_SAMPLES) == 15
    assert set(STATUS_BY_FILE) <= set(ALL_SAMPLES)


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_every_sample_validates_against_the_xsd(name: str) -> None:
    document = etree.fromstring(sample(name))
    assert SCHEMA.validate(document), [str(e) for e in SCHEMA.error_log]


def test_the_broken_sample_is_not_well_formed_and_its_repair_leaves_only_the_placeholder() -> None:
    # edoc.edxml: the outer <From> of "From inside From" is never closed (libxml2: line 74), the
    # xlink: prefix is undeclared, and the attachment is a JMeter template placeholder. The codec
    # repairs the first two (documented lenient rules) and refuses the third, naming the line.
    with pytest.raises(etree.XMLSyntaxError, match="From line 7 and MessageHeader"):
        etree.fromstring(sample(BROKEN))
    with pytest.raises(SchemaViolation) as info:
        decode_edxml(sample(BROKEN))
    exc = info.value
    assert exc.errors[0].pointer == "/edXML/AttachmentEncoded/Attachment/ContentTransferEncoded"
    assert exc.errors[0].detail.startswith("line 131:")
    assert "StringFromFile" in exc.errors[0].detail and "base64" in exc.errors[0].detail
    assert len(exc.errors) == 1  # nothing else is wrong once the vendor defects are repaired


def test_committed_xsd_is_the_generated_one() -> None:
    assert XSD_FILE.read_text(encoding="utf-8") == xsd_text(), (
        "schemas/edxml.xsd is out of date: regenerate it (see the comment at its top)"
    )


def test_the_xsd_is_a_valid_schema_for_xmlschema_too() -> None:
    schema = xmlschema.XMLSchema(str(XSD_FILE))
    for name in SAMPLE_FILES:
        assert schema.is_valid(str(SAMPLES / name)), name


@pytest.mark.parametrize("name", SAMPLE_FILES + FIXTURE_FILES)
def test_every_sample_round_trips_stably(name: str) -> None:
    data = sample(name) if name in SAMPLE_FILES else fixture(name)
    first = decode_edxml(data)
    written = encode_edxml(first)
    if name != "edoc_vendor_extensions.edxml":  # its DocumentCode is unknown to the XSD
        assert SCHEMA.validate(etree.fromstring(written)), [str(e) for e in SCHEMA.error_log]
    second = decode_edxml(written)
    assert second == first
    assert encode_edxml(second) == written  # a fixed point: nothing drifts on a second trip
    # ...and through the canonical JSON codec and back, still the same package.
    assert decode_edxml(encode_edxml(canonical.decode(canonical.encode(first)))) == first


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_every_sample_keeps_every_element_it_had(name: str) -> None:
    # Every element of the input (but the signature) is in the output, with the same text.
    def texts(data: bytes) -> set[tuple[str, str]]:
        root = etree.fromstring(data)
        out = set()
        for el in root.iter():
            if not isinstance(el.tag, str) or "Signature" in el.tag:
                continue
            if any("Signature" in str(a.tag) for a in el.iterancestors()):
                continue
            if len(el) == 0:
                out.add((etree.QName(el).localname, (el.text or "").strip()))
        return out

    before = texts(sample(name))
    after = texts(encode_edxml(decode_edxml(sample(name))))
    assert before <= after


@pytest.mark.parametrize(("name", "code"), sorted(STATUS_BY_FILE.items()))
def test_status_samples(name: str, code: str) -> None:
    envelope = decode_edxml(sample(name))
    assert isinstance(envelope, StatusEnvelope)
    assert envelope.body.code == StatusCode(code)
    assert envelope.body.about == message_id_for("000.00.00.G22,2015/09/30,7816/VPCP-TTĐT")
    assert envelope.body.comment  # every sample gives a description
    assert envelope.body.by in {"Nguyen thi ngoc tram", "Nguyễn Thị Ngọc Trâm"}
    assert envelope.body.at.utcoffset() == ICT.utcoffset(None)
    # The status goes back to the agency ResponseFor names.
    assert len(envelope.header.to) == 1
    written = encode_edxml(envelope)
    assert re.search(rf"<edXML:StatusCode>{code}</edXML:StatusCode>".encode(), written)
    assert _names(written, "MessageHeader") == [
        "From",
        "ResponseFor",
        "StaffInfo",
        "StatusCode",
        "Description",
        "Timestamp",
    ]
    assert b"<edXML:edXMLBody" not in written  # status packages have no body


def test_a_status_names_the_document_it_answers() -> None:
    document = decode_edxml(sample("edoc_new.edxml"))
    status = decode_edxml(sample("status_acceptance_03.edxml"))
    assert isinstance(status, StatusEnvelope)
    # Both carry DocumentId 000.00.00.G22,2015/09/30,7816/VPCP-TTĐT.
    assert status.body.about == document.header.id


def test_document_sample_maps_to_the_envelope() -> None:
    envelope = decode_edxml(sample("edoc_update.edxml"))
    assert isinstance(envelope, DocumentEnvelope)
    header, body = envelope.header, envelope.body
    assert header.sender == "000.00.00.G22"
    assert header.to == [
        AgencyAddress(agency="000.00.00.H41"),
        AgencyAddress(agency="000.00.00.H14"),
        AgencyAddress(agency="000.00.00.G17"),
    ]
    # An update: its DocumentId is the document's; its id is its own (see test_message_ids_*).
    assert body.document_id == "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT"
    assert body.operation is Operation.UPDATE
    assert body.operation_reason == "Cập nhật văn bản điện tử"
    assert body.replaces == []
    assert body.to_places == ["Cac bo va co quan ngang bo", "Uy ban nhan dan cac tinh, TP"]
    assert header.id == operation_message_id(
        "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT", Operation.UPDATE, content_digest(envelope)
    )
    assert header.due == datetime(2018, 9, 28, 23, 59, 59, tzinfo=ICT)
    assert header.priority is Priority.NORMAL
    assert header.trace == [
        TraceEntry(at=datetime(2018, 9, 28, tzinfo=ICT), event=TRACE_EVENT, agency="000.00.00.G22")
    ]
    assert (body.number, body.notation) == ("7816", "VPCP-TTĐT")
    assert (body.type.code, body.type.name) == ("1", "Công văn")
    assert body.promulgation.place == "Hà Nội"
    assert body.promulgation.date == date(2018, 9, 28)
    assert body.signer is not None and body.signer.name == "Nguyen Thanh Phuc"
    assert body.subject.startswith("V/v kết nối")
    [attachment] = body.attachments
    assert attachment.name == "1896_QD-TTg_m_294779.doc"
    assert attachment.media_type == "application/zip"
    assert attachment.content is not None
    raw = base64.b64decode(attachment.content)
    assert raw[:2] == b"PK" and attachment.size == len(raw)
    assert attachment.sha256 == hashlib.sha256(raw).hexdigest()
    # What the Envelope has no field for is kept, e.g. the business block's receivers; what it
    # has a field for is not kept twice.
    residual = carried(envelope)
    bussiness = residual["edXMLEnvelope"]["edXMLHeader"]["TraceHeaderList"]["Bussiness"]
    assert "BussinessDocType" not in bussiness and "BussinessDocReason" not in bussiness
    assert bussiness["DocumentId"] == "000.00.00.G22,2014/02/30,7806/VPCP-TTĐT"
    assert bussiness["Paper"] == "0" and bussiness["StaffInfo"]["Department"]
    receivers = bussiness["BussinessDocumentInfo"]["ReceiverList"]["Receiver"]
    assert [r["OrganId"] for r in receivers] == ["000.00.00.H41", "000.00.00.H14"]
    mh = residual["edXMLEnvelope"]["edXMLHeader"]["MessageHeader"]
    assert mh["To"][1]["OrganName"] == "UBND Tỉnh Cao Bằng"
    assert mh["SteeringType"] == "1"
    assert "ToPlaces" not in mh and "DocumentId" not in mh


@pytest.mark.parametrize(
    ("name", "operation"),
    [
        ("edoc_new.edxml", "0"),
        ("edoc_revocation.edxml", "1"),
        ("edoc_update.edxml", "2"),
        ("edoc_replacement.edxml", "3"),
    ],
)
def test_document_operations_are_kept(name: str, operation: str) -> None:
    envelope = decode_edxml(sample(name))
    assert isinstance(envelope, DocumentEnvelope)
    assert envelope.body.operation is list(Operation)[int(operation)]
    written = encode_edxml(envelope)
    assert f"<edXML:BussinessDocType>{operation}</edXML:BussinessDocType>".encode() in written


def test_recall_links_the_document_it_recalls() -> None:
    envelope = decode_edxml(sample("edoc_revocation.edxml"))
    assert envelope.header.references == [message_id_for("000.00.04.G14,2012/08/06,267/VPCP-TTĐT")]


def test_replacement_keeps_its_replacement_list() -> None:
    envelope = decode_edxml(sample("edoc_replacement.edxml"))
    written = encode_edxml(envelope)
    assert written.count(b"<edXML:ReplacementInfo>") == 2
    assert written.count(b"<edXML:OrganId>000.00.00.H14</edXML:OrganId>") >= 2


# -- writing: the standard's order, formats, Vietnam time -----------------------------------------
def test_document_is_written_in_the_standards_order() -> None:
    written = encode_edxml(decode_edxml(fixture("edoc_vendor_extensions.edxml")))
    names = _names(written, "MessageHeader")
    standard = [
        "From",
        "To",
        "Code",
        "PromulgationInfo",
        "DocumentType",
        "Subject",
        "Content",
        "SignerInfo",
        "DueDate",
        "ToPlaces",
        "OtherInfo",
        "ResponseFor",
        "SteeringType",
        "DocumentId",
    ]
    known = [n for n in names if n in standard]
    assert known == sorted(known, key=standard.index)
    assert _names(written, "edXML") == ["edXMLEnvelope", "AttachmentEncoded"]
    assert _names(written, "edXMLEnvelope") == ["edXMLHeader", "edXMLBody"]
    assert _names(written, "Attachment") == [
        "ContentId",
        "AttachmentName",
        "ContentType",
        "ContentTransferEncoded",
        "Checksum",  # the vendor's extension: after the known children
    ]
    assert written.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<edXML:edXML ')


def test_times_are_written_in_vietnam_time() -> None:
    status = StatusEnvelope(
        kind="status",
        header=Header(sender="000.00.31.H57", to=[AgencyAddress(agency="000.00.00.H57")]),
        body=StatusBody(
            about=uuid.UUID("5f0c3d5e-8c1b-4a57-9a0f-2b1e6f7d9c10"),
            code=StatusCode.ACCEPTED,
            at=datetime(2024, 5, 1, 18, 30, 5, tzinfo=UTC),
        ),
    )
    written = encode_edxml(status)
    assert b"<edXML:Timestamp>2024/05/02 01:30:05</edXML:Timestamp>" in written
    assert b"<edXML:DocumentId>5f0c3d5e-8c1b-4a57-9a0f-2b1e6f7d9c10</edXML:DocumentId>" in written
    assert b"lt:Envelope" not in written  # everything fits the standard's elements
    assert decode_edxml(written) == status


def test_dates_are_written_as_the_standard_writes_them() -> None:
    envelope = decode_edxml(fixture("edoc_nested_from.edxml"))
    assert isinstance(envelope, DocumentEnvelope)
    later = envelope.model_copy(
        update={
            "header": envelope.header.model_copy(
                update={"due": datetime(2024, 5, 20, 23, 59, 59, tzinfo=ICT)}
            )
        }
    )
    written = encode_edxml(later)
    assert b"<edXML:PromulgationDate>2024/05/02</edXML:PromulgationDate>" in written
    assert b"<edXML:DueDate>2024/05/20</edXML:DueDate>" in written
    assert b"lt:Envelope" not in written


# -- order-insensitive parsing, extensions, lenient rules -----------------------------------------
def _reversed_children(data: bytes) -> bytes:
    """Every element's children in reverse order, but repeated siblings (To, Reference...) in
    their own order: that order is meaningful (recipients, attachments)."""
    root = etree.fromstring(data)
    for element in root.iter():
        children = [c for c in element if isinstance(c.tag, str)]
        names = list(dict.fromkeys(c.tag for c in children))
        for child in children:
            element.remove(child)
        for child in sorted(children, key=lambda c: -names.index(c.tag)):
            element.append(child)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@pytest.mark.parametrize(
    "name", ["edoc_update.edxml", "edoc_replacement.edxml", "status_rejection_02.edxml"]
)
def test_parsing_is_order_insensitive(name: str) -> None:
    assert decode_edxml(_reversed_children(sample(name))) == decode_edxml(sample(name))


def test_vendor_extensions_survive_a_round_trip() -> None:
    data = fixture("edoc_vendor_extensions.edxml")
    envelope = decode_edxml(data)
    assert isinstance(envelope, DocumentEnvelope)
    assert envelope.header.priority is Priority.URGENT
    [attachment] = envelope.body.attachments  # joined although the manifest omits "cid:"
    assert attachment.name == "Công văn 7816.pdf"
    written = encode_edxml(envelope)
    root = etree.fromstring(written)
    ext = "urn:vnpt:edoc:ext"
    assert root.find(f".//{{{NS}}}MessageHeader/{{{ext}}}SoDen").text == "1234"
    assert root.find(f".//{{{NS}}}OtherInfo/{{{NS}}}DocumentCode").text == "MS-2018-7816"
    assert root.find(f".//{{{NS}}}Bussiness/{{{ext}}}Workflow").text == "LT-01"
    checksum = root.find(f".//{{{NS}}}Attachment/{{{ext}}}Checksum")
    assert checksum.get("algorithm") == "md5"
    assert root.find(f".//{{{NS}}}To").get(f"{{{ext}}}kind") == "chính"
    assert root.find(f".//{{{NS}}}Reference/{{{NS}}}ContentId").text == "a1"
    assert decode_edxml(written) == envelope


def test_the_signature_is_not_carried() -> None:
    for name in ("edoc_new.edxml", "edoc_update.edxml"):  # edXML-namespace Signature
        assert b"Signature" not in encode_edxml(decode_edxml(sample(name)))
    written = encode_edxml(decode_edxml(fixture("edoc_vendor_extensions.edxml")))
    assert b"Signature" not in written and b"xmldsig" not in written  # dsig namespace


def test_lenient_unclosed_from_and_undeclared_xlink() -> None:
    # edoc.edxml with only its placeholder replaced by real base64: the unclosed outer From and
    # the undeclared xlink: prefix are repaired; the package reads as its sender meant it.
    envelope = decode_edxml(fixture("edoc_placeholder_filled.edxml"))
    assert isinstance(envelope, DocumentEnvelope)
    assert envelope.header.sender == "777.77.04.D77"
    assert envelope.header.to == [AgencyAddress(agency="777.77.03.D77")]
    assert envelope.header.id == uuid.UUID("9fbfbad2-f1f8-4256-a2eb-50fb1061cddb")
    assert envelope.body.subject == "Văn bản liên thông chỉ đạo - 190701"
    assert [t.agency for t in envelope.header.trace] == ["000.01.02.G22"]  # legacy code
    assert envelope.body.attachments[0].description == "Description 1"
    written = encode_edxml(envelope)
    assert SCHEMA.validate(etree.fromstring(written))
    reference = etree.fromstring(written).find(f".//{{{NS}}}Reference")
    assert reference.get("{http://www.w3.org/1999/xlink}href") == ""
    assert b"<edXML:OrganId>01.02.G22</edXML:OrganId>" in written  # written back as it came


def test_lenient_well_formed_nested_from() -> None:
    envelope = decode_edxml(fixture("edoc_nested_from.edxml"))
    assert envelope.header.sender == "000.00.00.G22"
    assert _names(encode_edxml(envelope), "From") == ["OrganId", "OrganName"]


def test_legacy_three_group_agency_code() -> None:
    envelope = decode_edxml(sample("edoc_new.edxml"))
    assert envelope.header.to == [AgencyAddress(agency="000.28.22.H17")]
    assert b"<edXML:OrganId>28.22.H17</edXML:OrganId>" in encode_edxml(envelope)
    # Once the recipient is changed, the stale raw code is not written.
    moved = envelope.model_copy(
        update={
            "header": envelope.header.model_copy(
                update={"to": [AgencyAddress(agency="000.00.00.H57")]}
            )
        }
    )
    written = encode_edxml(moved)
    assert b"28.22.H17" not in written and b"000.00.00.H57" in written


def test_other_malformed_xml_is_not_repaired() -> None:
    data = sample("status_acceptance_03.edxml").replace(b"</edXML:StaffInfo>", b"</edXML:Staff>", 1)
    with pytest.raises(MalformedInput) as info:
        decode_edxml(data)
    exc = info.value
    assert "line 27" in exc.detail
    assert exc.errors[0].pointer.startswith(MH + "/StaffInfo")


# -- precise rejections ---------------------------------------------------------------------------
def _status_with(old: bytes, new: bytes, name: str = "status_acceptance_03.edxml") -> bytes:
    data = sample(name)
    assert old in data
    return data.replace(old, new, 1)


@pytest.mark.parametrize(
    ("old", "new", "pointer", "line"),
    [
        (b"<edXML:StatusCode>03<", b"<edXML:StatusCode>07<", MH + "/StatusCode", 28),
        (b"2015/09/20 11:08:36", b"20/09/2015 11:08", MH + "/Timestamp", 30),
        (b"<edXML:OrganId>000.00.00.H41<", b"<edXML:OrganId>H41<", MH + "/From/OrganId", 7),
        (b"2015/09/20 11:08:36", b"2015/02/30 11:08:36", MH + "/Timestamp", 30),
        (
            b"<edXML:Timestamp>",
            b"<edXML:Timestamp>2015/09/20 11:08:36</edXML:Timestamp><edXML:Timestamp>",
            MH + "/Timestamp[2]",
            30,
        ),
    ],
)
def test_errors_name_the_element_and_the_line(
    old: bytes, new: bytes, pointer: str, line: int
) -> None:
    with pytest.raises(SchemaViolation) as info:
        decode_edxml(_status_with(old, new))
    exc = info.value
    assert exc.status == 422
    assert exc.errors[0].pointer == pointer
    assert exc.errors[0].detail.startswith(f"line {line}:")
    assert pointer in exc.detail


def test_missing_required_element_is_named() -> None:
    data = re.sub(rb"<edXML:Subject>.*?</edXML:Subject>", b"", sample("edoc_update.edxml"))
    with pytest.raises(SchemaViolation) as info:
        decode_edxml(data)
    assert info.value.errors[0].pointer == MH + "/Subject"
    assert "line 5" in info.value.errors[0].detail  # the line of MessageHeader


def test_rejection_needs_a_reason() -> None:
    data = re.sub(
        rb"<edXML:Description>.*?</edXML:Description>", b"", sample("status_rejection_02.edxml")
    )
    with pytest.raises(SchemaViolation) as info:
        decode_edxml(data)
    assert "comment" in info.value.errors[0].detail
    assert info.value.errors[0].pointer == MH


def test_manifest_entry_without_attachment_is_refused() -> None:
    data = sample("edoc_new.edxml").replace(
        b"<ContentId>cid:209</ContentId>", b"<ContentId>cid:1</ContentId>"
    )
    with pytest.raises(SchemaViolation) as info:
        decode_edxml(data)
    assert "cid:209" not in info.value.errors[0].pointer
    assert info.value.errors[0].pointer.endswith("edXMLManifest/Reference/ContentId")


def test_not_an_edxml_package() -> None:
    with pytest.raises(SchemaViolation) as info:
        decode_edxml(b"<?xml version='1.0'?><note><to>x</to></note>")
    assert info.value.errors[0].pointer == "/note"
    with pytest.raises(MalformedInput):
        decode_edxml(b"")
    with pytest.raises(MalformedInput):
        decode_edxml(b'{"kind": "document"}')


def test_a_forged_residual_cannot_smuggle_xml() -> None:
    envelope = decode_edxml(fixture("edoc_nested_from.edxml"))
    assert isinstance(envelope, DocumentEnvelope)
    hostile = (
        '{"edXMLEnvelope":{"edXMLHeader":{"MessageHeader":{"#":["<!DOCTYPE x [<!ENTITY e '
        'SYSTEM \\"file:///etc/passwd\\">]><x>&e;</x>"]}}}}'
    )
    forged = envelope.model_copy(
        update={"body": envelope.body.model_copy(update={"extra": {CARRY_KEY: hostile}})}
    )
    with pytest.raises(MalformedInput, match="DOCTYPE"):
        encode_edxml(forged)


_MH_RESIDUAL = '{{"edXMLEnvelope":{{"edXMLHeader":{{"MessageHeader":{{{}}}}}}}}}'


@pytest.mark.parametrize(
    ("inside", "kept"),
    [
        # "~raw" was once the encoder's own key for trusted XML: a residual cannot use it.
        ('"~raw":"<edXML:To><edXML:OrganId>000.00.00.H57</edXML:OrganId></edXML:To>"', False),
        # A residual's text is text, whatever it looks like.
        ('"SteeringType":"</edXML:SteeringType><x/>"', True),
    ],
)
def test_a_forged_residual_cannot_inject_markup(inside: str, kept: bool) -> None:
    envelope = decode_edxml(fixture("edoc_nested_from.edxml"))
    assert isinstance(envelope, DocumentEnvelope)
    residual = _MH_RESIDUAL.format(inside)
    forged = envelope.model_copy(
        update={"body": envelope.body.model_copy(update={"extra": {CARRY_KEY: residual}})}
    )
    data = encode_edxml(forged)
    root = etree.fromstring(data)
    assert SCHEMA.validate(root), [str(e) for e in SCHEMA.error_log]
    assert [to.findtext(f"{{{NS}}}OrganId") for to in root.iter(f"{{{NS}}}To")] == [
        a.agency for a in envelope.header.to if isinstance(a, AgencyAddress)
    ]
    assert root.find(f".//{{{NS}}}x") is None and root.find(".//x") is None
    assert carried(decode_edxml(data)) == (orjson.loads(residual) if kept else {})


@pytest.mark.parametrize("name", ['a=\\"1\\"><x/><y b', "{}a", "{urn:x}a b"])
def test_a_forged_attribute_name_is_refused(name: str) -> None:
    envelope = decode_edxml(fixture("edoc_nested_from.edxml"))
    assert isinstance(envelope, DocumentEnvelope)
    residual = _MH_RESIDUAL.format(f'"From":{{"@":{{"{name}":"c"}}}}')
    forged = envelope.model_copy(
        update={"body": envelope.body.model_copy(update={"extra": {CARRY_KEY: residual}})}
    )
    with pytest.raises(SchemaViolation, match="not an attribute name"):
        encode_edxml(forged)


def test_text_xml_cannot_carry_is_refused_on_writing() -> None:
    envelope = decode_edxml(fixture("edoc_nested_from.edxml"))
    assert isinstance(envelope, DocumentEnvelope)
    bad = envelope.model_copy(
        update={"body": envelope.body.model_copy(update={"subject": "Về việc \x01 thử"})}
    )
    with pytest.raises(SchemaViolation, match="cannot write edXML"):
        encode_edxml(bad)


# -- ids ------------------------------------------------------------------------------------------
def test_message_ids_from_document_ids() -> None:
    given = "9fbfbad2-f1f8-4256-a2eb-50fb1061cddb"
    assert message_id_for(given) == uuid.UUID(given)  # a UUID DocumentId is the message id
    assert message_id_for(given.upper()) != uuid.UUID(given)  # only the canonical spelling
    conventional = "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT"
    assert message_id_for(conventional) == message_id_for(conventional)
    assert message_id_for(conventional).version == 5


def test_json_born_document_gets_its_message_id_as_document_id() -> None:
    envelope = decode_edxml(fixture("edoc_nested_from.edxml"))
    assert isinstance(envelope, DocumentEnvelope)
    message_id = uuid.UUID("0b8f3c9e-1d2a-4e5f-8a7b-6c5d4e3f2a1b")
    fresh = envelope.model_copy(
        update={
            "header": envelope.header.model_copy(update={"id": message_id}),
            "body": envelope.body.model_copy(update={"extra": {}, "document_id": None}),
        }
    )
    assert document_id(fresh) == str(message_id)
    written = encode_edxml(fresh)
    assert f"<edXML:DocumentId>{message_id}</edXML:DocumentId>".encode() in written
    back = decode_edxml(written)
    assert back.header.id == message_id
    assert back == fresh  # no document_id: the DocumentId written was the gateway's own
    # A peer that takes no extension reads the DocumentId as the document's.
    plain = decode_edxml(encode_edxml(fresh, gateway_extension=False))
    assert isinstance(plain, DocumentEnvelope)
    assert (plain.header.id, plain.body.document_id) == (message_id, str(message_id))


# -- the gateway's own extension ------------------------------------------------------------------
def test_fields_edxml_has_no_element_for_travel_in_the_gateway_extension() -> None:
    envelope = decode_edxml(fixture("edoc_nested_from.edxml"))
    assert isinstance(envelope, DocumentEnvelope)
    routed = envelope.model_copy(
        update={
            "header": envelope.header.model_copy(
                update={
                    "to": [
                        AgencyAddress(agency="000.00.00.H41"),
                        SubtreeAddress(under="000.00.00.H57", level="district"),
                    ],
                    "created": datetime(2024, 5, 2, 8, 0, tzinfo=ICT),
                    "trace": [TraceEntry(at=datetime(2024, 5, 2, tzinfo=UTC), event="routed")],
                }
            ),
            "body": envelope.body.model_copy(
                update={"extra": {**envelope.body.extra, "so_den": "125"}}
            ),
        }
    )
    written = encode_edxml(routed)
    assert f'<lt:Envelope xmlns:lt="{EXT_NS}">'.encode() in written
    assert SCHEMA.validate(etree.fromstring(written))
    assert decode_edxml(written) == routed
    plain = encode_edxml(routed, gateway_extension=False)
    assert b"lt:Envelope" not in plain
    assert decode_edxml(plain).header.to == [AgencyAddress(agency="000.00.00.H41")]


@pytest.mark.parametrize(
    "extension",
    [
        '{"body":{"attachments":5}}',
        '{"body":{"attachments":[{"index":"first"}]}}',
        '{"body":{"extra":["so_den"]}}',
        '{"header":"routed"}',
        "[1, 2]",
        "not JSON",
    ],
)
def test_a_broken_gateway_extension_is_refused_naming_it(extension: str) -> None:
    # Any sender can write an lt:Envelope: a broken one is a clear error, never a crash.
    data = fixture("edoc_nested_from.edxml").replace(
        b"</MessageHeader>",
        f'<lt:Envelope xmlns:lt="{EXT_NS}">{extension}</lt:Envelope></MessageHeader>'.encode(),
    )
    with pytest.raises(SchemaViolation) as info:
        decode_edxml(data)
    assert info.value.errors[0].pointer == MH + "/Envelope"
    assert "gateway extension" in info.value.errors[0].detail


def test_large_residual_is_split_into_values_the_model_accepts() -> None:
    root = etree.fromstring(sample("edoc_update.edxml"))
    mh = next(root.iter(f"{{{NS}}}MessageHeader"))
    to = mh.find(f"{{{NS}}}To")
    for i in range(40):  # 40 more recipients with their contact details
        clone = etree.fromstring(etree.tostring(to))
        clone.find(f"{{{NS}}}OrganId").text = f"000.00.{i:02d}.H41"
        mh.append(clone)
    data = etree.tostring(root, encoding="UTF-8")
    envelope = decode_edxml(data)
    assert isinstance(envelope, DocumentEnvelope)
    keys = sorted(k for k in envelope.body.extra if k.startswith(CARRY_KEY))
    assert len(keys) >= 3
    assert all(len(envelope.body.extra[k]) <= 4000 for k in keys)
    assert len(envelope.header.to) == 43
    assert decode_edxml(encode_edxml(envelope)) == envelope


# -- property tests -------------------------------------------------------------------------------
@PROPERTY
@given(envelopes())
def test_any_envelope_round_trips(envelope: AnyEnvelope) -> None:
    written = encode_edxml(envelope)
    assert SCHEMA.validate(etree.fromstring(written)), [str(e) for e in SCHEMA.error_log]
    assert decode_edxml(written) == envelope


@st.composite
def native_documents(draw: st.DrawFn) -> DocumentEnvelope:
    """Documents whose every field has an edXML element: no gateway extension needed."""
    body = draw(document_bodies())
    inline = [a for a in draw(st.lists(attachments(), max_size=3)) if a.content is not None]
    due_day = draw(st.none() | st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 1, 1)))
    header = Header(
        id=draw(st.uuids()),
        sender=draw(agency_codes()),
        to=[
            AgencyAddress(agency=a) for a in draw(st.lists(agency_codes(), min_size=1, max_size=4))
        ],
        priority=draw(st.sampled_from(Priority)),
        due=datetime(due_day.year, due_day.month, due_day.day, 23, 59, 59, tzinfo=ICT)
        if due_day
        else None,
        trace=[
            TraceEntry(
                at=datetime(2024, 1, 1, tzinfo=ICT).replace(hour=h), event=TRACE_EVENT, agency=a
            )
            for h, a in draw(st.lists(st.tuples(st.integers(0, 23), agency_codes()), max_size=3))
        ],
    )
    key = body.document_id or draw(st.uuids()).hex
    native = DocumentEnvelope(
        kind="document",
        header=header,
        body=body.model_copy(update={"attachments": inline, "extra": {}, "document_id": key}),
    )
    # The message id a package of it gets: from its DocumentId, or for a recall, update or
    # replace from its DocumentId, operation and content.
    return native.model_copy(
        update={"header": header.model_copy(update={"id": package_message_id(native)})}
    )


@PROPERTY
@given(native_documents())
def test_native_documents_round_trip_without_the_extension(envelope: DocumentEnvelope) -> None:
    written = encode_edxml(envelope)
    assert b"lt:Envelope" not in written
    assert SCHEMA.validate(etree.fromstring(written)), [str(e) for e in SCHEMA.error_log]
    assert decode_edxml(written) == envelope


@PROPERTY
@given(
    agency_codes(),
    agency_codes(),
    st.uuids(),
    st.sampled_from(StatusCode),
    long_texts(),
    st.none() | short_texts(),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 1, 1)),
)
def test_native_statuses_round_trip_without_the_extension(
    sender: str,
    to: str,
    about: uuid.UUID,
    code: StatusCode,
    comment: str,
    by: str | None,
    at: datetime,
) -> None:
    status = StatusEnvelope(
        kind="status",
        header=Header(sender=sender, to=[AgencyAddress(agency=to)]),
        body=StatusBody(
            about=about,
            code=code,
            at=at.replace(microsecond=0, tzinfo=ICT),
            by=by,
            comment=comment,
        ),
    )
    written = encode_edxml(status)
    assert b"lt:Envelope" not in written
    assert decode_edxml(written) == status


def test_inline_attachment_above_the_model_limit_becomes_a_claim_check() -> None:
    raw = bytes(range(256)) * 4200  # 1,075,200 bytes: base64 above 1,400,000 characters
    data = sample("edoc_new.edxml")
    data = re.sub(
        rb"(<edXML:ContentTransferEncoded[^>]*>)[^<]*(<)",
        lambda m: m.group(1) + base64.b64encode(raw) + m.group(2),
        data,
    )
    envelope = decode_edxml(data)
    assert isinstance(envelope, DocumentEnvelope)
    [attachment] = envelope.body.attachments
    assert attachment.content is None
    assert attachment.size == len(raw)
    assert attachment.sha256 == hashlib.sha256(raw).hexdigest()
