"""Document operations in edXML: the typed fields (document_id, operation, operation_reason,
replaces, to_places) both ways, and message ids that tell a document's versions apart."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from lxml import etree

from gateway.codecs import canonical
from gateway.codecs.edxml import (
    EXT_NS,
    NS,
    carried,
    content_digest,
    decode_edxml,
    document_id,
    encode_edxml,
    message_id_for,
    operation_message_id,
    package_message_id,
)
from gateway.envelope import DocumentEnvelope, Operation, StatusEnvelope
from gateway.errors import SchemaViolation

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "fixtures" / "edxml" / "samples"
SCHEMA = etree.XMLSchema(etree.parse(str(ROOT / "schemas" / "edxml.xsd")))
E = f"{{{NS}}}"
MH = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader"
BUSSINESS = "/edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/Bussiness"

#: All four document samples carry the DocumentId of one document (Công văn 7816/VPCP-TTĐT).
DOCUMENT = "000.00.00.G22,2015/09/30,7816/VPCP-TTĐT"
REPLACED = "000.00.00.G22,2014/01/30,7806/VPCP-TTĐT"
PLACES = ["Cac bo va co quan ngang bo", "Uy ban nhan dan cac tinh, TP"]
OPERATIONS = {
    "edoc_new.edxml": (Operation.NEW, "Văn bản điện tử mới"),
    "edoc_revocation.edxml": (Operation.RECALL, "Thu hồi văn bản điện tử"),
    "edoc_update.edxml": (Operation.UPDATE, "Cập nhật văn bản điện tử"),
    "edoc_replacement.edxml": (Operation.REPLACE, "Văn bản thay thế"),
}


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def document(data: bytes) -> DocumentEnvelope:
    envelope = decode_edxml(data)
    assert isinstance(envelope, DocumentEnvelope)
    return envelope


def edited(data: bytes, edit: str | Callable[[etree._Element], None]) -> bytes:
    """``data`` with one change made on its tree (one of EDITS below, or its own)."""
    root = etree.fromstring(data)
    (EDITS[edit] if isinstance(edit, str) else edit)(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _first(root: etree._Element, path: str) -> etree._Element:
    """The first element at ``path`` (``e:`` is the edXML namespace)."""
    found = root.find(path, {"e": NS})
    assert found is not None, path
    return found


def _reindent(root: etree._Element) -> None:
    for el in root.iter():
        el.tail = None
        if len(el):
            el.text = None
    etree.indent(root, space="\t")


def _reverse(root: etree._Element) -> None:
    """Every element's children in reverse order, but repeated siblings (To, TraceHeader...)
    in their own order: that order is meaningful (recipients, hops)."""
    for el in root.iter():
        children = [c for c in el if isinstance(c.tag, str)]
        names = list(dict.fromkeys(c.tag for c in children))
        for child in children:
            el.remove(child)
        el.extend(sorted(children, key=lambda c: -names.index(c.tag)))


def _resign(root: etree._Element) -> None:
    value = next(root.iter(f"{E}DigestValue"))
    value.text = "AAAAAAAAAAAAAAAAAAAAAAAAAAA="


def _unsign(root: etree._Element) -> None:
    signature = next(root.iter(f"{E}Signature"))
    parent = signature.getparent()
    assert parent is not None
    parent.remove(signature)


def _relay(root: etree._Element) -> None:
    trace = next(root.iter(f"{E}TraceHeaderList"))
    hop = etree.SubElement(trace, f"{E}TraceHeader")
    etree.SubElement(hop, f"{E}OrganId").text = "000.00.00.H57"
    etree.SubElement(hop, f"{E}Timestamp").text = "2018/09/29 08:00:00"


def _reason(root: etree._Element) -> None:
    next(root.iter(f"{E}BussinessDocReason")).text = "Cập nhật lần hai: sửa trích yếu"


def _subject(root: etree._Element) -> None:
    next(root.iter(f"{E}Subject")).text = "V/v kết nối, liên thông phần mềm (bản sửa)"


EDITS = {
    "reindented": _reindent,
    "reordered": _reverse,
    "signature changed": _resign,
    "signature removed": _unsign,
    "relayed with one more TraceHeader": _relay,
    "another reason": _reason,
    "another subject": _subject,
}
SAME = ["reindented", "reordered", "signature changed", "signature removed",
        "relayed with one more TraceHeader"]


# -- the typed fields, from the samples -----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_the_samples_fill_the_typed_fields(name: str) -> None:
    envelope = document(sample(name))
    operation, reason = OPERATIONS[name]
    body = envelope.body
    assert (body.document_id, body.operation) == (DOCUMENT, operation)
    assert body.operation_reason == reason
    assert body.to_places == PLACES
    assert body.replaces == ([REPLACED, REPLACED] if operation is Operation.REPLACE else [])
    # What the Envelope now has a field for is not kept twice in the residual...
    residual = carried(envelope)
    mh = residual["edXMLEnvelope"]["edXMLHeader"]["MessageHeader"]
    assert "DocumentId" not in mh and "ToPlaces" not in mh
    bussiness = residual["edXMLEnvelope"]["edXMLHeader"]["TraceHeaderList"]["Bussiness"]
    assert {"BussinessDocType", "BussinessDocReason"}.isdisjoint(bussiness)
    # ...and what it has none for still is, next to it.
    assert bussiness["Paper"] == "0" and bussiness["StaffInfo"]["Staff"] == "Nguyễn Thị Ngọc Trâm"
    written = encode_edxml(envelope)
    assert SCHEMA.validate(etree.fromstring(written)), SCHEMA.error_log
    root = etree.fromstring(written)
    assert _first(root, ".//e:MessageHeader/e:DocumentId").text == DOCUMENT
    places = root.findall(f".//{E}ToPlaces/{E}Place")
    assert [p.text for p in places] == PLACES
    code = str(list(Operation).index(operation))  # 0 new, 1 recall, 2 update, 3 replace
    assert _first(root, ".//e:Bussiness/e:BussinessDocType").text == code
    assert _first(root, ".//e:Bussiness/e:BussinessDocReason").text == reason


def test_a_replacement_keeps_each_replaced_documents_recipients() -> None:
    envelope = document(sample("edoc_replacement.edxml"))
    infos = carried(envelope)["edXMLEnvelope"]["edXMLHeader"]["TraceHeaderList"]["Bussiness"][
        "ReplacementInfoList"
    ]["ReplacementInfo"]
    assert [info["OrganIdList"]["OrganId"] for info in infos] == [
        ["000.00.00.H41", "000.00.00.H14"],
        ["000.00.00.H41", "000.00.00.H14"],
    ]
    assert all("DocumentId" not in info for info in infos)  # in body.replaces, aligned by index
    # Replace the first one only: the entry keeps its OrganIdList; the stale second one goes.
    one = envelope.model_copy(
        update={"body": envelope.body.model_copy(update={"replaces": ["000.00.00.G22,x"]})}
    )
    root = etree.fromstring(encode_edxml(one))
    [info] = root.iter(f"{E}ReplacementInfo")
    assert _first(info, "./e:DocumentId").text == "000.00.00.G22,x"
    assert [o.text for o in info.iter(f"{E}OrganId")] == ["000.00.00.H41", "000.00.00.H14"]
    assert decode_edxml(etree.tostring(root)) == decode_edxml(encode_edxml(one))
    # No longer a replace: the replaced documents' list is not written at all.
    update = envelope.model_copy(
        update={"body": envelope.body.model_copy(
            update={"operation": Operation.UPDATE, "replaces": []})}
    )
    written = encode_edxml(update)
    assert b"ReplacementInfo" not in written
    assert b"<edXML:BussinessDocType>2</edXML:BussinessDocType>" in written


def test_another_operations_replacement_list_stays_as_it_came() -> None:
    def listed(root: etree._Element) -> None:
        bussiness = next(root.iter(f"{E}Bussiness"))
        info = etree.SubElement(etree.SubElement(bussiness, f"{E}ReplacementInfoList"),
                                f"{E}ReplacementInfo")
        etree.SubElement(info, f"{E}DocumentId").text = REPLACED

    envelope = document(edited(sample("edoc_update.edxml"), listed))
    assert envelope.body.operation is Operation.UPDATE and envelope.body.replaces == []
    written = encode_edxml(envelope)
    assert f"<edXML:DocumentId>{REPLACED}</edXML:DocumentId>".encode() in written
    assert decode_edxml(written) == envelope


def test_an_empty_place_is_no_place_and_the_list_comes_back_as_it_was() -> None:
    def empty_place(root: etree._Element) -> None:
        places = next(root.iter(f"{E}ToPlaces"))
        places.insert(1, etree.Element(f"{E}Place"))

    envelope = document(edited(sample("edoc_new.edxml"), empty_place))
    assert envelope.body.to_places == PLACES
    root = etree.fromstring(encode_edxml(envelope))
    assert [p.text for p in root.iterfind(".//e:ToPlaces/e:Place", {"e": NS})] == [
        PLACES[0], None, PLACES[1]
    ]
    # Edited, the raw list is stale: the new one is written.
    moved = envelope.model_copy(
        update={"body": envelope.body.model_copy(update={"to_places": ["Sở TT&TT"]})}
    )
    written = encode_edxml(moved)
    assert b"<edXML:Place>S\xe1\xbb\x9f TT&amp;TT</edXML:Place>" in written
    assert PLACES[0].encode() not in written
    assert document(written).body.to_places == ["Sở TT&TT"]


# -- message ids ----------------------------------------------------------------------------------
def test_a_new_document_is_the_message_its_document_id_names() -> None:
    new = document(sample("edoc_new.edxml"))
    assert new.header.id == message_id_for(DOCUMENT)
    assert package_message_id(new) == new.header.id


def test_each_operation_on_one_document_is_a_message_of_its_own() -> None:
    ids: dict[str, uuid.UUID | None] = {}
    for name, (operation, _) in OPERATIONS.items():
        envelope = document(sample(name))
        assert document(sample(name)).header.id == envelope.header.id  # deterministic
        if operation is not Operation.NEW:
            assert envelope.header.id == operation_message_id(
                DOCUMENT, operation, content_digest(envelope)
            )
        ids[name] = envelope.header.id
    ids["second update"] = document(edited(sample("edoc_update.edxml"), "another reason")).header.id
    ids["third update"] = document(edited(sample("edoc_update.edxml"), "another subject")).header.id
    assert None not in ids.values()
    assert len(set(ids.values())) == len(ids) == 6, ids


@pytest.mark.parametrize("edit", SAME)
@pytest.mark.parametrize(
    "name", ["edoc_revocation.edxml", "edoc_update.edxml", "edoc_replacement.edxml"]
)
def test_the_same_package_resent_is_the_same_message(name: str, edit: str) -> None:
    # Whitespace, element order, the signature and the hops on the way are not its content.
    again = edited(sample(name), edit)
    assert again != sample(name)
    assert document(again).header.id == document(sample(name)).header.id


def test_a_status_names_the_document_whichever_version_it_answers() -> None:
    recall = document(sample("edoc_revocation.edxml"))
    for name in ("status_cancellation_13.edxml", "status_change-acceptance_15.edxml",
                 "status_change-rejection_16.edxml"):
        status = decode_edxml(sample(name))
        assert isinstance(status, StatusEnvelope)
        assert status.body.about == message_id_for(DOCUMENT)  # the original document's id
        assert status.body.about != recall.header.id
        assert b"<edXML:DocumentId>" + DOCUMENT.encode() in encode_edxml(status)


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_ids_survive_a_trip_without_the_gateway_extension(name: str) -> None:
    envelope = document(sample(name))
    written = encode_edxml(envelope)
    assert b"lt:Envelope" not in written  # the id is the one decoding derives
    plain = encode_edxml(envelope, gateway_extension=False)
    assert document(written).header.id == document(plain).header.id == envelope.header.id


def test_an_edited_operation_keeps_its_id_through_the_extension() -> None:
    envelope = document(sample("edoc_update.edxml"))
    assert envelope.header.id is not None
    changed = envelope.model_copy(
        update={"body": envelope.body.model_copy(update={"subject": "Trích yếu đã sửa"})}
    )
    written = encode_edxml(changed)
    assert f'<lt:Envelope xmlns:lt="{EXT_NS}">'.encode() in written  # its content moved on
    assert document(written) == changed
    assert document(encode_edxml(changed, gateway_extension=False)).header.id == (
        package_message_id(changed)
    ) != envelope.header.id


# -- envelopes born as JSON -----------------------------------------------------------------------
def _json_document(**body: object) -> DocumentEnvelope:
    envelope = canonical.decode(orjson.dumps({
        "kind": "document",
        "header": {"sender": "000.00.00.H57", "to": [{"agency": "000.00.31.H57"}],
                   "id": "4b6f9a7e-2c1d-4e8f-9a0b-1c2d3e4f5a6b"},
        "body": {
            "number": "15", "notation": "CT-UBND",
            "type": {"code": "CT", "name": "Chỉ thị"},
            "subject": "Về việc tăng cường công tác phòng, chống bão lũ",
            "promulgation": {"place": "Thừa Thiên Huế", "date": "2026-11-20"},
            **body,
        },
    }))
    assert isinstance(envelope, DocumentEnvelope)
    return envelope


def test_a_json_born_operation_is_written_where_the_standard_puts_it() -> None:
    envelope = _json_document(
        document_id="000.00.00.H57,2026/11/20,15/CT-UBND", operation="replace",
        operation_reason="Thay thế Chỉ thị 14/CT-UBND", to_places=["Như trên", "Lưu: VT"],
        replaces=["000.00.00.H57,2026/11/01,14/CT-UBND"],
    )
    written = encode_edxml(envelope)
    assert SCHEMA.validate(etree.fromstring(written)), SCHEMA.error_log
    root = etree.fromstring(written)
    assert _first(root, ".//e:MessageHeader/e:DocumentId").text == envelope.body.document_id
    bussiness = _first(root, ".//e:TraceHeaderList/e:Bussiness")
    assert [etree.QName(c).localname for c in bussiness] == [
        "BussinessDocType", "BussinessDocReason", "ReplacementInfoList"
    ]
    assert [c.text for c in bussiness.iter(f"{E}DocumentId")] == envelope.body.replaces
    assert [p.text for p in root.iter(f"{E}Place")] == ["Thừa Thiên Huế", "Như trên", "Lưu: VT"]
    back = document(written)
    assert back == envelope  # header.id (chosen by its client) travels in the extension
    assert carried(back) == {}  # everything written came from typed fields
    # The same package without the extension: the id a package of it gets.
    plain = document(encode_edxml(envelope, gateway_extension=False))
    assert plain.header.id == package_message_id(envelope)
    assert plain.model_copy(update={"header": envelope.header}) == envelope


def test_a_json_born_new_document_without_document_id_writes_what_it_always_did() -> None:
    envelope = _json_document()
    assert envelope.body.document_id is None
    written = encode_edxml(envelope)
    assert document_id(envelope) == str(envelope.header.id)
    assert f"<edXML:DocumentId>{envelope.header.id}</edXML:DocumentId>".encode() in written
    assert b"Bussiness" not in written  # a new document with no reason needs no block
    assert document(written) == envelope
    peer = document(encode_edxml(envelope, gateway_extension=False))
    assert (peer.header.id, peer.body.document_id) == (envelope.header.id, str(envelope.header.id))


def test_a_json_born_update_needs_nothing_but_the_standards_elements() -> None:
    envelope = _json_document(document_id="000.00.00.H57,2026/11/20,15/CT-UBND",
                              operation="update", operation_reason="Sửa lỗi chính tả")
    native = envelope.model_copy(
        update={"header": envelope.header.model_copy(update={"id": package_message_id(envelope)})}
    )
    written = encode_edxml(native)
    assert b"lt:Envelope" not in written
    assert b"<edXML:BussinessDocType>2</edXML:BussinessDocType>" in written
    assert document(written) == native


# -- what is refused ------------------------------------------------------------------------------
def _refused(data: bytes) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as info:
        decode_edxml(data)
    return info.value


def test_a_recall_without_its_document_id_is_refused_naming_the_business_block() -> None:
    data = sample("edoc_revocation.edxml").replace(
        f"<edXML:DocumentId>{DOCUMENT}</edXML:DocumentId>".encode(), b"<edXML:DocumentId/>"
    )
    exc = _refused(data)
    assert exc.errors[0].pointer == BUSSINESS
    assert "recall needs the document_id" in exc.errors[0].detail
    assert re.match(r"line \d+: /body:", exc.errors[0].detail)


def test_a_replacement_entry_without_its_document_id_is_refused_naming_it() -> None:
    data = sample("edoc_replacement.edxml")
    first = data.index(f"<edXML:DocumentId>{REPLACED}</edXML:DocumentId>".encode())
    data = data[:first] + data[first:].replace(
        f"<edXML:DocumentId>{REPLACED}</edXML:DocumentId>".encode(), b"", 1
    )
    exc = _refused(data)
    assert exc.errors[0].pointer == f"{BUSSINESS}/ReplacementInfoList/ReplacementInfo[1]/DocumentId"
    assert "required element DocumentId is missing" in exc.errors[0].detail


def test_an_unknown_operation_is_refused_by_the_schema() -> None:
    data = sample("edoc_update.edxml").replace(
        b"<edXML:BussinessDocType>2<", b"<edXML:BussinessDocType>5<"
    )
    exc = _refused(data)
    assert exc.errors[0].pointer == f"{BUSSINESS}/BussinessDocType"
    assert exc.errors[0].detail.startswith("line 92:") and "BussinessDocType" in exc.detail


def test_a_document_id_longer_than_the_model_allows_is_refused_naming_it() -> None:
    data = sample("edoc_new.edxml").replace(DOCUMENT.encode(), b"x" * 300, 1)
    exc = _refused(data)
    assert exc.errors[0].pointer == f"{MH}/DocumentId"
    assert "/body/document_id" in exc.errors[0].detail
