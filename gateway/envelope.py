"""The Envelope: the one canonical, typed, versioned model every wire format is translated into.

Pure values, no I/O. An envelope is ``{"version", "kind", "header", "body"}``; ``kind`` picks the
body model (``document``: văn bản; ``status``: trạng thái; ``dossier``: hồ sơ, reserved for the
dossier issue). Version ``1.0``: a later incompatible change gets a new version and a new model,
and the codec accepts both while systems migrate.
"""

from __future__ import annotations

import enum
import re
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    StringConstraints,
    Tag,
    TypeAdapter,
    model_validator,
)

SCHEMA_VERSION = "1.0"

#: The national electronic identifier of an agency (mã định danh điện tử, QĐ 20/2020/QĐ-TTg):
#: four groups, level 4 to level 1 from left to right, e.g. ``000.00.00.H57`` (UBND tỉnh Thừa
#: Thiên Huế), ``000.00.12.H57`` (a unit under it), ``000.21.35.H57`` (a unit under that).
AGENCY_CODE_RE = re.compile(r"^\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}$")
AgencyCode = Annotated[str, StringConstraints(pattern=AGENCY_CODE_RE.pattern)]

def _utc_text(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


#: An aware instant; the canonical JSON writes it in UTC (``...Z``), so equal instants written
#: with different offsets encode to the same bytes.
Instant = Annotated[AwareDatetime, PlainSerializer(_utc_text, when_used="json")]

ShortText = Annotated[str, StringConstraints(min_length=1, max_length=255)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=4000)]


class Kind(enum.StrEnum):
    DOCUMENT = "document"
    STATUS = "status"
    DOSSIER = "dossier"  # reserved: the dossier hand-over issue adds its body


class Priority(enum.StrEnum):
    """Độ khẩn: thường, khẩn, thượng khẩn, hỏa tốc."""

    NORMAL = "normal"
    URGENT = "urgent"
    VERY_URGENT = "very_urgent"
    FLASH = "flash"


class StatusCode(enum.StrEnum):
    """Status codes of QCVN 102:2016 (edXML status packages), plus the gateway's own receipts."""

    RECEIVED = "01"  # đã đến
    REJECTED = "02"  # từ chối tiếp nhận (reason required)
    ACCEPTED = "03"  # đã tiếp nhận
    ASSIGNED = "04"  # phân công
    PROCESSING = "05"  # đang xử lý
    COMPLETED = "06"  # hoàn thành
    RECALL_REQUESTED = "13"  # thu hồi
    RECALL_AGREED = "15"  # đồng ý thu hồi / cập nhật
    RECALL_REFUSED = "16"  # từ chối thu hồi / cập nhật


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class AgencyAddress(_Model):
    """One agency by its code."""

    agency: AgencyCode


class SubtreeAddress(_Model):
    """Every agency under ``under`` (optionally only those of one level, e.g. ``district``)."""

    under: AgencyCode
    level: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z_]{0,31}$")] | None = None
    include_self: bool = False


ADDRESS_TAGS = frozenset({"agency", "subtree"})


def _address_tag(value: Any) -> str:
    if isinstance(value, dict):
        return "subtree" if "under" in value else "agency"
    return "subtree" if isinstance(value, SubtreeAddress) else "agency"


Address = Annotated[
    Annotated[AgencyAddress, Tag("agency")] | Annotated[SubtreeAddress, Tag("subtree")],
    Discriminator(_address_tag),
]


class TraceEntry(_Model):
    """One hop or event the gateway recorded on the way (also kept in the audit trail)."""

    at: Instant
    event: ShortText
    agency: AgencyCode | None = None
    detail: LongText | None = None


class Header(_Model):
    id: uuid.UUID | None = Field(default=None, description="Assigned by the gateway if absent")
    sender: AgencyCode
    to: list[Address] = Field(min_length=1, max_length=200)
    created: Instant | None = Field(default=None, description="Set by the gateway if absent")
    priority: Priority = Priority.NORMAL
    due: Instant | None = None
    references: list[uuid.UUID] = Field(default_factory=list, max_length=50)
    trace: list[TraceEntry] = Field(default_factory=list, max_length=200)


class Attachment(_Model):
    """A file: inline (base64, small) or by reference to the blob store (sha256, claim check)."""

    name: ShortText
    media_type: Annotated[str, StringConstraints(pattern=r"^[\w.+-]+/[\w.+-]+$", max_length=127)]
    size: int = Field(ge=0)
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    content: Annotated[str, StringConstraints(max_length=1_400_000)] | None = Field(
        default=None, description="base64 of the bytes when the file is small enough to inline"
    )
    description: LongText | None = None


class DocumentType(_Model):
    """Loại văn bản, e.g. ``{"code": "CT", "name": "Chỉ thị"}``."""

    code: Annotated[str, StringConstraints(min_length=1, max_length=16)]
    name: ShortText


class Promulgation(_Model):
    """Nơi và ngày ban hành."""

    place: ShortText
    date: date


class Signer(_Model):
    """Người ký: họ tên, chức vụ."""

    name: ShortText
    position: ShortText | None = None


class DocumentBody(_Model):
    """An official document (văn bản): number and notation, type, subject, signer..."""

    number: Annotated[str, StringConstraints(min_length=1, max_length=32)]  # số
    notation: Annotated[str, StringConstraints(min_length=1, max_length=64)]  # ký hiệu
    type: DocumentType
    subject: LongText  # trích yếu
    promulgation: Promulgation
    signer: Signer | None = None
    content: Annotated[str, StringConstraints(max_length=100_000)] | None = None
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)
    extra: dict[ShortText, Annotated[str, StringConstraints(max_length=4000)]] = Field(
        default_factory=dict, max_length=50, description="Fields of other systems, kept verbatim"
    )


class StatusBody(_Model):
    """A status report about an earlier message, routed back to that message's sender."""

    about: uuid.UUID
    code: StatusCode
    at: Instant
    by: ShortText | None = Field(default=None, description="The person who acted (cán bộ)")
    comment: LongText | None = None

    @model_validator(mode="after")
    def _reason_for_rejection(self) -> StatusBody:
        if self.code in {StatusCode.REJECTED, StatusCode.RECALL_REFUSED} and not self.comment:
            raise ValueError(f"status {self.code.value} needs a comment giving the reason")
        return self


class DocumentEnvelope(_Model):
    version: Literal["1.0"] = "1.0"
    kind: Literal["document"]
    header: Header
    body: DocumentBody


class StatusEnvelope(_Model):
    version: Literal["1.0"] = "1.0"
    kind: Literal["status"]
    header: Header
    body: StatusBody


Envelope = Annotated[DocumentEnvelope | StatusEnvelope, Field(discriminator="kind")]
AnyEnvelope = DocumentEnvelope | StatusEnvelope
ENVELOPE: TypeAdapter[AnyEnvelope] = TypeAdapter(Envelope)


def stamp(envelope: AnyEnvelope, *, message_id: uuid.UUID, now: datetime) -> AnyEnvelope:
    """The envelope as the gateway accepted it: with its id and creation time filled in."""
    header = envelope.header.model_copy(
        update={"id": message_id, "created": envelope.header.created or now}
    )
    return envelope.model_copy(update={"header": header})


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the Envelope, as committed in ``schemas/envelope.schema.json``."""
    schema = ENVELOPE.json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://lienthong.gov.vn/schemas/envelope-1.0.schema.json",
        "title": "Lienthong Envelope 1.0",
        **schema,
    }
