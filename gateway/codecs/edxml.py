"""The edXML codec (QCVN 102:2016/BTTTT): bytes <-> Envelope, both ways, pure.

``decode_edxml(data) -> AnyEnvelope`` and ``encode_edxml(envelope) -> bytes`` translate document
packages (văn bản) and status packages (trạng thái). ``iter_attachments(stream, open_sink)``
streams the attachments of a package too large for memory into sinks (incremental base64).
``xsd_text()`` is the XSD of ``schemas/edxml.xsd``, generated from the same structure table the
codec walks, so the two cannot drift.

Decoding
    1. hardened parse (:mod:`gateway.codecs.xmlsafe`: no DTD, no entities, no network, limits);
    2. lenient repairs of known vendor defects (below), each with its own test;
    3. one walk over the tree with the structure table :data:`PACKAGE`: known elements are read in
       any order; every element the table does not know (vendor extensions, in any namespace) is
       set aside as a serialized XML fragment under its parent and taken out of the tree;
    4. XSD validation of what is left (``schemas/edxml.xsd``: XSD 1.0 cannot say "these children,
       in any order, with these counts", so it checks names, nesting and value formats and the
       codec checks the counts);
    5. mapping to the Envelope (table below) and pydantic validation.
    Errors are :class:`MalformedInput` (not XML, hostile XML) or :class:`SchemaViolation` (XML that
    breaks the structure or the Envelope's rules); each :class:`FieldError` pointer is the element
    path (``/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/To[2]/OrganId``) and its detail starts
    with ``line N``.

Encoding writes the standard's element order (From, To, Code, PromulgationInfo, DocumentType,
Subject, Content, SignerInfo, DueDate, ToPlaces, OtherInfo, ResponseFor, SteeringType, DocumentId;
for statuses From, ResponseFor, StaffInfo, StatusCode, Description, Timestamp), every element
with the ``edXML:`` prefix, dates ``yyyy/MM/dd`` and timestamps ``yyyy/MM/dd HH:mm:ss`` in
Vietnam time (+07:00).

What maps where (document packages)::

    MessageHeader/From/OrganId                  header.sender
    MessageHeader/To[i]/OrganId                 header.to[i] (AgencyAddress)
    MessageHeader/DocumentId                    header.id = message_id_for(DocumentId): a
                                                DocumentId written as a UUID is the id itself,
                                                any other maps to a uuid5; written back as it
                                                came, else (an envelope born elsewhere) as
                                                str(header.id), see document_id()
    MessageHeader/Code/CodeNumber, CodeNotation body.number, body.notation
    MessageHeader/PromulgationInfo/Place, Date  body.promulgation.place, .date
    MessageHeader/DocumentType/Type, TypeName   body.type.code, body.type.name
    MessageHeader/Subject, Content              body.subject, body.content
    MessageHeader/SignerInfo/FullName, Position body.signer.name, .position
    MessageHeader/DueDate                       header.due (that day, 23:59:59+07:00)
    MessageHeader/OtherInfo/Priority            header.priority (0 normal, 1 urgent, 2 very
                                                urgent, 3 flash; 4 "hỏa tốc hẹn giờ" reads as flash)
    MessageHeader/ResponseFor[i]/DocumentId     header.references (message_id_for, non-empty ones)
    TraceHeaderList/TraceHeader[i]              header.trace[i]: at=Timestamp, agency=OrganId,
                                                event "edxml.trace"
    edXMLManifest/Reference + AttachmentEncoded/Attachment, joined by ContentId (with or without
    ``cid:``), in manifest order     body.attachments: name=AttachmentName, media_type=ContentType,
                                                description=Description, content=base64 (whitespace
                                                removed), size and sha256 of the decoded bytes
    everything else                             the residual (below)

Status packages::

    MessageHeader/From/OrganId                  header.sender
    MessageHeader/ResponseFor/OrganId           header.to[0] (the status goes back there)
    MessageHeader/ResponseFor/DocumentId        body.about = message_id_for(DocumentId)
    MessageHeader/StatusCode                    body.code (01 02 03 04 05 06 13 15 16)
    MessageHeader/Timestamp                     body.at
    MessageHeader/Description                   body.comment (required for 02 and 16)
    MessageHeader/StaffInfo/Staff               body.by
    everything else                             the residual (below)

The residual. Whatever the Envelope has no field for (From/To contact details, OrganizationInCharge,
DocumentId's own text, TypeDetail, Competence, ToPlaces, OtherInfo but Priority, ResponseFor,
SteeringType, the whole Bussiness block (BussinessDocType 0 new, 1 recall, 2 update, 3 replace;
ReplacementInfoList...), StaffInfo but Staff, ContentId, manifest attributes, vendor extension
fragments, and a raw value whenever the Envelope's value would not write it back identically,
e.g. a legacy agency code) is kept as one JSON object mirroring the XML (element name -> text,
object, or list for repeated elements; ``"@"`` attributes; ``"#"`` extension fragments). Until the
model has a place for it (see :data:`CARRY_KEY`) it travels in:

- documents: ``body.extra["edxml"]`` (and ``"edxml.2"``, ``"edxml.3"``... when longer than a value
  may be);
- statuses: ``header.trace`` entries with event ``"edxml"`` (detail = the JSON, at = body.at).

Encoding starts from the residual and writes the Envelope's values into it: a raw residual value
is written back only when it decodes to the Envelope's current value, so an edited envelope never
writes stale data.

Envelope fields edXML has no element for (header.created; statuses' header.id, priority, due and
references; addresses of a subtree; trace entries other than TraceHeaders; attachments stored by
reference; ``extra`` entries of other systems; a value edXML can only write approximately, such as
a due instant that is not the end of a day) are written, only when present, as one extension
element ``<lt:Envelope xmlns:lt="https://lienthong.gov.vn/ns/edxml-ext/1">`` holding their
canonical JSON, at the end of MessageHeader; ``gateway_extension=False`` leaves it out for a peer
that refuses foreign elements (and those fields are then lost on that hop).

Deliberate decisions (each has a test):

- the XML-DSig ``Signature`` (in the dsig namespace or, as some vendors write it, in the edXML
  namespace) is not carried: it is verified on the raw bytes before decoding, and a signature
  copied into re-written XML could only fail verification; the gateway signs what it emits;
- comments and processing instructions are dropped; leaf text is whitespace-stripped;
- legacy three-group agency codes (``28.22.H17``) read as ``000.28.22.H17``, the raw code kept;
- lenient repairs, applied only to these known vendor defects: a ``From`` nested in ``From`` (the
  inner one is the sender; when the outer is never closed, the tree libxml2 recovers is used and
  the siblings it swallowed are moved back into MessageHeader), and an undeclared ``xlink:``
  prefix (read as the XLink namespace). Any other well-formedness error is refused;
- an attachment whose base64 is not valid is refused (``edoc.edxml`` carries a JMeter placeholder
  ``${__StringFromFile(test.txt,,,)}`` and is rejected for it, naming line 131).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any, Protocol, TypeVar

import orjson
import pydantic
from lxml import etree

from gateway.codecs import xmlsafe
from gateway.codecs.xmlsafe import DEFAULT_LIMITS, XmlLimits, element_path, local_name
from gateway.envelope import (
    AGENCY_CODE_RE,
    AgencyAddress,
    AnyEnvelope,
    Attachment,
    DocumentEnvelope,
    Priority,
    StatusEnvelope,
    TraceEntry,
)
from gateway.errors import FieldError, MalformedInput, SchemaViolation

__all__ = [
    "CARRY_KEY",
    "EXT_NS",
    "ICT",
    "NS",
    "TRACE_EVENT",
    "StreamedAttachment",
    "carried",
    "decode_edxml",
    "document_id",
    "encode_edxml",
    "iter_attachments",
    "message_id_for",
    "xsd_text",
]

NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
XLINK_NS = "http://www.w3.org/1999/xlink"
EXT_NS = "https://lienthong.gov.vn/ns/edxml-ext/1"
ICT = timezone(timedelta(hours=7), "ICT")  # giờ Việt Nam: edXML dates and times are in it

#: Where the residual travels until the model has a field for it (see the module docstring).
CARRY_KEY = "edxml"
#: The trace event of a TraceHeader.
TRACE_EVENT = "edxml.trace"
#: uuid5 namespace of message ids derived from edXML DocumentIds.
DOCUMENT_ID_NAMESPACE = uuid.UUID("6f1c2a8e-5d3b-5e0a-9c47-3b1d2e4f5a60")

_CARRY_CHUNK = 3990  # extra values and trace details hold at most 4000 characters
_INLINE_BASE64 = 1_400_000  # Attachment.content's limit; above it: by reference (sha256)
_FRAGMENT_LIMITS = XmlLimits(max_bytes=1024 * 1024, max_text=1024 * 1024)
_DATE_RE = re.compile(r"^(\d{4})/(\d{2})/(\d{2})$")
_TIMESTAMP_RE = re.compile(r"^(\d{4})/(\d{2})/(\d{2}) (\d{2}):(\d{2}):(\d{2})$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LEGACY_AGENCY_RE = re.compile(r"^\d{2}\.\d{2}\.[A-Z]\d{2}$")
_PRIORITIES = {"0": Priority.NORMAL, "1": Priority.URGENT, "2": Priority.VERY_URGENT}
_PRIORITIES |= {"3": Priority.FLASH, "4": Priority.FLASH}
_PRIORITY_CODES = {Priority.NORMAL: "0", Priority.URGENT: "1", Priority.VERY_URGENT: "2"}
_PRIORITY_CODES |= {Priority.FLASH: "3"}
_T = TypeVar("_T")

etree.register_namespace("xlink", XLINK_NS)  # the conventional prefix, not ns0
STATUS_CODES = ("01", "02", "03", "04", "05", "06", "13", "15", "16")


# -- the structure table --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Leaf:
    """A text-only element; ``type`` names its XSD simple type."""

    type: str = "xs:string"


@dataclass(frozen=True, slots=True)
class AnyContent:
    """An element whose content is not the codec's (the XML-DSig Signature)."""


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    spec: Leaf | Complex | AnyContent
    many: bool = False


@dataclass(frozen=True, slots=True)
class Complex:
    """An element with element children, written in ``children`` order."""

    type_name: str
    children: tuple[Child, ...]
    attributes: tuple[str, ...] = ()
    by_name: dict[str, Child] = field(init=False, repr=False, compare=False, hash=False)
    by_tag: dict[str, Child] = field(init=False, repr=False, compare=False, hash=False)
    order: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {c.name: c for c in self.children})
        object.__setattr__(self, "order", {c.name: i for i, c in enumerate(self.children)})
        object.__setattr__(self, "by_tag", {f"{{{NS}}}{c.name}": c for c in self.children})


TEXT = Leaf()
DATE = Leaf("DateOrEmpty")
TIMESTAMP = Leaf("Timestamp")


def _leaves(*names: str) -> tuple[Child, ...]:
    return tuple(Child(n, TEXT) for n in names)


ORGAN = Complex(
    "Organ",
    _leaves(
        "OrganId",
        "OrganizationInCharge",
        "OrganName",
        "OrganAdd",
        "Email",
        "Telephone",
        "Fax",
        "Website",
    ),
)
STAFF = Complex("StaffInfo", _leaves("Department", "Staff", "Mobile", "Email"))
RESPONSE_FOR = Complex(
    "ResponseFor",
    (
        Child("OrganId", TEXT),
        Child("Code", TEXT),
        Child("PromulgationDate", DATE),
        Child("DocumentId", TEXT),
    ),
)
MESSAGE_HEADER = Complex(
    "MessageHeader",
    (
        Child("From", ORGAN),
        Child("To", ORGAN, many=True),
        Child("Code", Complex("Code", _leaves("CodeNumber", "CodeNotation"))),
        Child(
            "PromulgationInfo",
            Complex("PromulgationInfo", (Child("Place", TEXT), Child("PromulgationDate", DATE))),
        ),
        Child("DocumentType", Complex("DocumentType", _leaves("Type", "TypeDetail", "TypeName"))),
        Child("Subject", TEXT),
        Child("Content", TEXT),
        Child("SignerInfo", Complex("SignerInfo", _leaves("Competence", "Position", "FullName"))),
        Child("DueDate", DATE),
        Child("ToPlaces", Complex("ToPlaces", (Child("Place", TEXT, many=True),))),
        Child(
            "OtherInfo",
            Complex(
                "OtherInfo",
                (
                    Child("Priority", Leaf("PriorityCode")),
                    *_leaves(
                        "SphereOfPromulgation",
                        "TyperNotation",
                        "PromulgationAmount",
                        "PageAmount",
                        "Direction",
                    ),
                    Child("Appendixes", Complex("Appendixes", (Child("Appendix", TEXT, True),))),
                ),
            ),
        ),
        Child("ResponseFor", RESPONSE_FOR, many=True),
        Child("StaffInfo", STAFF),
        Child("StatusCode", Leaf("StatusCode")),
        Child("Description", TEXT),
        Child("Timestamp", TIMESTAMP),
        Child("SteeringType", TEXT),
        Child("DocumentId", TEXT),
    ),
)
BUSSINESS = Complex(
    "Bussiness",
    (
        Child("DocumentId", TEXT),
        Child("BussinessDocType", Leaf("BussinessDocType")),
        Child("BussinessDocReason", TEXT),
        Child("Paper", TEXT),
        Child(
            "BussinessDocumentInfo",
            Complex(
                "BussinessDocumentInfo",
                (
                    *_leaves("DocumentInfo", "DocumentReceiver"),
                    Child(
                        "ReceiverList",
                        Complex(
                            "ReceiverList",
                            (
                                Child(
                                    "Receiver",
                                    Complex("Receiver", _leaves("OrganId", "ReceiverType")),
                                    many=True,
                                ),
                            ),
                        ),
                    ),
                ),
            ),
        ),
        Child(
            "ReplacementInfoList",
            Complex(
                "ReplacementInfoList",
                (
                    Child(
                        "ReplacementInfo",
                        Complex(
                            "ReplacementInfo",
                            (
                                Child("DocumentId", TEXT),
                                Child(
                                    "OrganIdList",
                                    Complex("OrganIdList", (Child("OrganId", TEXT, many=True),)),
                                ),
                            ),
                        ),
                        many=True,
                    ),
                ),
            ),
        ),
        Child("StaffInfo", STAFF),
    ),
)
TRACE_HEADER_LIST = Complex(
    "TraceHeaderList",
    (
        Child(
            "TraceHeader",
            Complex("TraceHeader", (Child("OrganId", TEXT), Child("Timestamp", TIMESTAMP))),
            many=True,
        ),
        Child("Bussiness", BUSSINESS),
    ),
)
REFERENCE = Complex(
    "Reference", _leaves("ContentId", "ContentType", "Description", "AttachmentName")
)
ATTACHMENT = Complex(
    "Attachment",
    (
        *_leaves("ContentId", "AttachmentName", "Description", "ContentType"),
        Child("ContentTransferEncoded", Leaf("xs:base64Binary")),
    ),
)
PACKAGE = Complex(
    "edXML",
    (
        Child(
            "edXMLEnvelope",
            Complex(
                "edXMLEnvelope",
                (
                    Child(
                        "edXMLHeader",
                        Complex(
                            "edXMLHeader",
                            (
                                Child("MessageHeader", MESSAGE_HEADER),
                                Child("TraceHeaderList", TRACE_HEADER_LIST),
                                Child("Signature", AnyContent()),
                            ),
                        ),
                    ),
                    Child(
                        "edXMLBody",
                        Complex(
                            "edXMLBody",
                            (
                                Child(
                                    "edXMLManifest",
                                    Complex(
                                        "edXMLManifest",
                                        (Child("Reference", REFERENCE, many=True),),
                                        attributes=("version",),
                                    ),
                                ),
                            ),
                        ),
                    ),
                ),
            ),
        ),
        Child(
            "AttachmentEncoded",
            Complex("AttachmentEncoded", (Child("Attachment", ATTACHMENT, True),)),
        ),
    ),
)

_MH_PATH = "/edXML/edXMLEnvelope/edXMLHeader/MessageHeader"


# -- ids ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def message_id_for(document_id: str) -> uuid.UUID:
    """The gateway message id of an edXML ``DocumentId``.

    A DocumentId written as a UUID (``9fbfbad2-f1f8-4256-a2eb-50fb1061cddb``, lower case, as
    ``str(uuid)`` writes it) is that message id, exactly as a JSON client may choose
    ``header.id``; any other DocumentId (``000.00.00.G22,2015/09/30,7816/VPCP-TTĐT``) maps to a
    name-based uuid5. So the same DocumentId is the same message (idempotent ingest), and a
    status's ``ResponseFor/DocumentId`` names the message it is about."""
    text = document_id.strip()
    if _UUID_RE.match(text):
        return uuid.UUID(text)
    return uuid.uuid5(DOCUMENT_ID_NAMESPACE, text)


def conventional_document_id(sender: str, day: date, number: str, notation: str) -> str:
    """``{OrganId},{yyyy/MM/dd},{number}/{notation}``, the form most systems use."""
    return f"{sender},{_fmt_date(day)},{number}/{notation}"


def _default_document_id(
    message_id: uuid.UUID | None, sender: str, day: date, number: str, notation: str
) -> str:
    conventional = conventional_document_id(sender, day, number, notation)
    if message_id is None or message_id == message_id_for(conventional):
        return conventional
    return str(message_id)


def document_id(envelope: DocumentEnvelope) -> str:
    """The DocumentId ``encode_edxml`` writes for ``envelope``: the one its package came with;
    else the conventional form if the message id is derived from it; else the message id itself
    (so that a status answering it names the message id again)."""
    header, body = envelope.header, envelope.body
    raw = _dig(carried(envelope), "edXMLEnvelope", "edXMLHeader", "MessageHeader", "DocumentId")
    if isinstance(raw, str) and raw.strip() and header.id == message_id_for(raw):
        return raw
    return _default_document_id(
        header.id, header.sender, body.promulgation.date, body.number, body.notation
    )


# -- value formats --------------------------------------------------------------------------------
def _agency(raw: str) -> str | None:
    if AGENCY_CODE_RE.match(raw):
        return raw
    if _LEGACY_AGENCY_RE.match(raw):
        return "000." + raw
    return None


def _date(raw: str) -> date:
    m = _DATE_RE.match(raw)
    if not m:
        raise ValueError(f"{raw!r} is not a date yyyy/MM/dd")
    return date(int(m[1]), int(m[2]), int(m[3]))


def _timestamp(raw: str) -> datetime:
    m = _TIMESTAMP_RE.match(raw)
    if not m:
        raise ValueError(f"{raw!r} is not a timestamp yyyy/MM/dd HH:mm:ss")
    return datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]), tzinfo=ICT)


def _fmt_date(value: date) -> str:
    return f"{value.year:04d}/{value.month:02d}/{value.day:02d}"


def _fmt_timestamp(value: datetime) -> str:
    v = value.astimezone(ICT)
    return f"{_fmt_date(v)} {v.hour:02d}:{v.minute:02d}:{v.second:02d}"


def _due(day: date) -> datetime:
    return datetime.combine(day, time(23, 59, 59), tzinfo=ICT)


def _cid(raw: str) -> str:
    value = raw.strip()
    if value.lower().startswith("cid:"):
        value = value[4:]
    return value.strip("<>").strip()


# -- errors ---------------------------------------------------------------------------------------
def _violation(
    element: etree._Element | None, detail: str, path: str | None = None
) -> SchemaViolation:
    where = path if path is not None else (element_path(element) if element is not None else "")
    line = element.sourceline if element is not None else None
    prefix = f"line {line}: " if line else ""
    return SchemaViolation(
        f"edXML does not match schemas/edxml.xsd: {where} ({prefix.rstrip(': ')}): {detail}"
        if line
        else f"edXML does not match schemas/edxml.xsd: {where}: {detail}",
        errors=[FieldError(where, prefix + detail)],
    )


def _missing(parent: _Node, name: str) -> SchemaViolation:
    return _violation(
        parent.el, f"required element {name} is missing", element_path(parent.el) + "/" + name
    )


# -- the walk -------------------------------------------------------------------------------------
class _Text:
    __slots__ = ("el", "text")

    def __init__(self, el: etree._Element, text: str) -> None:
        self.el = el
        self.text = text


class _Node:
    __slots__ = ("attrs", "el", "ext", "ext_elements", "kids", "spec")

    def __init__(self, el: etree._Element, spec: Complex) -> None:
        self.el = el
        self.spec = spec
        self.kids: dict[str, Any] = {}
        self.ext: list[str] = []
        self.ext_elements: list[etree._Element] = []
        attrib = el.attrib
        self.attrs: dict[str, str] = {str(k): str(v) for k, v in attrib.items()} if attrib else {}

    def one(self, name: str) -> _Node | None:
        value = self.kids.get(name)
        if isinstance(value, list):
            return value[0] if value else None
        return value if isinstance(value, _Node) else None

    def many(self, name: str) -> list[Any]:
        value = self.kids.get(name)
        return value if isinstance(value, list) else []


def _walk(el: etree._Element, spec: Complex) -> _Node:
    node = _Node(el, spec)
    strays: list[etree._Element] = []
    by_tag = spec.by_tag
    for child in el:
        tag = child.tag
        entry = by_tag.get(tag)
        if entry is None:
            if not isinstance(tag, str):
                continue
            ns, _, name = tag[1:].partition("}") if tag[:1] == "{" else ("", "", tag)
            if name == "Signature" and ns == DSIG_NS:
                continue  # verified on the raw bytes; never carried (see the module docstring)
            if ns == EXT_NS:
                node.ext_elements.append(child)
            else:
                node.ext.append(_canonical_fragment(child))
            strays.append(child)
            continue
        name = entry.name
        kind = entry.spec
        value: _Text | _Node
        if isinstance(kind, Leaf):
            text = child.text
            value = _Text(child, text.strip() if text else "")
        elif isinstance(kind, Complex):
            value = _walk(child, kind)
        else:
            continue  # AnyContent: the Signature
        if entry.many:
            node.kids.setdefault(name, []).append(value)
        elif name in node.kids:
            raise _violation(child, f"element {name} may appear only once here")
        else:
            node.kids[name] = value
    for stray in strays:
        el.remove(stray)
    return node


def _canonical_fragment(element: etree._Element) -> str:
    """An extension element as text that does not depend on how its sender wrote namespaces:
    the edXML namespace always as ``edXML:``, another one with the sender's prefix, declared once
    at the top; whitespace-only text dropped (pretty-printing may add or remove it)."""
    uris: set[str] = set()
    for node in element.iter():
        if isinstance(node.tag, str) and node.tag[:1] == "{":
            uris.add(node.tag[1:].partition("}")[0])
        uris.update(str(k)[1:].partition("}")[0] for k in node.attrib if str(k)[:1] == "{")
    nsmap: dict[str, str] = {}
    for uri in sorted(uris):
        if uri == NS:
            nsmap["edXML"] = uri
            continue
        given = [p for p, u in element.nsmap.items() if u == uri and p and p != "edXML"]
        prefix = given[0] if given and given[0] not in nsmap else f"ns{len(nsmap)}"
        nsmap[prefix] = uri

    def copy(source: etree._Element, parent: etree._Element | None) -> etree._Element:
        if parent is None:
            target = etree.Element(source.tag, nsmap=nsmap)
        else:
            target = etree.SubElement(parent, source.tag)
        for key, value in source.attrib.items():
            target.set(key, value)
        target.text = source.text if source.text and source.text.strip() else None
        for child in source:
            if isinstance(child.tag, str):
                copy(child, target).tail = child.tail if child.tail and child.tail.strip() else None
        return target

    return etree.tostring(copy(element, None), encoding="unicode")


def _residual(node: _Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kids = node.kids
    order = node.spec.order
    # In the standard's order, whatever the input's: equal residuals make equal JSON.
    for name in sorted(kids, key=lambda k: order.get(k, -1)) if len(kids) > 1 else kids:
        if name == "!":
            continue
        value = kids[name]
        if isinstance(value, list):
            items = [v.text if isinstance(v, _Text) else _residual(v) for v in value]
            if any(item != {} for item in items):
                out[name] = items
        elif isinstance(value, _Text):
            out[name] = value.text
        else:
            sub = _residual(value)
            if sub:
                out[name] = sub
    if "!" in kids:
        out["!"] = kids["!"]
    if node.attrs:
        out["@"] = node.attrs
    if node.ext:
        out["#"] = node.ext
    return out


# -- lenient repairs ------------------------------------------------------------------------------
_MISMATCH = "Opening and ending tag mismatch"


def _known_vendor_defect(exc: etree.XMLSyntaxError, found: list[str]) -> bool:
    """True when every error is one of the two known vendor defects (and their echoes);
    ``found`` receives their names."""
    entries: list[Any] = list(iter(exc.error_log))  # type: ignore[call-overload]
    mismatches = [e.message for e in entries if e.message.startswith(_MISMATCH)]
    for entry in entries:
        message = entry.message
        if message.startswith(_MISMATCH):
            continue
        if message.startswith("Namespace prefix xlink ") and message.endswith("is not defined"):
            found.append("xlink")
            continue
        return False
    if mismatches:
        # Tag mismatches only as the echo of an unclosed From inside MessageHeader.
        if not re.match(rf"{_MISMATCH}: From line \d+ and MessageHeader$", mismatches[0]):
            return False
        found.append("unclosed From")
    return bool(entries)


def _repair(root: etree._Element, defects: list[str]) -> None:
    """The documented lenient rules (module docstring); each one a no-op on a sound package."""
    for header in root.iter(f"{{{NS}}}MessageHeader"):
        for outer in header.findall(f"{{{NS}}}From"):
            inner = outer.find(f"{{{NS}}}From")
            if inner is None:
                continue
            # The inner From is the sender; the rest of the outer From belongs to MessageHeader.
            position = header.index(outer)
            trailing = list(header)[position + 1 :]
            kids = [c for c in outer if isinstance(c.tag, str)]
            header.remove(outer)
            for offset, child in enumerate(kids):
                header.insert(position + offset, child)
            if "unclosed From" in defects:
                _lift(header, trailing)
    if "xlink" in defects:
        for element in root.iter():
            for key in [k for k in element.attrib if str(k).startswith("xlink:")]:
                value = element.attrib.pop(key)
                element.set(f"{{{XLINK_NS}}}{str(key)[6:]}", value)


def _lift(node: etree._Element, moving: list[etree._Element]) -> None:
    """Undo libxml2's recovery of a never-closed element: each end tag closed one level too
    early, so what followed ``node`` at every level belongs one level up, right after it."""
    parent = node.getparent()
    while parent is not None:
        position = parent.index(node)
        following = list(parent)[position + 1 :]
        for offset, child in enumerate(moving, start=1):
            parent.insert(position + offset, child)
        node, moving, parent = parent, following, parent.getparent()


# -- XSD ------------------------------------------------------------------------------------------
_SIMPLE_TYPES = """
  <xs:simpleType name="DateOrEmpty">
    <xs:annotation>
      <xs:documentation>
          yyyy/MM/dd; some senders leave it empty
      </xs:documentation>
    </xs:annotation>
    <xs:restriction base="xs:token">
      <xs:pattern value="([0-9]{4}/[0-9]{2}/[0-9]{2})?"/>
    </xs:restriction>
  </xs:simpleType>
  <xs:simpleType name="Timestamp">
    <xs:annotation>
      <xs:documentation>
          yyyy/MM/dd HH:mm:ss, Vietnam time (+07:00)
      </xs:documentation>
    </xs:annotation>
    <xs:restriction base="xs:token">
      <xs:pattern value="[0-9]{4}/[0-9]{2}/[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"/>
    </xs:restriction>
  </xs:simpleType>
  <xs:simpleType name="StatusCode">
    <xs:annotation>
      <xs:documentation>
          01 received, 02 rejected (Description gives the reason), 03 accepted, 04
          assigned, 05 processing, 06 completed, 13 recall request, 15 recall/update
          agreed, 16 recall/update refused
      </xs:documentation>
    </xs:annotation>
    <xs:restriction base="xs:token">
{status_codes}
    </xs:restriction>
  </xs:simpleType>
  <xs:simpleType name="PriorityCode">
    <xs:annotation>
      <xs:documentation>
          0 thường, 1 khẩn, 2 thượng khẩn, 3 hỏa tốc, 4 hỏa tốc hẹn giờ
      </xs:documentation>
    </xs:annotation>
    <xs:restriction base="xs:token">
      <xs:pattern value="[0-4]?"/>
    </xs:restriction>
  </xs:simpleType>
  <xs:simpleType name="BussinessDocType">
    <xs:annotation>
      <xs:documentation>
          0 new, 1 recall, 2 update, 3 replace
      </xs:documentation>
    </xs:annotation>
    <xs:restriction base="xs:token">
      <xs:pattern value="[0-3]"/>
    </xs:restriction>
  </xs:simpleType>
  <xs:complexType name="Signature" mixed="true">
    <xs:annotation>
      <xs:documentation>
          An enveloped XML-DSig signature that fell into the edXML namespace (no xmlns on
          it): accepted, not validated here
      </xs:documentation>
    </xs:annotation>
    <xs:sequence>
      <xs:any namespace="##any" processContents="skip" minOccurs="0" maxOccurs="unbounded"/>
    </xs:sequence>
    <xs:anyAttribute namespace="##any" processContents="skip"/>
  </xs:complexType>
"""

_XSD_HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<!--
  edXML packages (QCVN 102:2016/BTTTT): document packages and status packages.

  Written by the Lienthong project from the structure of packages that deployed systems send;
  not the standard's own text. GENERATED from gateway/codecs/edxml.py (PACKAGE): regenerate with
    .venv/bin/python -c "from gateway.codecs.edxml import xsd_text; print(xsd_text(), end='')" \\
      > schemas/edxml.xsd

  Order-insensitive: every element's children are a repeated choice, because XSD 1.0 cannot say
  "these children in any order, with these counts" when one of them repeats (To, ResponseFor,
  TraceHeader, Reference, Attachment). The codec checks the counts (exactly one From, at least
  one To in a document, ...). Elements of other namespaces (vendor extensions, the XML-DSig
  Signature) are allowed everywhere; unknown elements in the edXML namespace are not: the codec
  sets them aside as extensions before it validates.
-->
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"
           xmlns="{ns}"
           targetNamespace="{ns}"
           elementFormDefault="qualified"
           attributeFormDefault="unqualified">

  <xs:element name="edXML" type="edXML"/>
"""


def _complex_types(spec: Complex, seen: dict[str, Complex]) -> list[str]:
    if spec.type_name in seen:
        return []
    seen[spec.type_name] = spec
    lines = [f'  <xs:complexType name="{spec.type_name}">']
    lines.append('    <xs:choice minOccurs="0" maxOccurs="unbounded">')
    nested: list[str] = []
    for child in spec.children:
        if isinstance(child.spec, Leaf):
            type_name = child.spec.type
        elif isinstance(child.spec, AnyContent):
            type_name = "Signature"
        else:
            type_name = child.spec.type_name
            nested.extend(_complex_types(child.spec, seen))
        lines.append(f'      <xs:element name="{child.name}" type="{type_name}"/>')
    lines.append('      <xs:any namespace="##other" processContents="lax"/>')
    lines.append("    </xs:choice>")
    lines.extend(f'    <xs:attribute name="{a}" type="xs:string"/>' for a in spec.attributes)
    lines.append('    <xs:anyAttribute namespace="##other" processContents="skip"/>')
    lines.append("  </xs:complexType>")
    return lines + nested


def xsd_text() -> str:
    """The XSD of edXML packages, as committed in ``schemas/edxml.xsd``."""
    codes = "\n".join(f'      <xs:enumeration value="{c}"/>' for c in STATUS_CODES)
    body = "\n".join(_complex_types(PACKAGE, {}))
    return (
        _XSD_HEAD.replace("{ns}", NS)
        + body
        + "\n"
        + _SIMPLE_TYPES.replace("{status_codes}", codes)
        + "</xs:schema>\n"
    )


_schema: etree.XMLSchema | None = None


def _xsd() -> etree.XMLSchema:
    global _schema
    if _schema is None:
        _schema = etree.XMLSchema(etree.fromstring(xsd_text().encode("utf-8")))
    return _schema


_XSD_ELEMENT_RE = re.compile(r"Element '(?:\{([^}]*)\})?([^']+)'")


def _xsd_violation(root: etree._Element, log: Any) -> SchemaViolation:
    errors: list[FieldError] = []
    for entry in list(log)[:20]:
        match = _XSD_ELEMENT_RE.search(entry.message)
        path = ""
        if match:
            tag = f"{{{match[1]}}}{match[2]}" if match[1] else match[2]
            for candidate in root.iter(tag):
                if candidate.sourceline == entry.line:
                    path = element_path(candidate)
                    break
        errors.append(FieldError(path, f"line {entry.line}: {entry.message}"))
    first = errors[0] if errors else FieldError("", "invalid")
    return SchemaViolation(
        f"edXML does not match schemas/edxml.xsd: {first.pointer or '/'}: {first.detail}",
        errors=errors,
    )


# -- decoding -------------------------------------------------------------------------------------
def decode_edxml(data: bytes, *, limits: XmlLimits = DEFAULT_LIMITS) -> AnyEnvelope:
    """Parse, repair the known vendor defects, validate and translate one edXML package."""
    defects: list[str] = []
    root = xmlsafe.parse(data, limits, recover_if=lambda exc: _known_vendor_defect(exc, defects))
    if root.tag != f"{{{NS}}}edXML":
        where = "/" + local_name(str(root.tag))
        raise _violation(root, f"the root element must be edXML in namespace {NS}", where)
    _repair(root, defects)
    package = _walk(root, PACKAGE)
    schema = _xsd()
    if not schema.validate(root):
        raise _xsd_violation(root, schema.error_log)
    return _Decoder(package).envelope()


class _Decoder:
    def __init__(self, package: _Node) -> None:
        self.package = package
        self.origin: dict[tuple[Any, ...], etree._Element] = {}
        self.overridden: set[str] = set()
        envelope = package.one("edXMLEnvelope")
        if envelope is None:
            raise _missing(package, "edXMLEnvelope")
        header = envelope.one("edXMLHeader")
        if header is None:
            raise _missing(envelope, "edXMLHeader")
        mh = header.one("MessageHeader")
        if mh is None:
            raise _missing(header, "MessageHeader")
        self.envelope_node, self.header_node, self.mh = envelope, header, mh

    # small readers -------------------------------------------------------------------------
    def node(self, parent: _Node, name: str, *, required: bool = False) -> _Node | None:
        found = parent.one(name)
        if found is None and required:
            raise _missing(parent, name)
        return found

    def text(
        self,
        parent: _Node,
        name: str,
        loc: tuple[Any, ...] | None = None,
        *,
        required: bool = False,
        keep: bool = False,
    ) -> str | None:
        """The stripped text of a leaf child; taken out of the residual unless ``keep``.
        An empty optional leaf reads as None and stays in the residual (written back empty)."""
        leaf = parent.kids.get(name)
        if not isinstance(leaf, _Text):
            if required:
                raise _missing(parent, name)
            return None
        if loc is not None:
            self.origin[loc] = leaf.el
        if leaf.text == "" and not required:
            return None
        if not keep:
            del parent.kids[name]
        return leaf.text

    def agency(self, parent: _Node, name: str, loc: tuple[Any, ...]) -> str:
        leaf = parent.kids.get(name)
        if not isinstance(leaf, _Text):
            raise _missing(parent, name)
        self.origin[loc] = leaf.el
        code = _agency(leaf.text)
        if code is None:
            return leaf.text  # the model names it invalid, pointing at this element
        if code == leaf.text:
            del parent.kids[name]
        return code

    def parsed(
        self, parent: _Node, name: str, parse: Callable[[str], _T], required: bool
    ) -> _T | None:
        leaf = parent.kids.get(name)
        raw = self.text(parent, name, required=required)
        if raw is None:
            return None
        try:
            return parse(raw)
        except ValueError as exc:
            el = leaf.el if isinstance(leaf, _Text) else parent.el
            raise _violation(el, str(exc)) from None

    # the envelope --------------------------------------------------------------------------
    def envelope(self) -> AnyEnvelope:
        ext, ext_el = self.extension()
        header_ext = ext.get("header")
        self.overridden = set(header_ext) if isinstance(header_ext, dict) else set()
        if isinstance(self.mh.kids.get("StatusCode"), _Text):
            obj = self.status()
            kind: type[DocumentEnvelope] | type[StatusEnvelope] = StatusEnvelope
        else:
            obj = self.document()
            kind = DocumentEnvelope
        if ext:
            self.apply_extension(obj, ext, ext_el)
        self.drop_defaults(obj)
        carry = _carry_text(_residual(self.package))
        if kind is DocumentEnvelope:
            obj["body"]["extra"].update(_carry_extra(carry))
        elif carry:
            at = obj["body"]["at"]
            obj["header"]["trace"].extend(
                {"at": at, "event": CARRY_KEY, "detail": chunk} for chunk in _chunks(carry)
            )
        try:
            return kind.model_validate(obj)
        except pydantic.ValidationError as exc:
            raise self.model_violation(exc) from None

    def extension(self) -> tuple[dict[str, Any], etree._Element | None]:
        for el in self.mh.ext_elements:
            if el.tag == f"{{{EXT_NS}}}Envelope":
                self.mh.ext_elements.remove(el)
                try:
                    value = orjson.loads((el.text or "").strip())
                except orjson.JSONDecodeError as exc:
                    raise _violation(el, f"the gateway extension is not JSON: {exc}") from None
                if not isinstance(value, dict):
                    raise _violation(el, "the gateway extension must be a JSON object")
                return value, el
        # Other elements of the gateway namespace are extensions like any other.
        for el in self.mh.ext_elements:
            self.mh.ext.append(etree.tostring(el, encoding="unicode", with_tail=False))
        self.mh.ext_elements.clear()
        return {}, None

    def apply_extension(self, obj: dict[str, Any], ext: dict[str, Any], el: Any) -> None:
        for part in ("header", "body"):
            values = ext.get(part, {})
            if not isinstance(values, dict):
                raise _violation(el, f"the gateway extension's {part} must be an object")
            for key, value in values.items():
                self.origin[(part, key)] = el
                if part == "body" and key == "attachments":
                    merged = list(obj["body"].get("attachments", []))
                    for item in sorted(value, key=lambda i: int(i.get("index", 0))):
                        item = dict(item)
                        merged.insert(int(item.pop("index", len(merged))), item)
                    obj["body"]["attachments"] = merged
                elif part == "body" and key == "extra":
                    obj["body"]["extra"] = {**value, **obj["body"].get("extra", {})}
                else:
                    obj[part][key] = value

    def drop_defaults(self, obj: dict[str, Any]) -> None:
        """Take out of the residual the wire values that encoding regenerates from the Envelope
        alone, so an envelope that came without a residual goes back without one."""
        header, body, mh = obj["header"], obj["body"], self.mh
        if obj["kind"] == "document":
            leaf = mh.kids.get("DocumentId")
            try:
                default = _default_document_id(
                    uuid.UUID(str(header["id"])) if header.get("id") else None,
                    header["sender"],
                    body["promulgation"]["date"],
                    body["number"],
                    body["notation"],
                )
            except (KeyError, TypeError, ValueError):
                default = None
            if isinstance(leaf, _Text) and leaf.text == default:
                del mh.kids["DocumentId"]
        else:
            rf = mh.one("ResponseFor")
            leaf = rf.kids.get("DocumentId") if rf is not None else None
            if rf is not None and isinstance(leaf, _Text) and leaf.text == str(body.get("about")):
                del rf.kids["DocumentId"]
        body_node = self.envelope_node.one("edXMLBody")
        manifest = body_node.one("edXMLManifest") if body_node is not None else None
        if manifest is not None and manifest.attrs.get("version") == "1.0":
            del manifest.attrs["version"]

    def trace(self) -> list[dict[str, Any]]:
        thl = self.node(self.header_node, "TraceHeaderList")
        entries: list[dict[str, Any]] = []
        if thl is None:
            return entries
        for i, th in enumerate(thl.many("TraceHeader")):
            leaf = th.kids.get("OrganId")
            agency = None
            if isinstance(leaf, _Text):
                agency = _agency(leaf.text)
                if agency == leaf.text:
                    del th.kids["OrganId"]
            at = self.parsed(th, "Timestamp", _timestamp, required=True)
            self.origin[("header", "trace", i)] = th.el
            entries.append({"at": at, "event": TRACE_EVENT, "agency": agency})
        return entries

    def document(self) -> dict[str, Any]:
        mh = self.mh
        frm = self.node(mh, "From", required=True)
        assert frm is not None
        header: dict[str, Any] = {"sender": self.agency(frm, "OrganId", ("header", "sender"))}
        tos = mh.many("To")
        if not tos and "to" not in self.overridden:
            raise _missing(mh, "To")
        header["to"] = [
            {"agency": self.agency(to, "OrganId", ("header", "to", i, "agency"))}
            for i, to in enumerate(tos)
        ]
        doc_id = self.text(mh, "DocumentId", ("header", "id"), keep=True)
        header["id"] = message_id_for(doc_id) if doc_id else None
        header["due"] = None
        due = self.parsed(mh, "DueDate", _date, required=False)
        if due is not None:
            header["due"] = _due(due)
        header["priority"] = Priority.NORMAL
        other = self.node(mh, "OtherInfo")
        if other is not None:
            raw = self.text(other, "Priority", ("header", "priority"), keep=True)
            if raw is not None:
                header["priority"] = _PRIORITIES.get(raw, raw)
                if _PRIORITY_CODES.get(header["priority"]) == raw:
                    del other.kids["Priority"]
        header["references"] = [
            message_id_for(d)
            for rf in mh.many("ResponseFor")
            if (d := self.text(rf, "DocumentId", keep=True))
        ]
        header["trace"] = self.trace()

        code = self.node(mh, "Code", required=True)
        prom = self.node(mh, "PromulgationInfo", required=True)
        dtype = self.node(mh, "DocumentType", required=True)
        assert code is not None and prom is not None and dtype is not None
        body: dict[str, Any] = {
            "number": self.text(code, "CodeNumber", ("body", "number"), required=True),
            "notation": self.text(code, "CodeNotation", ("body", "notation"), required=True),
            "type": {
                "code": self.text(dtype, "Type", ("body", "type", "code"), required=True),
                "name": self.text(dtype, "TypeName", ("body", "type", "name"), required=True),
            },
            "subject": self.text(mh, "Subject", ("body", "subject"), required=True),
            "promulgation": {
                "place": self.text(prom, "Place", ("body", "promulgation", "place"), required=True),
                "date": self.parsed(prom, "PromulgationDate", _date, required=True),
            },
            "content": self.text(mh, "Content", ("body", "content")),
            "signer": None,
            "extra": {},
        }
        signer = self.node(mh, "SignerInfo")
        if signer is not None and self.text(signer, "FullName", keep=True):
            body["signer"] = {
                "name": self.text(signer, "FullName", ("body", "signer", "name")),
                "position": self.text(signer, "Position", ("body", "signer", "position")),
            }
        body["attachments"] = self.attachments()
        return {"kind": "document", "header": header, "body": body}

    def attachments(self) -> list[dict[str, Any]]:
        body = self.node(self.envelope_node, "edXMLBody")
        manifest = self.node(body, "edXMLManifest") if body is not None else None
        refs = manifest.many("Reference") if manifest is not None else []
        enc = self.node(self.package, "AttachmentEncoded")
        files = enc.many("Attachment") if enc is not None else []
        by_cid: dict[str, _Node] = {}
        for f in files:
            leaf = f.kids.get("ContentId")
            if isinstance(leaf, _Text):
                by_cid.setdefault(_cid(leaf.text), f)
        ordered: list[tuple[_Node | None, _Node]] = []
        used: set[int] = set()
        for ref in refs:
            leaf = ref.kids.get("ContentId")
            cid = _cid(leaf.text) if isinstance(leaf, _Text) else ""
            found = by_cid.get(cid) if cid else None
            if found is None or id(found) in used:
                where = leaf.el if isinstance(leaf, _Text) else ref.el
                raise _violation(
                    where, f"the manifest lists ContentId {cid!r} but no Attachment carries it"
                )
            used.add(id(found))
            ordered.append((ref, found))
        for f in files:
            if id(f) not in used:
                f.kids["!"] = "unlisted"  # in AttachmentEncoded but not in the manifest
                ordered.append((None, f))
        # Residual lists aligned with body.attachments: files in envelope order.
        if enc is not None:
            enc.kids["Attachment"] = [f for _, f in ordered]
        result = [self.attachment(i, ref, f) for i, (ref, f) in enumerate(ordered)]
        for i, (ref, f) in enumerate(ordered):
            own = f.kids.get("ContentId")
            if ref is not None:
                listed = ref.kids.get("ContentId")
                if isinstance(own, _Text) and isinstance(listed, _Text) and own.text == listed.text:
                    del ref.kids["ContentId"]  # written back from the Attachment's
            if isinstance(own, _Text) and own.text == f"cid:{i + 1}":
                del f.kids["ContentId"]  # what encoding generates for the i-th attachment
        return result

    def attachment(self, i: int, ref: _Node | None, f: _Node) -> dict[str, Any]:
        loc = ("body", "attachments", i)
        self.origin[loc] = f.el
        values: dict[str, str | None] = {}
        for field_name in ("AttachmentName", "ContentType", "Description"):
            own = self.text(f, field_name, (*loc, field_name))
            other = self.text(ref, field_name, keep=True) if ref is not None else None
            values[field_name] = own if own is not None else other
            if ref is not None and other is not None and other == values[field_name]:
                del ref.kids[field_name]  # the same as the Attachment's: written back from it
        leaf = f.kids.pop("ContentTransferEncoded", None)
        if not isinstance(leaf, _Text):
            raise _missing(f, "ContentTransferEncoded")
        encoded = "".join(leaf.text.split())
        try:
            raw = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            raise _violation(leaf.el, "the attachment is not valid base64") from None
        media = values["ContentType"] or "application/octet-stream"
        media_type = media.split(";")[0].strip().lower()
        if media_type != media:
            f.kids["ContentType"] = _Text(leaf.el, media)
        cid_leaf = f.kids.get("ContentId")
        name: str | None = values["AttachmentName"] or values["Description"]
        if not name and isinstance(cid_leaf, _Text):
            name = _cid(cid_leaf.text)
        return {
            "name": name,
            "media_type": media_type,
            "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "content": encoded if len(encoded) <= _INLINE_BASE64 else None,
            "description": values["Description"],
        }

    def status(self) -> dict[str, Any]:
        mh = self.mh
        frm = self.node(mh, "From", required=True)
        assert frm is not None
        rfs = mh.many("ResponseFor")
        if not rfs:
            raise _missing(mh, "ResponseFor")
        rf = rfs[0]
        about = self.text(rf, "DocumentId", ("body", "about"), required=True, keep=True)
        assert about is not None
        header: dict[str, Any] = {
            "sender": self.agency(frm, "OrganId", ("header", "sender")),
            "to": []
            if "to" in self.overridden and "OrganId" not in rf.kids
            else [{"agency": self.agency(rf, "OrganId", ("header", "to", 0, "agency"))}],
            "trace": self.trace(),
        }
        code_leaf = mh.kids.get("StatusCode")
        if isinstance(code_leaf, _Text):
            self.origin[("body", "code")] = code_leaf.el
        staff = self.node(mh, "StaffInfo")
        description = mh.kids.get("Description")
        self.origin[("body",)] = description.el if isinstance(description, _Text) else mh.el
        body: dict[str, Any] = {
            "about": message_id_for(about),
            "code": self.text(mh, "StatusCode", ("body", "code"), required=True),
            "at": self.parsed(mh, "Timestamp", _timestamp, required=True),
            "comment": self.text(mh, "Description", ("body", "comment")),
            "by": self.text(staff, "Staff", ("body", "by")) if staff is not None else None,
        }
        return {"kind": "status", "header": header, "body": body}

    def model_violation(self, exc: pydantic.ValidationError) -> SchemaViolation:
        errors: list[FieldError] = []
        for err in exc.errors(include_url=False)[:20]:
            loc = tuple(
                p for p in err["loc"] if p not in ("agency", "subtree") or len(err["loc"]) < 4
            )
            element: etree._Element | None = None
            for cut in range(len(loc), 0, -1):
                element = self.origin.get(loc[:cut])
                if element is not None:
                    break
            if element is None:
                element = self.mh.el
            line = element.sourceline
            field_name = "/" + "/".join(str(p) for p in loc)
            errors.append(
                FieldError(element_path(element), f"line {line}: {field_name}: {err['msg']}")
            )
        first = errors[0]
        return SchemaViolation(
            f"edXML does not fit the Envelope: {first.pointer}: {first.detail}", errors=errors
        )


# -- the residual in the envelope (until the model has a field for it) ----------------------------
def _carry_text(residual: dict[str, Any]) -> str:
    return orjson.dumps(residual).decode("utf-8") if residual else ""


def _chunks(text: str) -> list[str]:
    """Split into values of at most 4000 characters that survive whitespace stripping: a space
    at a cut is written as its JSON escape (whitespace only occurs inside JSON strings)."""
    out: list[str] = []
    for start in range(0, len(text), _CARRY_CHUNK):
        chunk = text[start : start + _CARRY_CHUNK]
        if chunk[:1].isspace():
            chunk = f"\\u{ord(chunk[0]):04x}" + chunk[1:]
        if chunk[-1:].isspace():
            chunk = chunk[:-1] + f"\\u{ord(chunk[-1]):04x}"
        out.append(chunk)
    return out


def _carry_keys(count: int) -> list[str]:
    return [CARRY_KEY if i == 0 else f"{CARRY_KEY}.{i + 1}" for i in range(count)]


def _carry_extra(text: str) -> dict[str, str]:
    if not text:
        return {}
    chunks = _chunks(text)
    return dict(zip(_carry_keys(len(chunks)), chunks, strict=True))


def _is_carry_key(key: str) -> bool:
    return key == CARRY_KEY or (
        key.startswith(CARRY_KEY + ".") and key[len(CARRY_KEY) + 1 :].isdigit()
    )


def carried(envelope: AnyEnvelope) -> dict[str, Any]:
    """The residual an edXML package left in ``envelope`` (``{}`` if none): the JSON object that
    mirrors the elements the Envelope has no field for (see the module docstring)."""
    if isinstance(envelope, DocumentEnvelope):
        extra = envelope.body.extra
        parts = [extra[k] for k in _carry_keys(len(extra)) if k in extra]
    else:
        parts = [t.detail or "" for t in envelope.header.trace if t.event == CARRY_KEY]
    if not parts:
        return {}
    try:
        value = orjson.loads("".join(parts))
    except orjson.JSONDecodeError:
        raise SchemaViolation(
            "the carried edXML residual is not JSON",
            errors=[FieldError("/body/extra/edxml", "not JSON")],
        ) from None
    return value if isinstance(value, dict) else {}


def _dig(d: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(d, dict):
            return None
        d = d.get(name)
    return d


# -- encoding -------------------------------------------------------------------------------------
def _sub(d: dict[str, Any], name: str) -> dict[str, Any]:
    value = d.get(name)
    if not isinstance(value, dict):
        value = {}
        d[name] = value
    return value


def _item(items: list[Any], i: int) -> dict[str, Any]:
    while len(items) <= i:
        items.append({})
    if not isinstance(items[i], dict):
        items[i] = {}
    result: dict[str, Any] = items[i]
    return result


def _put(
    d: dict[str, Any],
    name: str,
    value: _T | None,
    write: Callable[[_T], str],
    read: Callable[[str], Any],
) -> None:
    """Set leaf ``name`` to ``value``: a raw residual text stays when it reads as ``value``."""
    raw = d.get(name)
    if isinstance(raw, str):
        try:
            if read(raw) == value:
                return
        except ValueError:
            pass
    if value is None:
        d.pop(name, None)
    else:
        d[name] = write(value)


def _read_text(raw: str) -> str | None:
    return raw.strip() or None


def _read_agency(raw: str) -> str | None:
    return _agency(raw.strip())


def _read_date(raw: str) -> date | None:
    return _date(raw.strip()) if raw.strip() else None


def _str(value: str) -> str:
    return value


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


def encode_edxml(envelope: AnyEnvelope, *, gateway_extension: bool = True) -> bytes:
    """The edXML package of ``envelope``: a document package or a status package."""
    if not isinstance(envelope, DocumentEnvelope | StatusEnvelope):
        raise SchemaViolation(
            f"edXML has no package for a {envelope.kind} envelope",
            errors=[FieldError("/kind", "edXML carries documents and statuses only")],
        )
    package = carried(envelope)
    ext: dict[str, dict[str, Any]] = {"header": {}, "body": {}}
    envelope_d = _sub(package, "edXMLEnvelope")
    header_d = _sub(_sub(envelope_d, "edXMLHeader"), "MessageHeader")
    mh = header_d
    header = envelope.header
    frm = _sub(mh, "From")
    _put(frm, "OrganId", header.sender, _str, _read_agency)
    if header.created is not None:
        ext["header"]["created"] = _json(header.created)
    if isinstance(envelope, DocumentEnvelope):
        _encode_document(envelope, package, mh, ext)
    else:
        _encode_status(envelope, mh, ext)
    _encode_trace(envelope, package, ext)
    ext = {k: v for k, v in ext.items() if v}
    if ext and gateway_extension:
        text = orjson.dumps(ext, option=orjson.OPT_SORT_KEYS).decode("utf-8")
        mh[_RAW] = f'<lt:Envelope xmlns:lt="{EXT_NS}">{_escape(text, "/lt:Envelope")}</lt:Envelope>'
    out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<edXML:edXML xmlns:edXML="{NS}"']
    _write(out, package, PACKAGE, "", "/edXML")
    out.append("</edXML:edXML>\n")
    text = "".join(out)
    if _NOT_XML.search(text):
        raise _not_xml(text, package)
    return text.encode("utf-8")


def _json(value: datetime) -> str:
    """An instant as the canonical JSON writes it (UTC, ``Z``)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _encode_document(
    envelope: DocumentEnvelope, package: dict[str, Any], mh: dict[str, Any], ext: dict[str, Any]
) -> None:
    header, body = envelope.header, envelope.body
    tos = mh.get("To")
    residual_to = tos if isinstance(tos, list) else []
    written: list[dict[str, Any]] = []
    for address in header.to:
        if isinstance(address, AgencyAddress):
            to = _item(residual_to, len(written))
            _put(to, "OrganId", address.agency, _str, _read_agency)
            written.append(to)
    mh["To"] = written
    if len(written) != len(header.to):
        ext["header"]["to"] = [a.model_dump(mode="json") for a in header.to]
    # DocumentId and the message id.
    mh["DocumentId"] = document_id(envelope)
    if header.id != message_id_for(mh["DocumentId"]):
        ext["header"]["id"] = str(header.id) if header.id else None
    code = _sub(mh, "Code")
    _put(code, "CodeNumber", body.number, _str, _read_text)
    _put(code, "CodeNotation", body.notation, _str, _read_text)
    prom = _sub(mh, "PromulgationInfo")
    _put(prom, "Place", body.promulgation.place, _str, _read_text)
    _put(prom, "PromulgationDate", body.promulgation.date, _fmt_date, _read_date)
    dtype = _sub(mh, "DocumentType")
    _put(dtype, "Type", body.type.code, _str, _read_text)
    _put(dtype, "TypeName", body.type.name, _str, _read_text)
    _put(mh, "Subject", body.subject, _str, _read_text)
    _put(mh, "Content", body.content, _str, _read_text)
    signer = mh.get("SignerInfo")
    if body.signer is not None or isinstance(signer, dict):
        signer = _sub(mh, "SignerInfo")
        _put(signer, "FullName", body.signer.name if body.signer else None, _str, _read_text)
        position = body.signer.position if body.signer else None
        _put(signer, "Position", position, _str, _read_text)
        if not signer:
            del mh["SignerInfo"]
    due_day = header.due.astimezone(ICT).date() if header.due else None
    _put(mh, "DueDate", due_day, _fmt_date, _read_date)
    if header.due is not None and header.due != _due(header.due.astimezone(ICT).date()):
        ext["header"]["due"] = _json(header.due)
    other = _sub(mh, "OtherInfo")
    _put(other, "Priority", header.priority, _PRIORITY_CODES.__getitem__, _PRIORITIES.get)
    derived = [
        message_id_for(rf["DocumentId"])
        for rf in mh.get("ResponseFor", [])
        if isinstance(rf, dict)
        and isinstance(rf.get("DocumentId"), str)
        and rf["DocumentId"].strip()
    ]
    if header.references != derived:
        ext["header"]["references"] = [str(r) for r in header.references]
    others = {k: v for k, v in body.extra.items() if not _is_carry_key(k)}
    if others:
        ext["body"]["extra"] = others
    _encode_attachments(body.attachments, package, ext)


def _encode_attachments(
    attachments: list[Attachment], package: dict[str, Any], ext: dict[str, Any]
) -> None:
    body_d = _sub(_sub(package, "edXMLEnvelope"), "edXMLBody")
    manifest = _sub(body_d, "edXMLManifest")
    manifest.setdefault("@", {"version": "1.0"})
    refs_in = manifest.get("Reference")
    refs_in = refs_in if isinstance(refs_in, list) else []
    enc = package.get("AttachmentEncoded")
    files_in = enc.get("Attachment") if isinstance(enc, dict) else None
    files_in = files_in if isinstance(files_in, list) else []
    refs: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    by_reference: list[dict[str, Any]] = []
    taken = {
        _cid(f["ContentId"])
        for f in files_in
        if isinstance(f, dict) and isinstance(f.get("ContentId"), str)
    }
    for i, att in enumerate(attachments):
        if att.content is None:
            by_reference.append({"index": i, **att.model_dump(mode="json", exclude_none=True)})
            continue
        k = len(files)  # its position in AttachmentEncoded
        f = _item(files_in, k)
        cid = f.get("ContentId")
        if not isinstance(cid, str) or not cid.strip():
            cid = f"cid:{k + 1}"
            while _cid(cid) in taken:
                cid = f"cid:{k + 1}-{att.sha256[:12]}"
            taken.add(_cid(cid))
            f["ContentId"] = cid
        _put(f, "AttachmentName", att.name, _str, _read_text)
        media = f.get("ContentType")
        if not (isinstance(media, str) and media.split(";")[0].strip().lower() == att.media_type):
            f["ContentType"] = att.media_type
        _put(f, "Description", att.description, _str, _read_text)
        f["ContentTransferEncoded"] = att.content
        listed = f.pop("!", None) != "unlisted"
        files.append(f)
        if listed:
            ref = _item(refs_in, len(refs))
            ref.setdefault("ContentId", cid)
            for name in ("ContentType", "Description", "AttachmentName"):
                if name not in ref and isinstance(f.get(name), str):
                    ref[name] = f[name]
            refs.append(ref)
    manifest["Reference"] = refs
    if files:
        _sub(package, "AttachmentEncoded")["Attachment"] = files
    else:
        package.pop("AttachmentEncoded", None)
    if by_reference:
        ext["body"]["attachments"] = by_reference


def _encode_status(envelope: StatusEnvelope, mh: dict[str, Any], ext: dict[str, Any]) -> None:
    header, body = envelope.header, envelope.body
    rfs = mh.get("ResponseFor")
    rfs = rfs if isinstance(rfs, list) else []
    rf = _item(rfs, 0)
    mh["ResponseFor"] = rfs
    first = next((a for a in header.to if isinstance(a, AgencyAddress)), None)
    _put(rf, "OrganId", first.agency if first else None, _str, _read_agency)
    if header.to != [first]:
        ext["header"]["to"] = [a.model_dump(mode="json") for a in header.to]
    raw = rf.get("DocumentId")
    if not (isinstance(raw, str) and message_id_for(raw) == body.about):
        rf["DocumentId"] = str(body.about)
    mh["StatusCode"] = body.code.value
    _put(mh, "Description", body.comment, _str, _read_text)
    at_text = _fmt_timestamp(body.at)
    raw_at = mh.get("Timestamp")
    if not (isinstance(raw_at, str) and _read_ts(raw_at) == body.at):
        mh["Timestamp"] = at_text
    if _timestamp(at_text) != body.at:
        ext["body"]["at"] = _json(body.at)
    staff = mh.get("StaffInfo")
    if body.by is not None or isinstance(staff, dict):
        staff = _sub(mh, "StaffInfo")
        _put(staff, "Staff", body.by, _str, _read_text)
        if not staff:
            del mh["StaffInfo"]
    if header.id is not None:
        ext["header"]["id"] = str(header.id)
    if header.priority is not Priority.NORMAL:
        ext["header"]["priority"] = header.priority.value
    if header.due is not None:
        ext["header"]["due"] = _json(header.due)
    if header.references:
        ext["header"]["references"] = [str(r) for r in header.references]


def _read_ts(raw: str) -> datetime | None:
    try:
        return _timestamp(raw.strip())
    except ValueError:
        return None


def _representable(entry: TraceEntry) -> bool:
    return entry.event == TRACE_EVENT and entry.detail is None and entry.at.microsecond == 0


def _encode_trace(envelope: AnyEnvelope, package: dict[str, Any], ext: dict[str, Any]) -> None:
    trace = [t for t in envelope.header.trace if t.event != CARRY_KEY]
    header_d = _sub(_sub(package, "edXMLEnvelope"), "edXMLHeader")
    thl = header_d.get("TraceHeaderList")
    items_in = thl.get("TraceHeader") if isinstance(thl, dict) else None
    items_in = items_in if isinstance(items_in, list) else []
    items: list[dict[str, Any]] = []
    for entry in trace:
        if not _representable(entry):
            continue
        item = _item(items_in, len(items))
        raw = item.get("OrganId")
        if not (isinstance(raw, str) and _agency(raw.strip()) == entry.agency):
            if entry.agency is None:
                item.pop("OrganId", None)
            else:
                item["OrganId"] = entry.agency
        raw_at = item.get("Timestamp")
        if not (isinstance(raw_at, str) and _read_ts(raw_at) == entry.at):
            item["Timestamp"] = _fmt_timestamp(entry.at)
        items.append(item)
    if len(items) != len(trace):
        ext["header"]["trace"] = [t.model_dump(mode="json") for t in trace]
    if items:
        _sub(header_d, "TraceHeaderList")["TraceHeader"] = items
    elif isinstance(thl, dict):
        thl.pop("TraceHeader", None)
        if not thl:
            header_d.pop("TraceHeaderList")


_RAW = "~raw"  # a key of a residual object: trusted XML the encoder itself made
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;", "\n": "&#10;"}
    | {"\t": "&#9;"}
)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


_SPECIAL = re.compile('[&<>"\r\n\t]')


def _escape(text: str, path: str, table: dict[int, str] = _TEXT_ESCAPES) -> str:
    """Escaped for XML; characters XML cannot carry are checked once over the whole output."""
    return text.translate(table) if _SPECIAL.search(text) else text


def _not_xml(out: str, package: dict[str, Any]) -> SchemaViolation:
    detail = "a character XML cannot carry (a control character or a lone surrogate)"
    where = ""
    match = _NOT_XML.search(out)
    if match:
        line = out.count("\n", 0, match.start()) + 1
        where = f"line {line} of the output"
    return SchemaViolation(
        f"cannot write edXML: {detail} ({where})", errors=[FieldError("", f"{where}: {detail}")]
    )


def _write(out: list[str], d: dict[str, Any], spec: Complex, indent: str, path: str) -> None:
    """Append the element whose start tag is open (``<edXML:X``, attributes still to come)."""
    attrs = d.get("@")
    if isinstance(attrs, dict):
        declared: dict[str, str] = {}
        for key, value in attrs.items():
            name = str(key)
            if name[:1] == "{":
                uri, _, local = name[1:].partition("}")
                prefix = "xlink" if uri == XLINK_NS else declared.get(uri, f"ns{len(declared)}")
                if uri not in declared:
                    declared[uri] = prefix
                    out.append(f' xmlns:{prefix}="{_escape(uri, path, _ATTR_ESCAPES)}"')
                name = f"{prefix}:{local}"
            out.append(f' {name}="{_escape(str(value), path, _ATTR_ESCAPES)}"')
    out.append(">\n")
    inner = indent + "  "
    for child in spec.children:
        value = d.get(child.name)
        if value is None:
            continue
        kind = child.spec
        tag = "edXML:" + child.name
        for item in value if (child.many and isinstance(value, list)) else (value,):
            where = f"{path}/{child.name}"
            if isinstance(kind, Leaf):
                text = item if isinstance(item, str) else str(item)
                out.append(f"{inner}<{tag}>{_escape(text, where)}</{tag}>\n")
            elif isinstance(kind, Complex) and isinstance(item, dict):
                out.append(f"{inner}<{tag}")
                _write(out, item, kind, inner, where)
                out.append(f"{inner}</{tag}>\n")
    fragments = d.get("#")
    if isinstance(fragments, list):
        for fragment in fragments:
            text = etree.tostring(_fragment(str(fragment)), encoding="unicode")
            out.append(f"{inner}{text}\n")
    raw = d.get(_RAW)
    if isinstance(raw, str):
        out.append(f"{inner}{raw}\n")


def _fragment(text: str) -> etree._Element:
    return xmlsafe.parse(text.encode("utf-8"), _FRAGMENT_LIMITS)


# -- streaming attachments ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StreamedAttachment:
    """One attachment written to its sink: what a claim check needs (size, sha256) and its
    metadata as the package gave it."""

    index: int
    content_id: str | None
    name: str | None
    media_type: str | None
    description: str | None
    size: int
    sha256: str


#: Limits for the streaming path: the document may be large (its attachments), every other text
#: node stays small.
STREAM_LIMITS = XmlLimits(max_bytes=4 * 1024**3, max_text=1024 * 1024)

_ATTACHMENT = f"{{{NS}}}Attachment"
_ENCODED = f"{{{NS}}}ContentTransferEncoded"
_META = {f"{{{NS}}}{n}": n for n in ("ContentId", "AttachmentName", "ContentType", "Description")}


class _AttachmentTarget:
    """An lxml parser target: metadata of each Attachment, its base64 decoded piece by piece."""

    def __init__(self, open_sink: Callable[[int], _Sink], guard: xmlsafe.StreamGuard) -> None:
        self.open_sink = open_sink
        self.guard = guard
        self.done: list[StreamedAttachment] = []
        self.stack: list[str] = []
        self.meta: dict[str, str] | None = None
        self.leaf: str | None = None
        self.text: list[str] = []
        self.sink: _Sink | None = None
        self.pending = ""
        self.padded = False
        self.size = 0
        self.hash = hashlib.sha256()
        self.index = 0

    def start(self, tag: str, attrib: dict[str, str], nsmap: Any = None) -> None:
        self.guard.enter(tag, attrib)
        parent = self.stack[-1] if self.stack else None
        self.stack.append(tag)
        if tag == _ATTACHMENT and parent == f"{{{NS}}}AttachmentEncoded":
            self.meta = {}
        elif self.meta is not None and parent == _ATTACHMENT:
            if tag == _ENCODED:
                self.sink = self.open_sink(self.index)
                self.pending, self.padded, self.size = "", False, 0
                self.hash = hashlib.sha256()
            elif tag in _META:
                self.leaf, self.text = _META[tag], []

    def data(self, text: str) -> None:
        if self.sink is not None and self.stack[-1] == _ENCODED:
            self._decode(text, final=False)
            return
        self.guard.text(len(text))
        if self.leaf is not None:
            self.text.append(text)

    def _decode(self, text: str, *, final: bool) -> None:
        chunk = self.pending + "".join(text.split())
        usable = len(chunk) if final else len(chunk) - len(chunk) % 4
        piece, self.pending = chunk[:usable], chunk[usable:]
        if not piece:
            return
        if self.padded:
            raise self._bad_base64()
        try:
            raw = binascii.a2b_base64(piece, strict_mode=True)
        except (binascii.Error, ValueError):
            raise self._bad_base64() from None
        self.padded = piece.endswith("=")
        assert self.sink is not None
        self.sink.write(raw)
        self.hash.update(raw)
        self.size += len(raw)

    def _bad_base64(self) -> SchemaViolation:
        path = "/" + "/".join(local_name(t) for t in self.stack)
        return SchemaViolation(
            f"edXML attachment {self.index + 1} is not valid base64 ({path})",
            errors=[FieldError(path, "the attachment is not valid base64")],
        )

    def end(self, tag: str) -> None:
        self.guard.leave()
        self.stack.pop()
        if tag == _ENCODED and self.sink is not None:
            self._decode("", final=True)
            self.sink = None
        elif self.leaf is not None and tag in _META and self.meta is not None:
            self.meta[self.leaf] = "".join(self.text).strip()
            self.leaf = None
        elif tag == _ATTACHMENT and self.meta is not None:
            meta = self.meta
            self.done.append(
                StreamedAttachment(
                    index=self.index,
                    content_id=meta.get("ContentId"),
                    name=meta.get("AttachmentName"),
                    media_type=meta.get("ContentType"),
                    description=meta.get("Description"),
                    size=self.size,
                    sha256=self.hash.hexdigest(),
                )
            )
            self.index += 1
            self.meta = None
            self.size = 0

    def doctype(self, *args: Any) -> None:
        raise MalformedInput(
            "refused XML: a DOCTYPE is not allowed (no DTDs, no entities)",
            errors=[FieldError("", "a DOCTYPE is not allowed")],
        )

    def close(self) -> None:
        return None

    def drain(self) -> list[StreamedAttachment]:
        done, self.done = self.done, []
        return done


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def iter_attachments(
    stream: _Readable,
    open_sink: Callable[[int], _Sink],
    *,
    limits: XmlLimits = STREAM_LIMITS,
    chunk_size: int = 64 * 1024,
) -> Iterator[StreamedAttachment]:
    """Stream the attachments of an edXML package: each ``AttachmentEncoded/Attachment``'s
    base64 is decoded as it is read and written to ``open_sink(index)``; memory stays at about
    ``chunk_size`` whatever the attachment's size. Yields each attachment as it completes.

    Uses lxml's event parser with a target (the streaming form of iterparse: iterparse itself
    would build each element, holding an attachment's whole base64 text at once), under the same
    hardening as :func:`xmlsafe.parse`: no DOCTYPE, no entities, no network, the ``limits``.
    """
    guard = xmlsafe.StreamGuard(limits)
    target = _AttachmentTarget(open_sink, guard)
    parser = xmlsafe.safe_parser(target=target)
    try:
        while chunk := stream.read(chunk_size):
            data = guard.feed_prolog(chunk)
            if data:
                parser.feed(data)
            yield from target.drain()
        rest = guard.flush()
        if rest:
            parser.feed(rest)
        parser.close()
    except etree.XMLSyntaxError as exc:
        line, column = exc.position if exc.position else (exc.lineno or 0, 0)
        path = "/" + "/".join(guard.path) if guard.path else ""
        message = str(exc.msg or exc).split(", line ")[0]
        raise MalformedInput(
            f"not well-formed XML at line {line}, column {column}: {message}",
            errors=[FieldError(path, f"line {line}, column {column}: {message}")],
        ) from None
    yield from target.drain()
