"""The Envelope: the one canonical, typed, versioned model every wire format is translated into.

Pure values, no I/O. An envelope is ``{"version", "kind", "header", "body"}``; ``kind`` picks the
body model (``document``: văn bản; ``status``: trạng thái; ``dossier``: hồ sơ thủ tục hành
chính). Version ``1.0``: a later incompatible change gets a new version and a new model,
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
    ValidationInfo,
    field_validator,
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
    DOSSIER = "dossier"  # a dossier handed over to an agency (chuyển hồ sơ)
    DOSSIER_STATUS = "dossier_status"  # a step about a dossier: accepted, returned, result...


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


class Operation(enum.StrEnum):
    """What a document package does (edXML ``Bussiness/BussinessDocType``)."""

    NEW = "new"  # 0: văn bản mới
    RECALL = "recall"  # 1: thu hồi
    UPDATE = "update"  # 2: cập nhật
    REPLACE = "replace"  # 3: thay thế


#: The identity of a document across its versions (edXML ``DocumentId``), conventionally
#: ``{OrganId},{yyyy/MM/dd},{number}/{notation}``; any printable text up to 255 characters.
DocumentKey = Annotated[
    str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class DocumentBody(_Model):
    """An official document (văn bản): number and notation, type, subject, signer...

    ``document_id`` names the document across its versions: a recall or an update carries the
    original's ``document_id`` and goes to the original's recipients; a replacement names the
    documents it replaces in ``replaces``."""

    number: Annotated[str, StringConstraints(min_length=1, max_length=32)]  # số
    notation: Annotated[str, StringConstraints(min_length=1, max_length=64)]  # ký hiệu
    type: DocumentType
    subject: LongText  # trích yếu
    promulgation: Promulgation
    signer: Signer | None = None
    content: Annotated[str, StringConstraints(max_length=100_000)] | None = None
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)
    document_id: DocumentKey | None = Field(
        default=None, description="Mã văn bản (edXML DocumentId): the document across versions"
    )
    operation: Operation = Operation.NEW
    operation_reason: LongText | None = Field(
        default=None, description="Lý do thu hồi / cập nhật / thay thế (BussinessDocReason)"
    )
    replaces: list[DocumentKey] = Field(
        default_factory=list, max_length=50, description="document_id of each replaced document"
    )
    to_places: list[ShortText] = Field(
        default_factory=list, max_length=100, description="Nơi nhận as printed (ToPlaces/Place)"
    )
    extra: dict[ShortText, Annotated[str, StringConstraints(max_length=4000)]] = Field(
        default_factory=dict, max_length=50, description="Fields of other systems, kept verbatim"
    )

    @model_validator(mode="after")
    def _operation_targets(self) -> DocumentBody:
        if self.operation in {Operation.RECALL, Operation.UPDATE} and self.document_id is None:
            raise ValueError(f"a {self.operation.value} needs the document_id of its document")
        if self.operation is Operation.REPLACE and not self.replaces:
            raise ValueError("a replace needs the document_id of each document it replaces")
        if self.operation is not Operation.REPLACE and self.replaces:
            raise ValueError("replaces is only for operation replace")
        return self


class StatusBody(_Model):
    """A status report about an earlier message, routed back to that message's sender."""

    about: uuid.UUID
    code: StatusCode
    at: Instant
    by: ShortText | None = Field(default=None, description="The person who acted (cán bộ)")
    # Checked even when absent, so that a missing reason is reported at /body/comment.
    comment: LongText | None = Field(default=None, validate_default=True)

    @field_validator("comment")
    @classmethod
    def _reason_for_rejection(cls, comment: str | None, info: ValidationInfo) -> str | None:
        code = info.data.get("code")  # absent when the code itself was invalid
        if code in {StatusCode.REJECTED, StatusCode.RECALL_REFUSED} and not comment:
            raise ValueError(f"status {code.value} needs a comment giving the reason")
        return comment


class DossierStatus(enum.IntEnum):
    """TrangThaiHoSo of the national public-service portal (Cổng Dịch vụ công quốc gia)."""

    REGISTERED = 1  # mới đăng ký
    ACCEPTED = 2  # được tiếp nhận
    NOT_ACCEPTED = 3  # không được tiếp nhận
    PROCESSING = 4  # đang xử lý
    AWAITING_SUPPLEMENT = 5  # chờ bổ sung
    AWAITING_FEES = 6  # chờ thực hiện nghĩa vụ tài chính
    WITHDRAWN = 7  # công dân yêu cầu rút hồ sơ
    STOPPED = 8  # dừng xử lý
    PROCESSED = 9  # đã xử lý xong
    RETURNED_RESULT = 10  # đã trả kết quả


class ApplicantKind(enum.StrEnum):
    CITIZEN = "citizen"  # công dân
    ORGANISATION = "organisation"  # tổ chức, doanh nghiệp


Email = Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")]


class Applicant(_Model):
    """Chủ hồ sơ. Personal data: stored with the dossier, never logged."""

    kind: ApplicantKind = ApplicantKind.CITIZEN
    name: ShortText
    identity: Annotated[str, StringConstraints(pattern=r"^[0-9A-Z]{6,20}$")] | None = Field(
        default=None, description="Số CCCD / CMND / hộ chiếu, or the organisation's tax code"
    )
    address: LongText | None = None
    phone: Annotated[str, StringConstraints(pattern=r"^\+?[0-9 .-]{6,20}$")] | None = None
    email: Email | None = None


class DossierStep(_Model):
    """One step of a dossier's route: the agency that holds it and its working days."""

    agency: AgencyCode
    working_days: float = Field(gt=0, le=365, description="Số ngày làm việc of this step")
    name: ShortText | None = None


#: Mã hồ sơ as real systems write it: receiving agency, ``yymmdd``, sequence.
DOSSIER_CODE_RE = re.compile(r"^\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}-\d{6}-\d{4,6}$")
DossierCode = Annotated[str, StringConstraints(pattern=DOSSIER_CODE_RE.pattern)]
#: Mã thủ tục hành chính, e.g. ``1.001612.000.00.00.H57`` or the national ``1.001612``.
ProcedureCode = Annotated[
    str, StringConstraints(pattern=r"^\d\.\d{6}(\.\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2})?$")
]


class DossierBody(_Model):
    """An administrative dossier (hồ sơ thủ tục hành chính) as it stands when this message is
    sent: what it is, who applied, where it was received, its route and where it is now."""

    code: DossierCode  # mã hồ sơ
    procedure_code: ProcedureCode  # mã thủ tục hành chính
    procedure_name: LongText  # tên thủ tục hành chính
    applicant: Applicant  # chủ hồ sơ
    receiving_agency: AgencyCode  # cơ quan tiếp nhận
    received_at: Instant  # ngày tiếp nhận
    appointment_at: Instant  # ngày hẹn trả
    status: DossierStatus = DossierStatus.ACCEPTED  # TrangThaiHoSo
    route: list[DossierStep] = Field(default_factory=list, max_length=20)
    current_step: int = Field(default=0, ge=0, description="Index into route")
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)
    comment: LongText | None = None
    fields: dict[ShortText, Annotated[str, StringConstraints(max_length=4000)]] = Field(
        default_factory=dict, max_length=100, description="Free fields a procedure needs"
    )

    @model_validator(mode="after")
    def _consistent(self) -> DossierBody:
        if self.appointment_at < self.received_at:
            raise ValueError("appointment_at (ngày hẹn trả) is before received_at")
        if self.route and self.current_step >= len(self.route):
            raise ValueError(f"current_step {self.current_step} is past the route's end")
        if not self.code.startswith(self.receiving_agency):
            raise ValueError("the dossier code starts with the receiving agency's code")
        return self


class DossierAction(enum.StrEnum):
    """A step of a dossier hand-over (hồ sơ liên thông) other than the hand-over itself, which
    is a ``dossier`` envelope."""

    ACCEPT = "accept"  # tiếp nhận: the receiver of a hand-over takes the dossier
    RETURN = "return"  # trả lại: the receiver sends it back to who handed it over (reason)
    RESULT = "result"  # trả kết quả: the holder sends the result to the receiving agency
    APOLOGY = "apology"  # phiếu xin lỗi và hẹn lại ngày trả kết quả (reason, new date)
    WITHDRAW = "withdraw"  # rút hồ sơ (the citizen asks) or dừng xử lý: ends it (reason)
    ALERT = "alert"  # cảnh báo: the gateway's own, a step about to fall due or overdue
    TRANSFER = "transfer"  # the gateway's own: a dissolved agency's dossier to its successor


class AlertLevel(enum.StrEnum):
    DUE_SOON = "due_soon"  # sắp đến hạn
    OVERDUE = "overdue"  # quá hạn


class DossierStatusBody(_Model):
    """One step about a dossier, routed like every message; the dossier's state is the fold of
    these steps and of its hand-overs, never a field someone sets."""

    dossier: DossierCode
    action: DossierAction
    about: uuid.UUID | None = Field(
        default=None, description="The hand-over (dossier message) an accept or return answers"
    )
    at: Instant
    by: ShortText | None = Field(default=None, description="The officer who acted (cán bộ)")
    reason: LongText | None = None
    appointment_at: Instant | None = Field(
        default=None, description="An apology's new appointment date (ngày hẹn trả mới)"
    )
    alert: AlertLevel | None = None
    due_at: Instant | None = Field(default=None, description="An alert: when the step is due")
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _needs(self) -> DossierStatusBody:
        a = self.action
        if a in {DossierAction.RETURN, DossierAction.APOLOGY, DossierAction.WITHDRAW} and (
                not self.reason):
            raise ValueError(f"a {a.value} needs a reason")
        if a is DossierAction.APOLOGY and self.appointment_at is None:
            raise ValueError("an apology needs the new appointment_at (ngày hẹn trả mới)")
        if a in {DossierAction.ACCEPT, DossierAction.RETURN} and self.about is None:
            raise ValueError(f"a {a.value} needs about: the hand-over it answers")
        if (a is DossierAction.ALERT) != (self.alert is not None):
            raise ValueError("alert is set for action alert, and only for it")
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


class DossierEnvelope(_Model):
    version: Literal["1.0"] = "1.0"
    kind: Literal["dossier"]
    header: Header
    body: DossierBody


class DossierStatusEnvelope(_Model):
    version: Literal["1.0"] = "1.0"
    kind: Literal["dossier_status"]
    header: Header
    body: DossierStatusBody


Envelope = Annotated[
    DocumentEnvelope | StatusEnvelope | DossierEnvelope | DossierStatusEnvelope,
    Field(discriminator="kind"),
]
AnyEnvelope = DocumentEnvelope | StatusEnvelope | DossierEnvelope | DossierStatusEnvelope
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
