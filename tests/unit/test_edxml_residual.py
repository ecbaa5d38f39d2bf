"""The residual is input too: anyone can put ``body.extra["edxml"]`` into a JSON envelope. Whatever
its shape, writing edXML from it ends in well-formed XML or in a CodecError, never in markup it
did not mean or a crash."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.codecs import canonical
from gateway.codecs.edxml import CARRY_KEY, NS, PACKAGE, decode_edxml, encode_edxml
from gateway.envelope import DocumentEnvelope, StatusEnvelope
from gateway.errors import CodecError

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _names(spec: Any) -> set[str]:
    """Every element name of the structure table."""
    names = set()
    for child in spec.children:
        names.add(child.name)
        if hasattr(child.spec, "children"):
            names |= _names(child.spec)
    return names


NAMES = sorted(_names(PACKAGE))
KEYS = st.sampled_from([*NAMES, "@", "#", "!", "~raw", "{urn:x}a", "xml:lang"])
KEYS |= st.text(max_size=8)
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["<x/>", "&amp;", "]]>", "cid:1", "000.00.00.H57", "a\x00b", "\ud800",
                       '<v:a xmlns:v="urn:v">t</v:a>', "<!DOCTYPE x><x/>", "2018/09/28"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=30,
)
RESIDUALS = st.fixed_dictionaries(
    {
        "edXMLEnvelope": st.fixed_dictionaries(
            {
                "edXMLHeader": st.fixed_dictionaries(
                    {"MessageHeader": JSON, "TraceHeaderList": JSON}
                ),
                "edXMLBody": JSON,
            }
        ),
        "AttachmentEncoded": JSON,
    }
)

DOCUMENT = canonical.decode(orjson.dumps({
    "kind": "document",
    "header": {"sender": "000.00.00.H57", "to": [{"agency": "000.00.31.H57"}]},
    "body": {
        "number": "15", "notation": "CT-UBND", "type": {"code": "CT", "name": "Chỉ thị"},
        "subject": "Về việc phòng, chống bão lũ",
        "promulgation": {"place": "Huế", "date": "2026-11-20"},
        "attachments": [{"name": "a.txt", "media_type": "text/plain", "size": 2,
                         "sha256": hashlib.sha256(b"hi").hexdigest(), "content": "aGk="}],
    },
}))
STATUS = canonical.decode(orjson.dumps({
    "kind": "status",
    "header": {"sender": "000.00.31.H57", "to": [{"agency": "000.00.00.H57"}]},
    "body": {"about": "4b6f9a7e-2c1d-4e8f-9a0b-1c2d3e4f5a6b", "code": "03",
             "at": "2026-11-20T08:00:00+07:00"},
}))


def _with(envelope: Any, residual: dict[str, Any]) -> Any:
    text = json.dumps(residual)  # escapes what orjson would refuse (a lone surrogate)
    if isinstance(envelope, DocumentEnvelope):
        return envelope.model_copy(
            update={"body": envelope.body.model_copy(update={"extra": {CARRY_KEY: text}})}
        )
    trace = [*envelope.header.trace, {"at": envelope.body.at, "event": CARRY_KEY, "detail": text}]
    return StatusEnvelope.model_validate(
        {**envelope.model_dump(), "header": {**envelope.header.model_dump(), "trace": trace}}
    )


def _written_or_refused(envelope: Any) -> bytes | None:
    try:
        return encode_edxml(envelope)
    except CodecError:
        return None


@PROPERTY
@given(RESIDUALS, st.booleans())
def test_any_residual_writes_well_formed_edxml_or_is_refused(
    residual: dict[str, Any], status: bool
) -> None:
    try:
        envelope = _with(STATUS if status else DOCUMENT, residual)
    except ValueError:
        return  # longer than the model allows a carried value to be: not an envelope
    written = _written_or_refused(envelope)
    if written is None:
        return
    root = etree.fromstring(written)  # well-formed, or this raises
    assert root.tag == f"{{{NS}}}edXML"
    # The typed values are the envelope's, whatever the residual said about them.
    header = root.find(f"{{{NS}}}edXMLEnvelope/{{{NS}}}edXMLHeader/{{{NS}}}MessageHeader")
    assert header is not None
    assert header.findtext(f"{{{NS}}}From/{{{NS}}}OrganId") == envelope.header.sender
    # Nothing the residual wrote escapes the elements it belongs to: no element of a name the
    # structure table does not know, outside the re-parsed extension fragments.
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.startswith(f"{{{NS}}}"):
            assert etree.QName(el).localname in NAMES or el.tag == f"{{{NS}}}edXML"
    try:
        decode_edxml(written)
    except CodecError:
        pass  # a residual can say things the standard refuses (two StatusCodes...): refused


def test_a_residual_fragment_cannot_stand_for_a_known_element() -> None:
    # A JSON client could otherwise add a To the gateway would then write, and sign, as real.
    forged = {"edXMLEnvelope": {"edXMLHeader": {"MessageHeader": {"#": [
        f'<edXML:To xmlns:edXML="{NS}"><edXML:OrganId>000.00.99.H57</edXML:OrganId></edXML:To>'
    ]}}}}
    assert _written_or_refused(_with(DOCUMENT, forged)) is None
    # A vendor element of its own, in any namespace, still travels.
    vendor = {"edXMLEnvelope": {"edXMLHeader": {"MessageHeader": {"#": [
        f'<edXML:VendorNote xmlns:edXML="{NS}">ghi chú</edXML:VendorNote>'
    ]}}}}
    written = _written_or_refused(_with(DOCUMENT, vendor))
    assert written is not None and b"VendorNote" in written
