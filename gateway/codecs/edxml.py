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
       any order into plain data; every element the table does not know (vendor extensions, in
       any namespace) is set aside as a serialized XML fragment under its parent and taken out of
       the tree;
    4. validation of what is left against ``schemas/edxml.xsd`` (below);
    5. mapping to the Envelope (table below) and pydantic validation.
    Errors are :class:`MalformedInput` (not XML, hostile XML) or :class:`SchemaViolation` (XML that
    breaks the structure or the Envelope's rules); each :class:`FieldError` pointer is the element
    path (``/edXML/edXMLEnvelope/edXMLHeader/MessageHeader/To[2]/OrganId``) and its detail starts
    with ``line N``.

Validation. ``schemas/edxml.xsd`` stays the published schema, and every package the codec
accepts is valid under it; it is not run on every package. XSD 1.0 cannot say "these children,
in any order, with these counts", so the schema checks names, nesting and value formats and the
walk checks the counts; the walk already knows each element's place in the table, so it also
checks, cheaply and conservatively, everything else the schema would: no character content
where only elements may be, no attribute the schema does not allow, neither children nor
attributes on a leaf, every typed leaf (dates, timestamps, status code, priority,
BussinessDocType) matching its pattern, and base64 that decodes (the attachments' decoding is
that check; a status package with attachments, which it does not decode, goes to the XSD). When
any of these fails, the XSD itself validates the tree and names the error exactly as it always
has; a false alarm costs only that validation. Tests check both directions on the samples and on
mutations of them, and that every sample and every encoded package validates.

Encoding writes the standard's element order (From, To, Code, PromulgationInfo, DocumentType,
Subject, Content, SignerInfo, DueDate, ToPlaces, OtherInfo, ResponseFor, SteeringType, DocumentId;
for statuses From, ResponseFor, StaffInfo, StatusCode, Description, Timestamp; in Bussiness
DocumentId, BussinessDocType, BussinessDocReason, Paper, BussinessDocumentInfo,
ReplacementInfoList, StaffInfo), every element with the ``edXML:`` prefix, dates ``yyyy/MM/dd``
and timestamps ``yyyy/MM/dd HH:mm:ss`` in Vietnam time (+07:00). The writer is generated once
from the table (straight-line code per element) and escapes every text it takes from the
envelope or the residual; fragments are re-parsed by the hardened parser before they are
written, so a forged residual cannot inject markup.

What maps where (document packages)::

    MessageHeader/From/OrganId                  header.sender
    MessageHeader/To[i]/OrganId                 header.to[i] (AgencyAddress)
    MessageHeader/DocumentId                    body.document_id (mã văn bản: the document across
                                                its versions); header.id derives from it (below)
    MessageHeader/Code/CodeNumber, CodeNotation body.number, body.notation
    MessageHeader/PromulgationInfo/Place, Date  body.promulgation.place, .date
    MessageHeader/DocumentType/Type, TypeName   body.type.code, body.type.name
    MessageHeader/Subject, Content              body.subject, body.content
    MessageHeader/SignerInfo/FullName, Position body.signer.name, .position
    MessageHeader/DueDate                       header.due (that day, 23:59:59+07:00)
    MessageHeader/ToPlaces/Place[i]             body.to_places[i] (nơi nhận as printed; empty
                                                Places are none, the raw list then kept)
    MessageHeader/OtherInfo/Priority            header.priority (0 normal, 1 urgent, 2 very
                                                urgent, 3 flash; 4 "hỏa tốc hẹn giờ" reads as flash)
    MessageHeader/ResponseFor[i]/DocumentId     header.references (message_id_for, non-empty ones)
    TraceHeaderList/TraceHeader[i]              header.trace[i]: at=Timestamp, agency=OrganId,
                                                event "edxml.trace"
    TraceHeaderList/Bussiness/BussinessDocType  body.operation: 0 new (văn bản mới), 1 recall (thu
                                                hồi), 2 update (cập nhật), 3 replace (thay thế);
                                                no Bussiness block: new
    .../Bussiness/BussinessDocReason            body.operation_reason (lý do)
    .../Bussiness/ReplacementInfoList/ReplacementInfo[i]/DocumentId
                                                body.replaces[i], for a replace (each one
                                                required); the list of another operation stays
                                                in the residual as it came
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

Message ids. A new document's id is ``message_id_for(DocumentId)``: a DocumentId written as a UUID
(``str(uuid)``) is that id, any other maps to a uuid5; so the same package sent twice is one
message, and a status's ``ResponseFor/DocumentId`` names it. A recall, update or replace carries
the DocumentId of the document it acts on, the same as the original's, so its id is
:func:`operation_message_id`: a uuid5 over the DocumentId, the operation and
:func:`content_digest`, the SHA-256 of the decoded envelope's canonical JSON without header.id,
header.created, header.trace and the attachments' base64 (their sha256 stands for them). The
decoded content does not depend on whitespace, element order or the signature, so the same
package resent (or relayed with more TraceHeaders) is the same message, while a recall, an
update, a second different update and a replace of one document are each a message of their
own. A status keeps ``body.about = message_id_for(
ResponseFor/DocumentId)``, the original document's id: an answer (15, 16) to a recall or an
update names the document, and the store attributes it to the open recall. Encoding writes
``body.document_id`` as the DocumentId; an envelope without one (born as JSON) gets the
conventional ``{OrganId},{yyyy/MM/dd},{number}/{notation}`` if its id derives from that, else its
id (:func:`document_id`), and the gateway extension says the DocumentId is the gateway's. The id
travels in the extension only when it is not the one decoding derives
(:func:`package_message_id`).

The residual. Whatever the Envelope has no field for (From/To contact details, OrganizationInCharge,
TypeDetail, Competence, OtherInfo but Priority, ResponseFor, SteeringType, Bussiness but the
operation, its reason and the replaced DocumentIds (Bussiness/DocumentId, Paper,
BussinessDocumentInfo, each ReplacementInfo's OrganIdList, StaffInfo...), StaffInfo but Staff,
ContentId, manifest attributes, vendor extension fragments, and a raw value whenever the
Envelope's value would not write it back identically, e.g. a legacy agency code) is kept as one
JSON object mirroring the XML (element name -> text, object, or list for repeated elements;
``"@"`` attributes; ``"#"`` extension fragments; keys sorted). Until the model has a place for it
(see :data:`CARRY_KEY`) it travels in:

- documents: ``body.extra["edxml"]`` (and ``"edxml.2"``, ``"edxml.3"``... when longer than a value
  may be);
- statuses: ``header.trace`` entries with event ``"edxml"`` (detail = the JSON, at = body.at).

Encoding starts from the residual and writes the Envelope's values into it: a raw residual value
is written back only when it decodes to the Envelope's current value, so an edited envelope never
writes stale data (a ReplacementInfoList whose DocumentIds were the replaces of an envelope that
is no longer a replace is dropped, not written half).

Envelope fields edXML has no element for (header.created; statuses' header.id, priority, due and
references; addresses of a subtree; trace entries other than TraceHeaders; attachments stored by
reference; ``extra`` entries of other systems; a document_id left empty; a value edXML can only
write approximately, such as a due instant that is not the end of a day) are written, only when
present, as one extension element ``<lt:Envelope xmlns:lt="https://lienthong.gov.vn/ns/edxml-ext/1">``
holding their canonical JSON, at the end of MessageHeader; ``gateway_extension=False`` leaves it
out for a peer that refuses foreign elements (and those fields are then lost on that hop).

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

import base64
import binascii
import functools
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    DocumentBody,
    DocumentEnvelope,
    Operation,
    Priority,
    StatusEnvelope,
)
from gateway.errors import FieldError, MalformedInput, SchemaViolation

__all__ = [
    "CARRY_KEY",
    "EXT_NS",
    "ICT",
    "NS",
    "TRACE_EVENT",
    "Spooled",
    "StreamedAttachment",
    "carried",
    "content_digest",
    "decode_edxml",
    "document_id",
    "encode_edxml",
    "iter_attachments",
    "iter_edxml",
    "message_id_for",
    "operation_message_id",
    "package_message_id",
    "spool_edxml",
    "stored_attachments",
    "xsd_text",
]

NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
XML_NS = "http://www.w3.org/XML/1998/namespace"
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
_DATE_RE = re.compile(r"^([0-9]{4})/([0-9]{2})/([0-9]{2})$")
_TIMESTAMP_RE = re.compile(
    r"^([0-9]{4})/([0-9]{2})/([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})$"
)
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
#: What XSD's ``xs:token`` whitespace is (XML's four characters, not Python's Unicode whitespace).
_XML_SPACE = " \t\n\r"
#: The patterns of the XSD's simple types (see ``_SIMPLE_TYPES``), as the walk checks them: a
#: value that does not match is handed to the XSD itself (see "Validation" in the docstring).
_LEAF_PATTERNS = {
    "DateOrEmpty": re.compile(r"(?:[0-9]{4}/[0-9]{2}/[0-9]{2})?"),
    "Timestamp": re.compile(r"[0-9]{4}/[0-9]{2}/[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"),
    "StatusCode": re.compile("|".join(STATUS_CODES)),
    "PriorityCode": re.compile(r"[0-4]?"),
    "BussinessDocType": re.compile(r"[0-3]"),
}
# How the walk treats a child (the first item of a walk-table entry's payload tuple).
_TEXT, _TYPED, _BASE64, _COMPLEX, _ANY = range(5)


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
    """An element with element children, written in ``children`` order.

    ``walk`` (by Clark tag: name, mode, many, payload) and ``write`` (in order: name, start tag,
    end tag, leaf?, many, spec) are the same table precomputed for the two hot loops."""

    type_name: str
    children: tuple[Child, ...]
    attributes: tuple[str, ...] = ()
    walk: dict[str, tuple[str, int, bool, Any]] = field(
        init=False, repr=False, compare=False, hash=False
    )
    write: tuple[tuple[str, str, str, bool, bool, Complex | None], ...] = field(
        init=False, repr=False, compare=False, hash=False
    )
    #: The text leaves that may appear once, by Clark tag: their name (most of the children,
    #: the walk's short path; every other child is in ``walk``).
    plain: dict[str, str] = field(init=False, repr=False, compare=False, hash=False)
    #: The element children (name, many, spec): the only keys of a walked node whose value
    #: is an object or a list of objects (what :func:`_prune` visits).
    nested: tuple[tuple[str, bool, Complex], ...] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        walk: dict[str, tuple[str, int, bool, Any]] = {}
        write: list[tuple[str, str, str, bool, bool, Complex | None]] = []
        nested: list[tuple[str, bool, Complex]] = []
        for c in self.children:
            spec = c.spec
            if isinstance(spec, Complex):
                walk[f"{{{NS}}}{c.name}"] = (c.name, _COMPLEX, c.many, spec)
                nested.append((c.name, c.many, spec))
            elif isinstance(spec, AnyContent):
                walk[f"{{{NS}}}{c.name}"] = (c.name, _ANY, c.many, None)
            elif spec.type == "xs:base64Binary":
                walk[f"{{{NS}}}{c.name}"] = (c.name, _BASE64, c.many, None)
            elif spec.type in _LEAF_PATTERNS:
                walk[f"{{{NS}}}{c.name}"] = (c.name, _TYPED, c.many, _LEAF_PATTERNS[spec.type])
            else:
                walk[f"{{{NS}}}{c.name}"] = (c.name, _TEXT, c.many, None)
            if not isinstance(spec, AnyContent):
                sub = spec if isinstance(spec, Complex) else None
                start, end = f"<edXML:{c.name}", f"</edXML:{c.name}>\n"
                write.append((c.name, start, end, sub is None, c.many, sub))
        object.__setattr__(self, "walk", walk)
        object.__setattr__(self, "write", tuple(write))
        object.__setattr__(self, "nested", tuple(nested))
        plain = {tag: name for tag, (name, mode, many, _) in walk.items()
                 if mode == _TEXT and not many}
        object.__setattr__(self, "plain", plain)


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

_FROM = f"{{{NS}}}From"


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
    """The DocumentId ``encode_edxml`` writes for ``envelope``: ``body.document_id``; else (an
    envelope born elsewhere) the conventional form if the message id is derived from it; else
    the message id itself (so that a status answering it names the message id again)."""
    header, body = envelope.header, envelope.body
    if body.document_id is not None:
        return body.document_id
    return _default_document_id(
        header.id, header.sender, body.promulgation.date, body.number, body.notation
    )


#: What the digest of an operation's content leaves out: the id it derives, what the gateway
#: or the hops on the way add (a resent or relayed package is the same message), and inline
#: attachments' base64, which their sha256 stands for (so the digest costs the same whatever
#: the files weigh).
_DIGEST_EXCLUDE: dict[str, Any] = {
    "header": {"id", "created", "trace"},
    "body": {"attachments": {"__all__": {"content"}}},
}


def content_digest(envelope: DocumentEnvelope) -> str:
    """SHA-256 of the envelope's canonical content (sorted-key JSON, instants in UTC), without
    ``header.id``, ``header.created``, ``header.trace`` and the attachments' base64 (their
    sha256 is in it). A decoded package's content does not depend on whitespace, element order
    or the signature, so neither does this."""
    data = envelope.model_dump(mode="json", exclude=_DIGEST_EXCLUDE)
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


def operation_message_id(document_key: str, operation: Operation, digest: str) -> uuid.UUID:
    """The message id of a recall, update or replace package: a uuid5 over its DocumentId,
    its operation and :func:`content_digest`. Those packages carry the DocumentId of the
    document they act on, so the DocumentId alone cannot tell them apart."""
    name = f"{operation.value}\n{document_key.strip()}\n{digest}"
    return uuid.uuid5(DOCUMENT_ID_NAMESPACE, name)


def package_message_id(envelope: DocumentEnvelope) -> uuid.UUID:
    """The message id :func:`decode_edxml` gives the package :func:`encode_edxml` writes for
    ``envelope`` (when no gateway extension says otherwise)."""
    key = document_id(envelope)
    operation = envelope.body.operation
    if operation is Operation.NEW:
        return message_id_for(key)
    return operation_message_id(key, operation, content_digest(envelope))


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
    # isoformat() is one C call and always writes four year digits: 2018-09-28 -> 2018/09/28.
    return value.isoformat().replace("-", "/")


def _fmt_timestamp(value: datetime) -> str:
    local = value.astimezone(ICT).replace(tzinfo=None)
    return local.isoformat(" ", "seconds").replace("-", "/")


_END_OF_DAY = time(23, 59, 59)


def _due(day: date) -> datetime:
    return datetime.combine(day, _END_OF_DAY, tzinfo=ICT)


def _cid(raw: str) -> str:
    value = raw.strip()
    if value[:4].lower() == "cid:":
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


def _missing(el: etree._Element, name: str) -> SchemaViolation:
    return _violation(el, f"required element {name} is missing", element_path(el) + "/" + name)


# -- the walk -------------------------------------------------------------------------------------
def _child(parent: etree._Element, name: str, index: int = 0) -> etree._Element:
    """The ``index``-th child ``name`` of ``parent`` (else ``parent``): for error messages."""
    found = list(parent.iterchildren(f"{{{NS}}}{name}"))
    return found[index] if index < len(found) else parent


def _fine_attributes(attrs: dict[str, str], spec: Complex) -> bool:
    """Attributes the XSD allows on ``spec``'s element: its own unqualified ones, and any of
    another namespace (``anyAttribute ##other``) but XSI's, which the XSD itself interprets."""
    for key in attrs:
        if key[:1] == "{":
            uri = key[1:].partition("}")[0]
            if uri == NS or uri == XSI_NS:
                return False
        elif key not in spec.attributes:
            return False
    return True


class _Walk:
    """One walk over the tree with the structure table: every known element becomes plain data
    (a dict per element with children, its stripped text per leaf, a list per repeated child),
    which the decoder consumes and whose rest is the residual. Unknown elements are set aside
    as ``"#"`` fragments and taken out of the tree; the gateway namespace's go to ``extensions``
    (the decoder reads ``lt:Envelope``) and stay in it (the XSD allows other namespaces).

    On the way it checks what the XSD would check of what is left, conservatively: character
    content where only elements may be, attributes the XSD does not allow, element children or
    attributes on a leaf, a typed leaf (date, timestamp, status code...) off its pattern. Any of
    these sets ``suspicious`` and the XSD itself then decides (and names the error). Whitespace
    is XML's four characters: an ASCII string that ``isspace()`` is one of them (the other ASCII
    spaces are control characters XML cannot carry), two C calls instead of a strip."""

    __slots__ = ("base64", "elements", "extensions", "nested_from", "suspicious")

    def __init__(self) -> None:
        self.suspicious = False
        self.nested_from = False  # a From in a From: the vendor defect _repair() undoes
        self.base64 = False  # a base64 leaf was seen: decoding it is its check
        self.extensions: list[tuple[dict[str, Any], etree._Element]] = []
        #: Each walked node with its element, for error messages (and the origin of an
        #: attachment): a list append per node costs less than a dict keyed by id(node), and
        #: is looked up only a few times per package.
        self.elements: list[tuple[dict[str, Any], etree._Element]] = []

    def element(self, node: dict[str, Any]) -> etree._Element:
        for walked, el in self.elements:
            if walked is node:
                return el
        raise KeyError("not a walked node")

    def node(self, el: etree._Element, spec: Complex) -> dict[str, Any]:
        node: dict[str, Any] = {}
        self.elements.append((node, el))
        suspicious = False
        text = el.text
        if text is not None and not (text.isascii() and text.isspace()):
            suspicious = True  # character content in element-only content
        if el.keys():
            attrs = {str(k): str(v) for k, v in el.items()}
            node["@"] = attrs
            if not _fine_attributes(attrs, spec):
                suspicious = True
        strays: list[etree._Element] | None = None
        table, plain = spec.walk, spec.plain
        for child in el:
            tag = child.tag
            tail = child.tail
            if tail is not None and not (tail.isascii() and tail.isspace()):
                suspicious = True
            name = plain.get(tag)
            if name is not None:  # a text leaf that may appear once: the usual child
                text = child.text
                if len(child) or child.keys():
                    suspicious = True  # a leaf has neither children nor attributes
                if name in node:
                    raise _violation(child, f"element {name} may appear only once here")
                node[name] = text.strip() if text is not None else ""
                continue
            entry = table.get(tag)
            if entry is None:
                if not isinstance(tag, str):
                    continue
                ns, _, name = tag[1:].partition("}") if tag[:1] == "{" else ("", "", tag)
                if name == "Signature" and ns == DSIG_NS:
                    continue  # verified on the raw bytes; never carried (see the module docstring)
                if tag == _FROM:
                    self.nested_from = True
                if ns == EXT_NS:
                    # Stays in the tree (the XSD allows other namespaces) for its error paths.
                    self.extensions.append((node, child))
                    continue
                node.setdefault("#", []).append(_canonical_fragment(child))
                if strays is None:
                    strays = []
                strays.append(child)
                continue
            name, mode, many, payload = entry
            value: Any
            if mode < _COMPLEX:  # a leaf
                text = child.text
                value = text.strip() if text is not None else ""
                if len(child) or child.keys():
                    suspicious = True  # a leaf has neither children nor attributes
                if mode == _TYPED:
                    if not payload.fullmatch(text.strip(_XML_SPACE) if text else ""):
                        suspicious = True
                elif mode == _BASE64:
                    self.base64 = True
            elif mode == _COMPLEX:
                value = self.node(child, payload)
            else:
                continue  # the Signature in the edXML namespace
            if many:
                items = node.get(name)
                if items is None:
                    node[name] = [value]
                else:
                    items.append(value)
            elif name in node:
                raise _violation(child, f"element {name} may appear only once here")
            else:
                node[name] = value
        if strays is not None:
            for stray in strays:
                el.remove(stray)
        if suspicious:
            self.suspicious = True
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
    uris.discard(XML_NS)  # the xml: prefix is bound by XML itself and never declared
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


def _prune(node: dict[str, Any], spec: Complex) -> bool:
    """Make a walked node the residual once the decoder took what it maps: drop the objects
    left empty, in place (a list of objects stays whole while any of them has content, so it
    stays aligned with the envelope's list). True when anything is left.

    Only the keys that can hold objects are looked at: ``spec``'s element children (a walked
    node's other values are leaf texts, lists of texts, ``"#"`` fragments and the ``"!"``
    mark) and ``"@"``, its attributes (dropped when the decoder emptied them)."""
    for name, many, sub in spec.nested:
        value = node.get(name)
        if value is None:
            continue
        if many:  # a list of objects (never empty once walked; an empty one stays as it is)
            kept = False
            for item in value:
                if item and _prune(item, sub):
                    kept = True
            if not kept and value:
                del node[name]
        elif not (value and _prune(value, sub)):
            del node[name]
    attrs = node.get("@")
    if attrs is not None and not attrs:
        del node["@"]
    return bool(node)


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
    header = _first(_first(_first(root, "edXMLEnvelope"), "edXMLHeader"), "MessageHeader")
    if header is not None:  # where the walk reads it; lxml's find() is Python, this is C
        for outer in list(header.iterchildren(_FROM)):
            if _first(outer, "From") is None:
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


def _first(parent: etree._Element | None, name: str) -> etree._Element | None:
    if parent is None:
        return None
    return next(parent.iterchildren(f"{{{NS}}}{name}"), None)


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


def _check_with_xsd(root: etree._Element) -> None:
    """Validate what the walk left against ``schemas/edxml.xsd``; raise its errors."""
    schema = _xsd()
    if not schema.validate(root):
        raise _xsd_violation(root, schema.error_log)


# -- decoding -------------------------------------------------------------------------------------
_OPERATIONS = {
    "0": Operation.NEW,
    "1": Operation.RECALL,
    "2": Operation.UPDATE,
    "3": Operation.REPLACE,
}
_OPERATION_CODES = {operation: code for code, operation in _OPERATIONS.items()}
_EXT_ENVELOPE = f"{{{EXT_NS}}}Envelope"


def decode_edxml(data: bytes, *, limits: XmlLimits = DEFAULT_LIMITS,
                 claims: Mapping[int, StreamedAttachment] | None = None) -> AnyEnvelope:
    """Parse, repair the known vendor defects, validate and translate one edXML package.
    ``claims``: the attachments :func:`spool_edxml` already took out of the package and
    stored, by their position in AttachmentEncoded; those attachments become claim checks
    (size and sha256, no content) and their base64 is not looked for."""
    defects: list[str] = []
    # Blank text between elements is dropped at parse time: leaf text is stripped anyway, and
    # a signature is verified on the raw bytes, never on this tree.
    root = xmlsafe.parse(data, limits, drop_blank_text=True,
                         recover_if=lambda exc: _known_vendor_defect(exc, defects))
    if root.tag != f"{{{NS}}}edXML":
        where = "/" + local_name(str(root.tag))
        raise _violation(root, f"the root element must be edXML in namespace {NS}", where)
    if defects:
        _repair(root, defects)
    walk = _Walk()
    package = walk.node(root, PACKAGE)
    if walk.nested_from and not defects:
        # A From inside From (the walk saw it; a sound package pays nothing to look for it):
        # repair a fresh tree, the walk took the inner one out of this one.
        root = xmlsafe.parse(data, limits, drop_blank_text=True)
        _repair(root, defects)
        walk = _Walk()
        package = walk.node(root, PACKAGE)
    if walk.suspicious:
        _check_with_xsd(root)
    return _Decoder(package, root, walk, claims or {}).envelope()


_MH_STEPS: tuple[Any, ...] = ("edXMLEnvelope", "edXMLHeader", "MessageHeader")
_TRACE_STEPS: tuple[Any, ...] = ("edXMLEnvelope", "edXMLHeader", "TraceHeaderList")
_BUSSINESS_STEPS = (*_TRACE_STEPS, "Bussiness")
#: Where a field of the Envelope comes from, by its location in the model: the element path a
#: model error points at (resolved only then). Locations with an index are in _origin_steps.
_ORIGINS: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {
    "document": {
        ("header", "sender"): (*_MH_STEPS, "From", "OrganId"),
        ("header", "id"): (*_MH_STEPS, "DocumentId"),
        ("header", "due"): (*_MH_STEPS, "DueDate"),
        ("header", "priority"): (*_MH_STEPS, "OtherInfo", "Priority"),
        ("header", "references"): (*_MH_STEPS, "ResponseFor"),
        ("body", "number"): (*_MH_STEPS, "Code", "CodeNumber"),
        ("body", "notation"): (*_MH_STEPS, "Code", "CodeNotation"),
        ("body", "type", "code"): (*_MH_STEPS, "DocumentType", "Type"),
        ("body", "type", "name"): (*_MH_STEPS, "DocumentType", "TypeName"),
        ("body", "subject"): (*_MH_STEPS, "Subject"),
        ("body", "promulgation", "place"): (*_MH_STEPS, "PromulgationInfo", "Place"),
        ("body", "promulgation", "date"): (*_MH_STEPS, "PromulgationInfo", "PromulgationDate"),
        ("body", "content"): (*_MH_STEPS, "Content"),
        ("body", "signer", "name"): (*_MH_STEPS, "SignerInfo", "FullName"),
        ("body", "signer", "position"): (*_MH_STEPS, "SignerInfo", "Position"),
        ("body", "document_id"): (*_MH_STEPS, "DocumentId"),
        ("body", "to_places"): (*_MH_STEPS, "ToPlaces"),
        ("body", "operation"): (*_BUSSINESS_STEPS, "BussinessDocType"),
        ("body", "operation_reason"): (*_BUSSINESS_STEPS, "BussinessDocReason"),
        ("body", "replaces"): (*_BUSSINESS_STEPS, "ReplacementInfoList"),
        ("body",): _BUSSINESS_STEPS,
    },
    "status": {
        ("header", "sender"): (*_MH_STEPS, "From", "OrganId"),
        ("header", "to"): (*_MH_STEPS, "ResponseFor", "OrganId"),
        ("body", "about"): (*_MH_STEPS, "ResponseFor", "DocumentId"),
        ("body", "code"): (*_MH_STEPS, "StatusCode"),
        ("body", "at"): (*_MH_STEPS, "Timestamp"),
        ("body", "comment"): (*_MH_STEPS, "Description"),
        ("body", "by"): (*_MH_STEPS, "StaffInfo", "Staff"),
        ("body",): (*_MH_STEPS, "Description"),
    },
}


def _origin_steps(kind: str, loc: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The element path of the model location ``loc`` (steps: a name, or (name, index))."""
    if len(loc) == 3 and isinstance(loc[2], int):
        i = loc[2]
        if loc[:2] == ("header", "trace"):
            return (*_TRACE_STEPS, ("TraceHeader", i))
        if kind == "document":
            if loc[:2] == ("header", "to"):
                return (*_MH_STEPS, ("To", i), "OrganId")
            if loc[:2] == ("body", "to_places"):
                return (*_MH_STEPS, "ToPlaces", ("Place", i))
            if loc[:2] == ("body", "replaces"):
                return (*_BUSSINESS_STEPS, "ReplacementInfoList", ("ReplacementInfo", i),
                        "DocumentId")
    return _ORIGINS[kind].get(loc)


def _follow(root: etree._Element, steps: tuple[Any, ...]) -> etree._Element:
    """The element at ``steps`` from ``root``, or the deepest one of them that exists."""
    el = root
    for step in steps:
        name, index = step if isinstance(step, tuple) else (step, 0)
        found = list(el.iterchildren(f"{{{NS}}}{name}"))
        if index >= len(found):
            break
        el = found[index]
    return el


class _Decoder:
    """Takes the Envelope's values out of the walked package; what is left is the residual."""

    def __init__(self, package: dict[str, Any], root: etree._Element, walk: _Walk,
                 claims: Mapping[int, StreamedAttachment] | None = None) -> None:
        self.package, self.root, self.walk = package, root, walk
        self.claims: Mapping[int, StreamedAttachment] = claims or {}
        #: Where a field came from when it is not where _ORIGINS says (the gateway extension,
        #: attachments in manifest order, a Place list with empty places): its element, or its
        #: walked node (looked up only when an error names it).
        self.origin: dict[tuple[Any, ...], etree._Element | dict[str, Any]] = {}
        self.overridden: set[str] = set()
        self.document_key = ""  # the DocumentId as written (an operation's id derives from it)
        envelope = package.get("edXMLEnvelope")
        if envelope is None:
            raise _missing(self.el(package), "edXMLEnvelope")
        header = envelope.get("edXMLHeader")
        if header is None:
            raise _missing(self.el(envelope), "edXMLHeader")
        mh = header.get("MessageHeader")
        if mh is None:
            raise _missing(self.el(header), "MessageHeader")
        self.envelope_node: dict[str, Any] = envelope
        self.header_node: dict[str, Any] = header
        self.mh: dict[str, Any] = mh

    # small readers -------------------------------------------------------------------------
    def el(self, node: dict[str, Any]) -> etree._Element:
        return self.walk.element(node)

    def node(self, parent: dict[str, Any], name: str) -> Any:
        """A required child element's node."""
        found = parent.get(name)
        if found is None:
            raise _missing(self.el(parent), name)
        return found

    def required(self, parent: dict[str, Any], name: str) -> str:
        """A required leaf's text, taken out of the residual (empty: the model names it)."""
        value = parent.pop(name, None)
        if value is None:
            raise _missing(self.el(parent), name)
        return value  # type: ignore[no-any-return]

    def text(self, parent: dict[str, Any], name: str, *, keep: bool = False) -> str | None:
        """An optional leaf's text, taken out of the residual unless ``keep``. An empty one
        reads as None and stays in the residual (written back empty)."""
        value = parent.get(name)
        if not value:
            return None
        if not keep:
            del parent[name]
        return value  # type: ignore[no-any-return]

    def agency(self, parent: dict[str, Any], name: str = "OrganId") -> str:
        raw = parent.get(name)
        if raw is None:
            raise _missing(self.el(parent), name)
        code = _agency(raw)
        if code is None:
            return raw  # type: ignore[no-any-return]  # the model names it, at this element
        if code == raw:
            del parent[name]
        return code

    def parsed(self, parent: dict[str, Any], name: str, parse: Callable[[str], _T]) -> _T:
        """A required leaf, parsed (``_date``, ``_timestamp``), taken out of the residual."""
        raw = self.required(parent, name)
        try:
            return parse(raw)
        except ValueError as exc:
            raise _violation(_child(self.el(parent), name), str(exc)) from None

    # the envelope --------------------------------------------------------------------------
    def envelope(self) -> AnyEnvelope:
        ext, ext_el = self.extension()
        header_ext = ext.get("header")
        self.overridden = set(header_ext) if isinstance(header_ext, dict) else set()
        if type(self.mh.get("StatusCode")) is str:
            obj = self.status()
            kind: type[DocumentEnvelope] | type[StatusEnvelope] = StatusEnvelope
        else:
            obj = self.document()
            kind = DocumentEnvelope
        if ext:
            self.apply_extension(obj, ext, ext_el)
        self.drop_defaults(obj)
        package = self.package
        carry = _carry_text(package) if _prune(package, PACKAGE) else ""
        if kind is DocumentEnvelope:
            obj["body"]["extra"].update(_carry_extra(carry))
        elif carry:
            at = obj["body"]["at"]
            obj["header"]["trace"].extend(
                {"at": at, "event": CARRY_KEY, "detail": chunk} for chunk in _chunks(carry)
            )
        try:
            envelope: DocumentEnvelope | StatusEnvelope = (
                kind.__pydantic_validator__.validate_python(obj)  # model_validate, one call less
            )
        except pydantic.ValidationError as exc:
            raise self.model_violation(exc, obj["kind"]) from None
        if (
            isinstance(envelope, DocumentEnvelope)
            and envelope.body.operation is not Operation.NEW
            and "id" not in self.overridden
        ):
            # The DocumentId names the document acted on: the content tells packages apart.
            derived = operation_message_id(
                self.document_key, envelope.body.operation, content_digest(envelope)
            )
            header = envelope.header.model_copy(update={"id": derived})
            envelope = envelope.model_copy(update={"header": header})
        return envelope

    def extension(self) -> tuple[dict[str, Any], etree._Element | None]:
        """The gateway's own extension (``lt:Envelope`` in MessageHeader), parsed; any other
        element of the gateway's namespace is an extension fragment like any other."""
        found: etree._Element | None = None
        for node, el in self.walk.extensions:
            if found is None and node is self.mh and el.tag == _EXT_ENVELOPE:
                found = el
            else:
                node.setdefault("#", []).append(_canonical_fragment(el))
        if found is None:
            return {}, None
        try:
            value = orjson.loads((found.text or "").strip())
        except orjson.JSONDecodeError as exc:
            raise _violation(found, f"the gateway extension is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise _violation(found, "the gateway extension must be a JSON object")
        return value, found

    def apply_extension(self, obj: dict[str, Any], ext: dict[str, Any], el: Any) -> None:
        for part in ("header", "body"):
            values = ext.get(part, {})
            if not isinstance(values, dict):
                raise _violation(el, f"the gateway extension's {part} must be an object")
            for key, value in values.items():
                self.origin[(part, key)] = el
                if part == "body" and key == "attachments":
                    obj["body"]["attachments"] = self.merged(obj, value, el)
                elif part == "body" and key == "extra":
                    if not isinstance(value, dict):
                        raise _violation(el, "the gateway extension's extra must be an object")
                    obj["body"]["extra"] = {**value, **obj["body"].get("extra", {})}
                else:
                    obj[part][key] = value

    def merged(self, obj: dict[str, Any], value: Any, el: Any) -> list[Any]:
        """The package's attachments with those stored by reference put back in their places."""
        merged = list(obj["body"].get("attachments", []))
        try:
            for item in sorted(value, key=lambda i: int(i.get("index", 0))):
                item = dict(item)
                merged.insert(int(item.pop("index", len(merged))), item)
        except (AttributeError, TypeError, ValueError):
            detail = "the gateway extension's attachments must be objects with an index"
            raise _violation(el, detail) from None
        return merged

    def drop_defaults(self, obj: dict[str, Any]) -> None:
        """Take out of the residual the wire values that encoding regenerates from the Envelope
        alone, so an envelope that came without a residual goes back without one."""
        body, mh = obj["body"], self.mh
        if obj["kind"] == "status":
            rf = mh.get("ResponseFor")
            rf = rf[0] if rf else None
            if rf is not None and rf.get("DocumentId") == str(body.get("about")):
                del rf["DocumentId"]
        body_node = self.envelope_node.get("edXMLBody")
        manifest = body_node.get("edXMLManifest") if body_node is not None else None
        if manifest is not None:
            attrs = manifest.get("@")
            if attrs is not None and attrs.get("version") == "1.0":
                del attrs["version"]

    def trace(self) -> list[dict[str, Any]]:
        thl = self.header_node.get("TraceHeaderList")
        entries: list[dict[str, Any]] = []
        if thl is None:
            return entries
        for th in thl.get("TraceHeader", ()):
            raw = th.get("OrganId")
            agency = None
            if raw is not None:
                agency = _agency(raw)
                if agency == raw:
                    del th["OrganId"]
            at = self.parsed(th, "Timestamp", _timestamp)
            entries.append({"at": at, "event": TRACE_EVENT, "agency": agency})
        return entries

    def document(self) -> dict[str, Any]:
        mh = self.mh
        tos = mh.get("To", ())
        if not tos and "to" not in self.overridden:
            raise _missing(self.el(mh), "To")
        header: dict[str, Any] = {
            "sender": self.agency(self.node(mh, "From")),
            "to": [{"agency": self.agency(to)} for to in tos],
        }
        key = mh.pop("DocumentId", None) or None  # empty: encoding writes one (document_id())
        self.document_key = key or ""
        header["id"] = message_id_for(key) if key else None
        due = mh.get("DueDate")
        header["due"] = _due(self.parsed(mh, "DueDate", _date)) if due else None
        header["priority"] = Priority.NORMAL
        other = mh.get("OtherInfo")
        if other is not None:
            raw = other.get("Priority")
            if raw:
                header["priority"] = _PRIORITIES.get(raw, raw)
                if _PRIORITY_CODES.get(header["priority"]) == raw:
                    del other["Priority"]
        header["references"] = [
            message_id_for(d) for rf in mh.get("ResponseFor", ()) if (d := rf.get("DocumentId"))
        ]
        header["trace"] = self.trace()

        code = self.node(mh, "Code")
        prom = self.node(mh, "PromulgationInfo")
        dtype = self.node(mh, "DocumentType")
        required = self.required
        body: dict[str, Any] = {
            "number": required(code, "CodeNumber"),
            "notation": required(code, "CodeNotation"),
            "type": {"code": required(dtype, "Type"), "name": required(dtype, "TypeName")},
            "subject": required(mh, "Subject"),
            "promulgation": {
                "place": required(prom, "Place"),
                "date": self.parsed(prom, "PromulgationDate", _date),
            },
            "content": self.text(mh, "Content"),
            "signer": None,
            "document_id": key,
            "extra": {},
        }
        signer = mh.get("SignerInfo")
        if signer is not None and signer.get("FullName"):
            body["signer"] = {
                "name": self.text(signer, "FullName"),
                "position": self.text(signer, "Position"),
            }
        places = mh.get("ToPlaces")
        if places is not None and "Place" in places:
            written: list[str] = places["Place"]
            typed = [place for place in written if place]
            body["to_places"] = typed
            if len(typed) == len(written):
                del places["Place"]
            else:  # an empty Place is no place; the raw list then stays as it came
                nonempty = [i for i, place in enumerate(written) if place]
                place_els = list(self.el(places).iterchildren(f"{{{NS}}}Place"))
                for j, i in enumerate(nonempty):
                    self.origin[("body", "to_places", j)] = place_els[i]
        self.operation(body)
        body["attachments"] = self.attachments()
        return {"kind": "document", "header": header, "body": body}

    def operation(self, body: dict[str, Any]) -> None:
        """``Bussiness``: what the package does to its document (new, recall, update, replace),
        why, and for a replace which documents it replaces. The rest of the block (Paper,
        StaffInfo, BussinessDocumentInfo, each ReplacementInfo's OrganIdList...) stays in the
        residual; so does a ReplacementInfoList of a package that is not a replace."""
        thl = self.header_node.get("TraceHeaderList")
        bussiness = thl.get("Bussiness") if thl is not None else None
        if bussiness is None:
            self.origin[("body",)] = self.mh
            return
        raw = bussiness.pop("BussinessDocType", None)
        operation = Operation.NEW
        if raw is not None:
            found = _OPERATIONS.get(raw)
            if found is None:  # the XSD's pattern rules it out; kept for a clear error anyway
                where = _child(self.el(bussiness), "BussinessDocType")
                raise _violation(where, f"{raw!r} is not an operation (0-3)")
            operation = found
        body["operation"] = operation.value
        body["operation_reason"] = self.text(bussiness, "BussinessDocReason")
        if operation is not Operation.REPLACE:
            return
        replaced = bussiness.get("ReplacementInfoList")
        infos = replaced.get("ReplacementInfo", ()) if replaced is not None else ()
        body["replaces"] = [self.required(info, "DocumentId") for info in infos]

    def attachments(self) -> list[dict[str, Any]]:
        body = self.envelope_node.get("edXMLBody")
        manifest = body.get("edXMLManifest") if body is not None else None
        refs = manifest.get("Reference", ()) if manifest is not None else ()
        enc = self.package.get("AttachmentEncoded")
        files = enc.get("Attachment", ()) if enc is not None else ()
        if not files and not refs:
            return []
        position = {id(f): k for k, f in enumerate(files)}  # in AttachmentEncoded, as streamed
        by_cid: dict[str, dict[str, Any]] = {}
        for f in files:
            own = f.get("ContentId")
            if own is not None:
                by_cid.setdefault(_cid(own), f)
        ordered: list[tuple[dict[str, Any] | None, dict[str, Any]]] = []
        used: set[int] = set()
        for ref in refs:
            listed = ref.get("ContentId")
            cid = _cid(listed) if listed is not None else ""
            found = by_cid.get(cid) if cid else None
            if found is None or id(found) in used:
                ref_el = self.el(ref)
                where = _child(ref_el, "ContentId") if listed is not None else ref_el
                raise _violation(
                    where, f"the manifest lists ContentId {cid!r} but no Attachment carries it"
                )
            used.add(id(found))
            ordered.append((ref, found))
        for f in files:
            if id(f) not in used:
                f["!"] = "unlisted"  # in AttachmentEncoded but not in the manifest
                ordered.append((None, f))
        # Residual lists aligned with body.attachments: files in envelope order.
        if enc is not None and files:
            enc["Attachment"] = [f for _, f in ordered]
        result = [self.attachment(i, ref, f, self.claims.get(position[id(f)]))
                  for i, (ref, f) in enumerate(ordered)]
        for i, (ref, f) in enumerate(ordered):
            own = f.get("ContentId")
            if ref is not None and own is not None and ref.get("ContentId") == own:
                del ref["ContentId"]  # written back from the Attachment's
            if own == f"cid:{i + 1}":
                del f["ContentId"]  # what encoding generates for the i-th attachment
        return result

    def attachment(
        self, i: int, ref: dict[str, Any] | None, f: dict[str, Any],
        claim: StreamedAttachment | None = None,
    ) -> dict[str, Any]:
        self.origin[("body", "attachments", i)] = f
        values: dict[str, str | None] = {}
        for field_name in ("AttachmentName", "ContentType", "Description"):
            own = self.text(f, field_name)
            other = self.text(ref, field_name, keep=True) if ref is not None else None
            values[field_name] = own if own is not None else other
            if ref is not None and other is not None and other == values[field_name]:
                del ref[field_name]  # the same as the Attachment's: written back from it
        media = values["ContentType"] or "application/octet-stream"
        media_type = media.split(";")[0].strip().lower()
        if media_type != media:
            f["ContentType"] = media
        cid = f.get("ContentId")
        name: str | None = values["AttachmentName"] or values["Description"]
        if not name and cid is not None:
            name = _cid(cid)
        meta = {"name": name, "media_type": media_type, "description": values["Description"]}
        text = f.pop("ContentTransferEncoded", None)
        if claim is not None:  # stored already: the skeleton holds its digest, not its bytes
            return {**meta, "size": claim.size, "sha256": claim.sha256, "content": None}
        if text is None:
            raise _missing(self.el(f), "ContentTransferEncoded")
        encoded = "".join(text.split())
        try:
            raw = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            # The XSD names the error as it always has (with the value); if it lets this
            # through, the codec's own check still refuses it.
            _check_with_xsd(self.root)
            where = _child(self.el(f), "ContentTransferEncoded")
            raise _violation(where, "the attachment is not valid base64") from None
        return {
            **meta,
            "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "content": encoded if len(encoded) <= _INLINE_BASE64 else None,
        }

    def status(self) -> dict[str, Any]:
        if self.walk.base64:
            _check_with_xsd(self.root)  # attachments the status does not decode: the XSD checks
        mh = self.mh
        frm = self.node(mh, "From")
        rfs = mh.get("ResponseFor")
        if not rfs:
            raise _missing(self.el(mh), "ResponseFor")
        rf = rfs[0]
        about = rf.get("DocumentId")
        if about is None:
            raise _missing(self.el(rf), "DocumentId")
        header: dict[str, Any] = {
            "sender": self.agency(frm),
            "to": []
            if "to" in self.overridden and "OrganId" not in rf
            else [{"agency": self.agency(rf)}],
            "trace": self.trace(),
        }
        staff = mh.get("StaffInfo")
        if "Description" not in mh:
            self.origin[("body",)] = mh
        body: dict[str, Any] = {
            "about": message_id_for(about),
            "code": self.required(mh, "StatusCode"),
            "at": self.parsed(mh, "Timestamp", _timestamp),
            "comment": self.text(mh, "Description"),
            "by": self.text(staff, "Staff") if staff is not None else None,
        }
        return {"kind": "status", "header": header, "body": body}

    def model_violation(self, exc: pydantic.ValidationError, kind: str) -> SchemaViolation:
        errors: list[FieldError] = []
        for err in exc.errors(include_url=False)[:20]:
            loc = tuple(
                p for p in err["loc"] if p not in ("agency", "subtree") or len(err["loc"]) < 4
            )
            element = self.el(self.mh)
            for cut in range(len(loc), 0, -1):
                found = self.origin.get(loc[:cut])
                if found is not None:
                    element = self.el(found) if isinstance(found, dict) else found
                    break
                steps = _origin_steps(kind, loc[:cut])
                if steps is not None:
                    element = _follow(self.root, steps)
                    break
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
    # Sorted keys: the same residual makes the same text whatever order the input had.
    return orjson.dumps(residual, option=orjson.OPT_SORT_KEYS).decode("utf-8") if residual else ""


def _chunks(text: str) -> list[str]:
    """Split into values of at most 4000 characters that survive whitespace stripping: a space
    at a cut is written as its JSON escape (whitespace only occurs inside JSON strings)."""
    if len(text) <= _CARRY_CHUNK:
        return [text]  # JSON text neither starts nor ends with whitespace
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
    if len(text) <= _CARRY_CHUNK:  # the usual case: one value (see _chunks)
        return {CARRY_KEY: text} if text else {}
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
        if len(extra) == 1:  # the usual case: one part (or another system's one field)
            parts = [extra[CARRY_KEY]] if CARRY_KEY in extra else []
        else:
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


def _put_text(d: dict[str, Any], name: str, value: str | None) -> None:
    """:func:`_put` for a text leaf (the common case, without the two indirections)."""
    raw = d.get(name)
    if raw is None:
        if value is not None:
            d[name] = value
    elif not (type(raw) is str and (raw.strip() or None) == value):
        if value is None:
            del d[name]
        else:
            d[name] = value


def _read_priority(raw: str) -> Priority | None:
    # An empty Priority reads as normal (decoding keeps it, empty, in the residual).
    return _PRIORITIES.get(raw.strip() or "0")


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
    trusted: tuple[dict[str, Any], str] | None = None
    if ext and gateway_extension:
        try:
            text = orjson.dumps(ext, option=orjson.OPT_SORT_KEYS).decode("utf-8")
        except orjson.JSONEncodeError as exc:  # a lone surrogate in a value
            raise SchemaViolation(
                f"cannot write edXML: {exc}", errors=[FieldError("", f"gateway extension: {exc}")]
            ) from None
        trusted = (mh, f'<lt:Envelope xmlns:lt="{EXT_NS}">{_escape(text)}</lt:Envelope>')
    out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<edXML:edXML xmlns:edXML="{NS}"']
    _write_package(out, package, trusted)
    out.append("</edXML:edXML>\n")
    return "".join(out).encode("utf-8")


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
    # DocumentId and the message id (see the module docstring, "Message ids").
    mh["DocumentId"] = document_id(envelope)
    if body.document_id is None:
        ext["body"]["document_id"] = None  # DocumentId above is the gateway's, not the sender's
    if header.id is None or header.id != package_message_id(envelope):
        ext["header"]["id"] = str(header.id) if header.id else None
    code = _sub(mh, "Code")
    _put_text(code, "CodeNumber", body.number)
    _put_text(code, "CodeNotation", body.notation)
    prom = _sub(mh, "PromulgationInfo")
    _put_text(prom, "Place", body.promulgation.place)
    _put(prom, "PromulgationDate", body.promulgation.date, _fmt_date, _read_date)
    dtype = _sub(mh, "DocumentType")
    _put_text(dtype, "Type", body.type.code)
    _put_text(dtype, "TypeName", body.type.name)
    _put_text(mh, "Subject", body.subject)
    _put_text(mh, "Content", body.content)
    signer = mh.get("SignerInfo")
    if body.signer is not None or isinstance(signer, dict):
        signer = _sub(mh, "SignerInfo")
        _put_text(signer, "FullName", body.signer.name if body.signer else None)
        position = body.signer.position if body.signer else None
        _put_text(signer, "Position", position)
        if not signer:
            del mh["SignerInfo"]
    due_day = header.due.astimezone(ICT).date() if header.due else None
    _put(mh, "DueDate", due_day, _fmt_date, _read_date)
    if header.due is not None and header.due != _due(header.due.astimezone(ICT).date()):
        ext["header"]["due"] = _json(header.due)
    places = mh.get("ToPlaces")
    if body.to_places or isinstance(places, dict):
        places = _sub(mh, "ToPlaces")
        raw = places.get("Place")
        # The raw list (it had an empty Place) stays while it still reads as to_places.
        if not (
            isinstance(raw, list)
            and all(type(place) is str for place in raw)
            and [place.strip() for place in raw if place.strip()] == body.to_places
        ):
            places["Place"] = list(body.to_places)
        if not places.get("Place"):
            places.pop("Place", None)
        if not places:
            del mh["ToPlaces"]
    other = _sub(mh, "OtherInfo")
    _put(other, "Priority", header.priority, _PRIORITY_CODES.__getitem__, _read_priority)
    derived = [
        message_id_for(rf["DocumentId"])
        for rf in mh.get("ResponseFor") or []
        if isinstance(rf, dict)
        and isinstance(rf.get("DocumentId"), str)
        and rf["DocumentId"].strip()
    ]
    if header.references != derived:
        ext["header"]["references"] = [str(r) for r in header.references]
    others = {k: v for k, v in body.extra.items() if not _is_carry_key(k)}
    if others:
        ext["body"]["extra"] = others
    _encode_operation(body, package)
    _encode_attachments(body.attachments, package, ext)


def _encode_operation(body: DocumentBody, package: dict[str, Any]) -> None:
    """``TraceHeaderList/Bussiness``: written when the package came with one, or when the
    operation or its reason says something a package without one would not."""
    header_d = _sub(_sub(package, "edXMLEnvelope"), "edXMLHeader")
    thl = header_d.get("TraceHeaderList")
    bussiness = thl.get("Bussiness") if isinstance(thl, dict) else None
    if not isinstance(bussiness, dict):
        if body.operation is Operation.NEW and body.operation_reason is None:
            return
        bussiness = _sub(_sub(header_d, "TraceHeaderList"), "Bussiness")
    bussiness["BussinessDocType"] = _OPERATION_CODES[body.operation]
    _put_text(bussiness, "BussinessDocReason", body.operation_reason)
    listed = bussiness.get("ReplacementInfoList")
    items_in = listed.get("ReplacementInfo") if isinstance(listed, dict) else None
    items_in = items_in if isinstance(items_in, list) else []
    if body.operation is Operation.REPLACE:
        items = []
        for i, key in enumerate(body.replaces):
            item = _item(items_in, i)
            _put_text(item, "DocumentId", key)
            items.append(item)
        _sub(bussiness, "ReplacementInfoList")["ReplacementInfo"] = items
    elif items_in and not all(
        isinstance(item, dict) and isinstance(item.get("DocumentId"), str) for item in items_in
    ):
        # Entries without their DocumentId held the replaces of a replace: stale once the
        # envelope is no longer one. A list that came verbatim (with its DocumentIds) stays.
        assert isinstance(listed, dict)
        del listed["ReplacementInfo"]
        if not listed:
            del bussiness["ReplacementInfoList"]


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
    taken: set[str] | None = None  # the ContentIds in use, once a new one is needed
    for i, att in enumerate(attachments):
        if att.content is None:
            by_reference.append({"index": i, **att.model_dump(mode="json", exclude_none=True)})
            continue
        k = len(files)  # its position in AttachmentEncoded
        f = _item(files_in, k)
        cid = f.get("ContentId")
        if not isinstance(cid, str) or not cid.strip():
            if taken is None:
                taken = {
                    _cid(g["ContentId"])
                    for g in files_in
                    if isinstance(g, dict) and isinstance(g.get("ContentId"), str)
                }
            cid = f"cid:{k + 1}"
            while _cid(cid) in taken:
                cid = f"cid:{k + 1}-{att.sha256[:12]}"
            taken.add(_cid(cid))
            f["ContentId"] = cid
        _put_text(f, "AttachmentName", att.name)
        media = f.get("ContentType")
        if not (isinstance(media, str) and media.split(";")[0].strip().lower() == att.media_type):
            f["ContentType"] = att.media_type
        _put_text(f, "Description", att.description)
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
    _put_text(mh, "Description", body.comment)
    at_text = _fmt_timestamp(body.at)
    raw_at = mh.get("Timestamp")
    if not (isinstance(raw_at, str) and _read_ts(raw_at) == body.at):
        mh["Timestamp"] = at_text
    if _timestamp(at_text) != body.at:
        ext["body"]["at"] = _json(body.at)
    staff = mh.get("StaffInfo")
    if body.by is not None or isinstance(staff, dict):
        staff = _sub(mh, "StaffInfo")
        _put_text(staff, "Staff", body.by)
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


def _encode_trace(envelope: AnyEnvelope, package: dict[str, Any], ext: dict[str, Any]) -> None:
    trace = [t for t in envelope.header.trace if t.event != CARRY_KEY]
    header_d = _sub(_sub(package, "edXMLEnvelope"), "edXMLHeader")
    thl = header_d.get("TraceHeaderList")
    items_in = thl.get("TraceHeader") if isinstance(thl, dict) else None
    items_in = items_in if isinstance(items_in, list) else []
    items: list[dict[str, Any]] = []
    for entry in trace:
        if entry.event != TRACE_EVENT or entry.detail is not None or entry.at.microsecond:
            continue  # not what a TraceHeader can say: in the gateway extension below
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


_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\r": "&#13;", "\n": "&#10;"}
    | {"\t": "&#9;"}
)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
#: An attribute's name as a residual may give it: an XML name, or ``{uri}name``.
_ATTRIBUTE_NAME = re.compile(r"(?:\{[^{}\s]+\})?[^\W\d][\w.\-]*")


def _text(value: str, where: str, out: list[str], table: dict[int, str] = _TEXT_ESCAPES) -> str:
    """``value`` escaped for XML. A printable string (the common case, one C call) holds no
    character XML cannot carry; any other is searched for one and refused."""
    if value.isprintable():
        if "&" in value or "<" in value or ">" in value or '"' in value:
            return value.translate(table)
        return value
    if _NOT_XML.search(value):
        raise _not_xml(where, out)
    return value.translate(table)


def _escape(text: str, table: dict[int, str] = _TEXT_ESCAPES) -> str:
    return text.translate(table)


def _not_xml(where: str, out: list[str]) -> SchemaViolation:
    detail = "a character XML cannot carry (a control character or a lone surrogate)"
    line = "".join(out).count("\n") + 1
    place = f"line {line} of the output, {where}"
    return SchemaViolation(
        f"cannot write edXML: {detail} ({place})", errors=[FieldError("", f"{place}: {detail}")]
    )


def _attributes(out: list[str], attrs: dict[str, Any]) -> None:
    """The ``"@"`` of a residual object as attributes of the start tag being written."""
    declared: dict[str, str] = {}
    for key, value in attrs.items():
        name = str(key)
        if not _ATTRIBUTE_NAME.fullmatch(name):
            raise SchemaViolation(
                f"cannot write edXML: {name!r} is not an attribute name",
                errors=[FieldError("/body/extra/edxml", "an attribute name is not XML")],
            )
        if name[:1] == "{":
            uri, _, local = name[1:].partition("}")
            if uri == XML_NS:  # xml:lang, xml:space: bound by XML itself, never declared
                out.append(f' xml:{local}="{_text(str(value), name, out, _ATTR_ESCAPES)}"')
                continue
            prefix = "xlink" if uri == XLINK_NS else declared.get(uri, f"ns{len(declared)}")
            if uri not in declared:
                declared[uri] = prefix
                out.append(f' xmlns:{prefix}="{_text(uri, name, out, _ATTR_ESCAPES)}"')
            name = f"{prefix}:{local}"
        out.append(f' {name}="{_text(str(value), name, out, _ATTR_ESCAPES)}"')


_Writer = Callable[[list[str], dict[str, Any], "tuple[dict[str, Any], str] | None"], None]


def _writers(spec: Complex) -> _Writer:
    """The writer of the structure table, generated once at import: for every element of the
    package tree a function of straight-line code, one test per known child in the standard's
    order, start and end tags with their indentation as constants (writing is a third of a round
    trip, and most of it was walking the table and concatenating). A writer appends the element
    whose start tag is open (``<edXML:X``, attributes still to come) from its residual object
    ``d``; what it writes is escaped (leaf text), re-parsed (``"#"`` fragments) or ``trusted``:
    XML the encoder itself made for one object (the gateway extension), never the residual's."""
    sources: list[str] = []

    def generate(spec: Complex, indent: str, path: str) -> str:
        fname = f"_write{path.replace('/', '_')}"
        inner = indent + "  "
        lines = [
            f"def {fname}(out, d, trusted):",
            "    get = d.get",
            "    attrs = get('@')",
            "    if type(attrs) is dict:",
            "        _attributes(out, attrs)",
            "    out.append('>\\n')",
        ]
        for name, start, end, leaf, many, sub in spec.write:
            lines += [f"    value = get({name!r})", "    if value is not None:"]
            if leaf:
                body = [
                    "text = item if type(item) is str else str(item)",
                    "if not text.isprintable() or '&' in text or '<' in text or '>' in text:",
                    f"    text = _text(text, {name!r}, out)",
                    f"out.append(f{inner + start + '>{text}' + end!r})",
                ]
            else:
                assert sub is not None
                body = [
                    "if type(item) is dict:",
                    f"    out.append({inner + start!r})",
                    f"    {generate(sub, inner, f'{path}/{name}')}(out, item, trusted)",
                    f"    out.append({inner + end!r})",
                ]
            if many:
                lines.append("        for item in (value if type(value) is list else (value,)):")
                lines += [f"            {line}" for line in body]
            else:
                lines += [f"        {line.replace('item', 'value')}" for line in body]
        known = frozenset(f"{{{NS}}}{name}" for name, *_ in spec.write)
        lines += [
            "    fragments = get('#')",
            "    if type(fragments) is list:",
            "        for fragment in fragments:",
            f"            out.append({inner!r} + _fragment(str(fragment), {known!r}, {path!r})"
            " + '\\n')",
            "    if trusted is not None and trusted[0] is d:",
            f"        out.append({inner!r} + trusted[1] + '\\n')",
        ]
        sources.append("\n".join(lines))
        return fname

    top = generate(spec, "", f"_{spec.type_name}")
    scope: dict[str, Any] = {"_attributes": _attributes, "_text": _text, "_fragment": _fragment}
    code = compile("\n\n".join(sources), f"<edXML writers: {spec.type_name}>", "exec")
    exec(code, scope)  # noqa: S102 -- code made above from the static table, no input in it
    writer: _Writer = scope[top]
    return writer


def _parsed_fragment(text: str) -> tuple[str, str]:
    root = xmlsafe.parse(text.encode("utf-8"), _FRAGMENT_LIMITS)
    return str(root.tag), etree.tostring(root, encoding="unicode")


_fragment_cached = functools.lru_cache(maxsize=256)(_parsed_fragment)


def _fragment(text: str, known: frozenset[str], path: str) -> str:
    """An extension fragment of the residual, re-parsed with the hardened parser and written
    by lxml: a residual cannot smuggle anything but one well-formed element, and never one
    that stands for an element the standard defines there (decoding maps those; a fragment of
    that name could only be a forgery, e.g. a second To that a peer would read as real). Small
    fragments (the usual vendor element) are cached: the same text is the same output."""
    tag, written = _fragment_cached(text) if len(text) <= 4096 else _parsed_fragment(text)
    if tag in known:
        name = local_name(tag)
        raise SchemaViolation(
            f"an extension fragment may not be a {name} element: {name} is the standard's",
            errors=[FieldError(f"{path.replace('_', '/')}/{name}", "not an extension")],
        )
    return written


_write_package = _writers(PACKAGE)


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
    """An lxml parser target: metadata of each Attachment, its base64 decoded piece by piece.
    With a ``skeleton`` builder, it also builds the package without the attachments' base64:
    each ContentTransferEncoded holds the hex SHA-256 of its decoded bytes instead (valid
    base64 itself, and it makes two packages that differ only in a file differ)."""

    def __init__(self, open_sink: Callable[[int], _Sink], guard: xmlsafe.StreamGuard,
                 skeleton: etree.TreeBuilder | None = None) -> None:
        self.open_sink = open_sink
        self.guard = guard
        self.skeleton = skeleton
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
        if self.skeleton is not None:
            self.skeleton.start(tag, attrib, nsmap)  # type: ignore[call-arg,arg-type]  # stubs lag lxml
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
        if self.skeleton is not None:
            self.skeleton.data(text)
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
            if self.skeleton is not None:
                self.skeleton.data(self.hash.hexdigest())
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
        if self.skeleton is not None:
            self.skeleton.end(tag)

    def doctype(self, *args: Any) -> None:
        raise MalformedInput(
            "refused XML: a DOCTYPE is not allowed (no DTDs, no entities)",
            errors=[FieldError("", "a DOCTYPE is not allowed")],
        )

    def comment(self, text: str) -> None:
        if self.skeleton is not None and self.stack:  # a signature's C14N may cover it
            self.skeleton.comment(text)

    def pi(self, target: str, data: str | None = None) -> None:
        if self.skeleton is not None and self.stack:
            self.skeleton.pi(target, data)

    def close(self) -> None:
        return None

    def drain(self) -> list[StreamedAttachment]:
        done, self.done = self.done, []
        return done


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Spooled:
    """A package read as a stream: its ``skeleton`` (the package with each attachment's base64
    replaced by the hex SHA-256 of its bytes; small, for :func:`decode_edxml` with
    ``claims``) and the attachments written to their sinks, by position."""

    skeleton: bytes
    attachments: tuple[StreamedAttachment, ...]

    @property
    def claims(self) -> dict[int, StreamedAttachment]:
        return {a.index: a for a in self.attachments}


def spool_edxml(
    stream: _Readable,
    open_sink: Callable[[int], _Sink],
    *,
    limits: XmlLimits = STREAM_LIMITS,
    chunk_size: int = 64 * 1024,
) -> Spooled:
    """Read a package of any size once: every attachment's base64 is decoded into
    ``open_sink(index)`` as it streams by, and the rest is kept as a small skeleton; memory
    stays at about ``chunk_size`` plus the skeleton, whatever the attachments weigh. Same
    hardening as :func:`iter_attachments`."""
    builder = etree.TreeBuilder()
    done = tuple(_stream(stream, open_sink, limits, chunk_size, builder))
    root = builder.close()
    return Spooled(etree.tostring(root, xml_declaration=True, encoding="UTF-8"), done)


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
    yield from _stream(stream, open_sink, limits, chunk_size, None)


def _stream(
    stream: _Readable,
    open_sink: Callable[[int], _Sink],
    limits: XmlLimits,
    chunk_size: int,
    skeleton: etree.TreeBuilder | None,
) -> Iterator[StreamedAttachment]:
    guard = xmlsafe.StreamGuard(limits)
    target = _AttachmentTarget(open_sink, guard, skeleton)
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


# -- streaming a package out ----------------------------------------------------------------------
#: Read from a stored file at a time: a multiple of 3, so each piece encodes to base64 without
#: padding and the pieces join into one valid base64 text.
_OUT_CHUNK = 3 * 64 * 1024


def stored_attachments(envelope: AnyEnvelope) -> list[Attachment]:
    """The envelope's attachments kept by reference (claim checks: no inline content)."""
    files: list[Attachment] = getattr(envelope.body, "attachments", [])
    return [a for a in files if a.content is None]


def iter_edxml(
    envelope: AnyEnvelope, chunks: Callable[[str], Iterable[bytes]]
) -> Iterator[bytes]:
    """The package :func:`encode_edxml` writes, with every stored attachment's bytes read
    from ``chunks(sha256)`` and written as base64 piece by piece, so a package of any size
    goes out with flat memory. The recipient gets the files themselves, not a reference.

    The package is written with a unique placeholder in each stored attachment's
    ContentTransferEncoded (valid base64 itself, so the writer's checks hold), then cut at the
    placeholders."""
    stored = stored_attachments(envelope)
    if not stored:
        yield encode_edxml(envelope)
        return
    placeholders: list[tuple[bytes, str]] = []
    files = []
    for att in getattr(envelope.body, "attachments", []):
        if att.content is None:
            mark = f"LIENTHONGCLAIM{len(placeholders):06d}{att.sha256}"
            placeholders.append((mark.encode("ascii"), att.sha256))
            att = att.model_copy(update={"content": mark})
        files.append(att)
    body = envelope.body.model_copy(update={"attachments": files})
    package = encode_edxml(envelope.model_copy(update={"body": body}))
    for cut, sha256 in placeholders:
        before, found, package = package.partition(cut)
        if not found:  # pragma: no cover - the writer always writes the content it is given
            raise RuntimeError(f"edXML writer dropped the content of attachment {sha256}")
        yield before
        yield from _base64_pieces(chunks(sha256))
    yield package


def _base64_pieces(source: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for block in source:
        data = rest + block
        usable = len(data) - len(data) % 3
        rest = data[usable:]
        for start in range(0, usable, _OUT_CHUNK):
            yield base64.b64encode(data[start:min(start + _OUT_CHUNK, usable)])
    if rest:
        yield base64.b64encode(rest)
