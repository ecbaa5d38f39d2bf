"""The walk's checks stand in for the XSD on every decode: what the schema refuses, the codec
refuses (with the schema's own error), and what it allows, the codec reads without it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from gateway.codecs import xmlsafe
from gateway.codecs.edxml import NS, PACKAGE, _Walk, decode_edxml, encode_edxml
from gateway.errors import SchemaViolation

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "fixtures" / "edxml" / "samples"
FIXTURES = ROOT / "tests" / "fixtures" / "edxml"
SCHEMA = etree.XMLSchema(etree.parse(str(ROOT / "schemas" / "edxml.xsd")))
E = f"{{{NS}}}"
STATUS = "status_acceptance_03.edxml"
DOCUMENT = "edoc_update.edxml"
Edit = Callable[[etree._Element], None]


def _el(root: etree._Element, name: str) -> etree._Element:
    return next(root.iter(f"{E}{name}"))


def _set(name: str, text: str) -> Edit:
    def edit(root: etree._Element) -> None:
        _el(root, name).text = text

    return edit


def _attribute(name: str, key: str, value: str = "x") -> Edit:
    def edit(root: etree._Element) -> None:
        _el(root, name).set(key, value)

    return edit


def _text_in(name: str, where: str) -> Edit:
    def edit(root: etree._Element) -> None:
        el = _el(root, name)
        if where == "first":
            el.text = "chữ lạc"
        elif where == "between":
            el[0].tail = " chữ lạc "
        else:
            el[-1].tail = "chữ lạc"

    return edit


def _child_in(name: str) -> Edit:
    def edit(root: etree._Element) -> None:
        etree.SubElement(_el(root, name), "{urn:vendor}note").text = "x"

    return edit


def _empty_complex_with_text(root: etree._Element) -> None:
    code = _el(root, "StaffInfo")
    for child in list(code):
        code.remove(child)
    code.text = "Nguyen thi ngoc tram"


#: Changes the XSD refuses: (sample, edit, the element the error names).
REFUSED: dict[str, tuple[str, Edit, str]] = {
    "text before the first child": (STATUS, _text_in("From", "first"), "From"),
    "text between children": (STATUS, _text_in("From", "between"), "From"),
    "text after the last child": (DOCUMENT, _text_in("Code", "last"), "Code"),
    "text in an element that may hold only elements": (STATUS, _empty_complex_with_text,
                                                        "StaffInfo"),
    "an attribute on a leaf": (STATUS, _attribute("Description", "lang"), "Description"),
    "a namespaced attribute on a leaf": (
        STATUS, _attribute("Description", "{urn:vendor}lang"), "Description"
    ),
    "an unknown plain attribute": (STATUS, _attribute("From", "kind"), "From"),
    "an attribute in the edXML namespace": (STATUS, _attribute("From", f"{E}kind"), "From"),
    "xsi:type": (
        STATUS, _attribute("From", "{http://www.w3.org/2001/XMLSchema-instance}type", "x"), "From"
    ),
    "an element inside a leaf": (STATUS, _child_in("Description"), "Description"),
    "a timestamp in another format": (STATUS, _set("Timestamp", "20/09/2015 11:08"), "Timestamp"),
    "a timestamp with Arabic-Indic digits": (
        STATUS, _set("Timestamp", "٢٠١٥/09/20 11:08:36"), "Timestamp"
    ),
    "a no-break space around a timestamp": (
        STATUS, _set("Timestamp", "\u00a02015/09/20 11:08:36"), "Timestamp"
    ),
    "a status code the standard has not": (STATUS, _set("StatusCode", "07"), "StatusCode"),
    "a due date in another format": (DOCUMENT, _set("DueDate", "28-09-2018"), "DueDate"),
    "a priority above 4": (DOCUMENT, _set("Priority", "9"), "Priority"),
    "an operation above 3": (DOCUMENT, _set("BussinessDocType", "4"), "BussinessDocType"),
    "an empty operation": (DOCUMENT, _set("BussinessDocType", ""), "BussinessDocType"),
}

#: Unusual but valid: the schema accepts them, so must the codec's checks.
ALLOWED: dict[str, tuple[str, Edit]] = {
    "an attribute of another namespace on a complex element": (
        STATUS, _attribute("From", "{urn:vendor}kind", "chính")
    ),
    "xml:lang on a complex element": (
        STATUS, _attribute("From", "{http://www.w3.org/XML/1998/namespace}lang", "vi")
    ),
    "the manifest's version": (DOCUMENT, _attribute("edXMLManifest", "version", "2.0")),
    "an empty due date": (DOCUMENT, _set("DueDate", "")),
    "an empty priority": (DOCUMENT, _set("Priority", "")),
    "a typed value among XML spaces": (DOCUMENT, _set("BussinessDocType", "\n\t 2 \r\n")),
    "tabs and carriage returns between elements": (STATUS, _text_in("From", "between")),
}
ALLOWED["a vendor element with xml:lang"] = (STATUS, lambda root: _el(root, "MessageHeader").append(
    etree.fromstring('<v:Note xmlns:v="urn:vendor" xml:lang="vi">Ghi chú</v:Note>')
))
ALLOWED["tabs and carriage returns between elements"] = (
    STATUS, lambda root: setattr(_el(root, "From")[0], "tail", "\r\n\t\t ")
)


def _mutated(name: str, edit: Edit) -> bytes:
    root = etree.fromstring((SAMPLES / name).read_bytes())
    edit(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _suspicious(data: bytes) -> bool:
    walk = _Walk()
    walk.node(xmlsafe.parse(data), PACKAGE)
    return walk.suspicious


@pytest.mark.parametrize(
    "name", sorted(p.name for p in SAMPLES.glob("*.edxml") if p.name != "edoc.edxml")
)
def test_sound_samples_need_no_schema_validation(name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    assert SCHEMA.validate(etree.fromstring(data))
    assert not _suspicious(data)  # the fast path: the walk found nothing to ask the XSD about


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_the_schema_refuses_the_codec_refuses_with_the_schemas_error(case: str) -> None:
    name, edit, element = REFUSED[case]
    data = _mutated(name, edit)
    assert not SCHEMA.validate(etree.fromstring(data))
    assert _suspicious(data)
    with pytest.raises(SchemaViolation) as info:
        decode_edxml(data)
    first = info.value.errors[0]
    assert first.pointer.rsplit("/", 1)[-1].split("[")[0] == element, first
    assert first.detail.startswith("line ")
    assert "does not match schemas/edxml.xsd" in info.value.detail


@pytest.mark.parametrize("case", sorted(ALLOWED))
def test_what_the_schema_allows_the_codec_reads(case: str) -> None:
    name, edit = ALLOWED[case]
    data = _mutated(name, edit)
    assert SCHEMA.validate(etree.fromstring(data)), SCHEMA.error_log
    envelope = decode_edxml(data)
    written = encode_edxml(envelope)
    assert SCHEMA.validate(etree.fromstring(written)), SCHEMA.error_log
    assert decode_edxml(written) == envelope


def test_a_timestamp_the_schema_allows_but_the_standard_does_not_is_refused_by_the_codec() -> None:
    # xs:token collapses the double space, so the XSD accepts it; yyyy/MM/dd HH:mm:ss does not.
    data = _mutated(STATUS, _set("Timestamp", "2015/09/20  11:08:36"))
    assert SCHEMA.validate(etree.fromstring(data))
    with pytest.raises(SchemaViolation, match="is not a timestamp") as info:
        decode_edxml(data)
    assert info.value.errors[0].pointer.endswith("/MessageHeader/Timestamp")


def test_a_status_with_an_attachment_is_checked_by_the_schema() -> None:
    # A status does not decode attachments, so their base64 is the XSD's to check.
    def attach(root: etree._Element) -> None:
        encoded = etree.SubElement(root, f"{E}AttachmentEncoded")
        attachment = etree.SubElement(encoded, f"{E}Attachment")
        etree.SubElement(attachment, f"{E}ContentTransferEncoded").text = "not base64!"

    data = _mutated(STATUS, attach)
    assert not SCHEMA.validate(etree.fromstring(data))
    with pytest.raises(SchemaViolation, match="base64Binary"):
        decode_edxml(data)


def test_vendor_packages_validate_once_their_extensions_are_set_aside() -> None:
    data = (FIXTURES / "edoc_vendor_extensions.edxml").read_bytes()
    assert not SCHEMA.validate(etree.fromstring(data))  # an unknown edXML element in OtherInfo
    root = xmlsafe.parse(data)
    walk = _Walk()
    walk.node(root, PACKAGE)
    assert SCHEMA.validate(root), SCHEMA.error_log  # what the walk left is schema-valid
    assert not walk.suspicious
