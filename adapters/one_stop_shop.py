"""One-stop-shop software (phần mềm Một cửa điện tử) and public-service portals (Cổng Dịch vụ
công quốc gia / cấp tỉnh): administrative dossiers (hồ sơ thủ tục hành chính) in the portals'
JSON, with Vietnamese field names.

Three parts:

* :class:`MotCuaCodec` (:data:`MOTCUA`): the portal's dossier JSON <-> the ``dossier``
  Envelope, both ways, pure. It is the gateway's one dossier JSON codec.
* HTTP: ``POST /api/v1/motcua/dossiers`` (an agency's one-stop-shop sends a dossier; it goes
  through :func:`gateway.ingress.admit` like every message and is answered ``202`` as on
  ``/api/v1/messages``) and ``GET /api/v1/motcua/dossiers/{id}`` (a dossier message the agency
  sent or received, as portal JSON).
* :class:`PortalTransport`: delivery to agencies with ``delivery: {mode: portal}``: each dossier
  message becomes a progress update (CapNhatTienDoHoSoMC) POSTed to the portal's endpoint.

:data:`ADAPTER` puts the three together for the process (:mod:`adapters.base`).

The dossier JSON
----------------
Modelled on the national portal's DongBoHoSoMC (đồng bộ hồ sơ một cửa) and CapNhatTienDoHoSoMC
(cập nhật tiến độ) specifications: one JSON object per dossier. Dates are ``yyyyMMddHHmmss`` in
Vietnam time (UTC+07:00, the offset not written), to the second: an Envelope instant with a
fraction of a second is written truncated. Numbers are JSON numbers, never strings. ``null``
means absent everywhere, and so does ``""`` (or blanks) for an optional text field, as many
one-stop-shop products write them (``DuLieu`` excepted: ``""`` is an empty file).

=============================  =================================  ===============================
portal JSON                    Envelope                           notes
=============================  =================================  ===============================
MaThongDiep                    header.id                          UUID (mã thông điệp); optional:
                                                                  sent again with the same one,
                                                                  a dossier is one message
MaDonViGui                     header.sender                      optional: the calling agency
MaDonViNhan                    header.to                          a code, or a list of codes and
                                                                  subtrees ``{MaDonViCha, Cap,
                                                                  GomCaDonViCha}`` (under, level,
                                                                  include_self); absent: the
                                                                  agency of the current step.
                                                                  Written as a code when it is
                                                                  one agency, else as a list
NgayGui                        header.created
DoKhan                         header.priority                    0 thường, 1 khẩn, 2 thượng
                                                                  khẩn, 3 hỏa tốc (as edXML);
                                                                  written unless 0
HanXuLy                        header.due
ThamChieu[i]                   header.references[i]               message ids (UUID)
NhatKy[i]: ThoiDiem, SuKien,   header.trace[i]: at, event,
MaDonVi, ChiTiet               agency, detail
MaHoSo                         body.code                          ``{agency}-{yymmdd}-{seq}``
MaTTHC                         body.procedure_code
TenTTHC                        body.procedure_name
ChuHoSo                        body.applicant.name                personal data: never logged
LoaiDoiTuong                   body.applicant.kind                1 công dân (citizen, the
                                                                  default), 2 tổ chức / doanh
                                                                  nghiệp (organisation)
SoGiayToChuHoSo                body.applicant.identity            CCCD / CMND / hộ chiếu / mã số
                                                                  thuế; personal data
DiaChiChuHoSo                  body.applicant.address             personal data
SoDienThoaiChuHoSo             body.applicant.phone               personal data
EmailChuHoSo                   body.applicant.email               personal data
MaCoQuanTiepNhan               body.receiving_agency              also read as DonViTiepNhan;
                                                                  absent: MaHoSo's agency prefix
NgayTiepNhan                   body.received_at
NgayHenTra                     body.appointment_at                not before NgayTiepNhan
TrangThaiHoSo                  body.status                        1..10 (DossierStatus)
QuyTrinhXuLy[i]: MaDonVi,      body.route[i]: agency, name,       the route (quy trình xử lý)
TenBuoc, SoNgayXuLy            working_days
BuocHienTai                    body.current_step + 1              counted from 1, as people count
                                                                  steps; absent: 1. Written when
                                                                  there is a route (or a step)
TaiLieuNop[i]: TenTepDinhKem,  body.attachments[i]: name,         MimeType also read as LoaiTep;
MimeType, DuLieu, KichThuoc,   media_type, content, size,         absent: guessed from the name.
MaBam, MoTa                    sha256, description                With DuLieu (base64), size and
                                                                  sha256 are computed (a given
                                                                  KichThuoc or MaBam must agree);
                                                                  without, both are required (the
                                                                  file is in the blob store,
                                                                  uploaded first: POST
                                                                  /api/v1/attachments)
GhiChu                         body.comment
ThongTinKhac: {key: text}      body.fields                        the procedure's own fields
=============================  =================================  ===============================

Unknown fields are refused, at any depth (422, the problem's ``errors[].pointer`` naming each
one): the format stays lossless only if every value has one place, and a typo must not vanish
silently. A procedure's own values belong in ``ThongTinKhac``. Every error names its field by a
JSON pointer into the portal JSON (``/NgayHenTra``: "not yyyyMMddHHmmss ..."), never the value
(it may be personal data). The JSON Schema is ``schemas/motcua-dossier.schema.json``; the codec
also checks what a schema cannot say (calendar dates, NgayHenTra after NgayTiepNhan, MaHoSo's
prefix, DuLieu against KichThuoc and MaBam). Portal JSON -> Envelope -> portal JSON gives the
same JSON up to the absent-value spellings and aliases above; Envelope -> portal JSON ->
Envelope gives the same Envelope (instants to the second).

Accepting a dossier (POST)
--------------------------
A ``dossier`` message is a hand-over (chuyển hồ sơ) to one agency, and the ingress decides
whether it is legal on the dossier's history (:mod:`gateway.dossiers`: the first hand-over comes
from the receiving agency, later ones from the agency holding it). Before that, this module
checks that every agency of the route is in the directory (``/QuyTrinhXuLy/i/MaDonVi``). Every
error the ingress raises is named by the portal field it came from (``/header/to`` becomes
``/MaDonViNhan``, or ``/QuyTrinhXuLy/i/MaDonVi`` when the recipient was the current step's;
``/body/code`` becomes ``/MaHoSo``), so a one-stop-shop never sees an Envelope path.

Progress to a portal (PortalTransport)
--------------------------------------
For a dossier message to an agency with ``delivery: {mode: portal, endpoint: URL}``::

    POST URL
    Content-Type: application/json
    X-Lienthong-Message-Id, Idempotency-Key: the message id (the portal deduplicates by it)
    X-Lienthong-Timestamp: Unix seconds of this attempt
    X-Lienthong-Signature: sha256=hex(HMAC-SHA256(LIENTHONG_PORTAL_SECRET,
                                                  timestamp + "." + body))

    {"MaThongDiep", "MaHoSo", "MaTTHC", "MaCoQuanTiepNhan", "TrangThaiHoSo", "NgayCapNhat",
     "NoiDungXuLy", "DonViXuLy", "MaDonViGui", "NgayTiepNhan", "NgayHenTra",
     "BuocHienTai", "TenBuoc"}

``NgayCapNhat`` is the message's ``header.created``, ``DonViXuLy`` the agency of the current
step (else the sender), ``NoiDungXuLy`` the comment (else the status's name). No personal data
travels: the portal already has the dossier. HMAC rather than a bearer token: the secret never
crosses the wire, the body cannot be altered on the way, and the timestamp bounds a replay (the
portal refuses one outside its window). The body is a function of the stored message only, so
every attempt sends the same bytes and the portal can compare a repeat. Answers: 2xx is done
(unless its JSON says ``error_code`` other than 0, the national portal's way of refusing);
a connection error, timeout, 408, 425, 429 or 5xx is :class:`RetryLater` (with ``Retry-After``);
401/403 and any other answer are :class:`PermanentFailure` with the reason. A message that is
not a dossier is a :class:`PermanentFailure`: a portal takes dossier progress only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import mimetypes
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import orjson
import pydantic
from aiohttp import web

from adapters.base import Adapter
from gateway.api.keys import AGENCY, DIRECTORY, SETTINGS
from gateway.api.routes import ingest, visible_message
from gateway.codecs import decode
from gateway.delivery import Delivery, parse_retry_after
from gateway.directory import Agency, DeliveryMode, Directory
from gateway.envelope import (
    ADDRESS_TAGS,
    DOSSIER_CODE_RE,
    AgencyAddress,
    AnyEnvelope,
    DossierEnvelope,
    DossierStatus,
    Priority,
    SubtreeAddress,
)
from gateway.errors import (
    CodecError,
    FieldError,
    GatewayError,
    MalformedInput,
    NotFound,
    PermanentFailure,
    RetryLater,
    SchemaViolation,
    UnprocessableRequest,
)
from gateway.ingress import AuditNote, Check

__all__ = [
    "ADAPTER",
    "MOTCUA",
    "PROGRESS_MEDIA_TYPE",
    "STATUS_TEXT",
    "VIETNAM",
    "MotCuaCodec",
    "PortalTransport",
    "classify_answer",
    "decode_located",
    "decode_portal",
    "decode_portal_obj",
    "encode_portal",
    "parse_portal_date",
    "portal_date",
    "portal_obj",
    "portal_signature",
    "portal_transport",
    "progress_update",
    "routes",
]

#: Giờ Việt Nam: the portals' dates carry no offset and mean this one.
VIETNAM = timezone(timedelta(hours=7), "ICT")
PROGRESS_MEDIA_TYPE = "application/json"
_MAX_ERRORS = 20
_MAX_ANSWER_BYTES = 64 * 1024

_PRIORITY_BY_CODE = {0: Priority.NORMAL, 1: Priority.URGENT, 2: Priority.VERY_URGENT,
                     3: Priority.FLASH}
_PRIORITY_CODE = {value: code for code, value in _PRIORITY_BY_CODE.items()}
_KIND_BY_CODE = {1: "citizen", 2: "organisation"}
_KIND_CODE = {value: code for code, value in _KIND_BY_CODE.items()}

#: Tên trạng thái hồ sơ: NoiDungXuLy of a progress update without a comment.
STATUS_TEXT = {
    DossierStatus.REGISTERED: "Mới đăng ký",
    DossierStatus.ACCEPTED: "Được tiếp nhận",
    DossierStatus.NOT_ACCEPTED: "Không được tiếp nhận",
    DossierStatus.PROCESSING: "Đang xử lý",
    DossierStatus.AWAITING_SUPPLEMENT: "Chờ bổ sung",
    DossierStatus.AWAITING_FEES: "Chờ thực hiện nghĩa vụ tài chính",
    DossierStatus.WITHDRAWN: "Công dân yêu cầu rút hồ sơ",
    DossierStatus.STOPPED: "Dừng xử lý",
    DossierStatus.PROCESSED: "Đã xử lý xong",
    DossierStatus.RETURNED_RESULT: "Đã trả kết quả",
}

_TOP_KEYS = frozenset({
    "MaThongDiep", "MaDonViGui", "MaDonViNhan", "NgayGui", "DoKhan", "HanXuLy", "ThamChieu",
    "NhatKy", "MaHoSo", "MaTTHC", "TenTTHC", "ChuHoSo", "LoaiDoiTuong", "SoGiayToChuHoSo",
    "DiaChiChuHoSo", "SoDienThoaiChuHoSo", "EmailChuHoSo", "MaCoQuanTiepNhan", "DonViTiepNhan",
    "NgayTiepNhan", "NgayHenTra", "TrangThaiHoSo", "QuyTrinhXuLy", "BuocHienTai", "TaiLieuNop",
    "GhiChu", "ThongTinKhac",
})
_STEP_KEYS = frozenset({"MaDonVi", "TenBuoc", "SoNgayXuLy"})
_FILE_KEYS = frozenset({"TenTepDinhKem", "MimeType", "LoaiTep", "DuLieu", "KichThuoc", "MaBam",
                        "MoTa"})
_TRACE_KEYS = frozenset({"ThoiDiem", "SuKien", "MaDonVi", "ChiTiet"})
_SUBTREE_KEYS = frozenset({"MaDonViCha", "Cap", "GomCaDonViCha"})

Location = tuple[str | int, ...]  # a place in the Envelope


# -- dates ------------------------------------------------------------------------------------
def portal_date(value: datetime) -> str:
    """``yyyyMMddHHmmss`` in Vietnam time (the fraction of a second dropped)."""
    v = value.astimezone(VIETNAM)
    return (f"{v.year:04d}{v.month:02d}{v.day:02d}"
            f"{v.hour:02d}{v.minute:02d}{v.second:02d}")


def parse_portal_date(text: str) -> datetime:
    """The instant of a ``yyyyMMddHHmmss`` date in Vietnam time; ValueError if it is not one."""
    if len(text) != 14 or not text.isascii() or not text.isdigit():
        raise ValueError("not 14 digits")
    # Fixed slices, not strptime: its fields may take one digit, so it can split 14 digits
    # at other places than these and read a wrong date; datetime() then checks every part.
    parts = (text[0:4], text[4:6], text[6:8], text[8:10], text[10:12], text[12:14])
    year, month, day, hour, minute, second = (int(p) for p in parts)
    return datetime(year, month, day, hour, minute, second, tzinfo=VIETNAM)


def _escape(key: str | int) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


# -- decoding ---------------------------------------------------------------------------------
class _Reader:
    """Reads the portal JSON into the Envelope's shape, collecting every error with its pointer
    and remembering which portal pointer each Envelope path came from (``where``), so that the
    Envelope's own validation errors can name the portal field too."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self.where: dict[Location, str] = {}

    def fail(self, at: str, detail: str) -> None:
        self.errors.append(FieldError(at, detail))

    def obj(self, value: Any, at: str, known: frozenset[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(at, "must be a JSON object")
            return None
        for key in value:
            if key not in known:
                self.fail(f"{at}/{_escape(key)}",
                          "unknown field (a procedure's own values go in ThongTinKhac)")
        return value

    def _raw(self, obj: dict[str, Any], key: str, at: str, required: bool,
             blank_is_absent: bool = True) -> Any:
        value = obj.get(key)
        if blank_is_absent and isinstance(value, str) and not value.strip():
            value = None
        if value is None and required:
            self.fail(f"{at}/{key}", "required")
        return value

    def text(self, obj: dict[str, Any], key: str, at: str, path: Location | None = None, *,
             required: bool = False, blank_is_absent: bool = True) -> str | None:
        value = self._raw(obj, key, at, required, blank_is_absent)
        if path is not None:
            self.where[path] = f"{at}/{key}"
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(f"{at}/{key}", "must be a string")
            return None
        return value.strip()  # as the Envelope would: its texts are stripped

    def date(self, obj: dict[str, Any], key: str, at: str, path: Location | None = None, *,
             required: bool = False) -> datetime | None:
        text = self.text(obj, key, at, path, required=required)
        if text is None:
            return None
        try:
            return parse_portal_date(text)
        except ValueError:
            self.fail(f"{at}/{key}",
                      "not yyyyMMddHHmmss (a date and time in Vietnam time, e.g. 20250314091500)")
            return None

    def integer(self, obj: dict[str, Any], key: str, at: str, path: Location | None, *,
                low: int, high: int | None, required: bool = False) -> int | None:
        value = self._raw(obj, key, at, required)
        if path is not None:
            self.where[path] = f"{at}/{key}"
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (
            high is not None and value > high
        ):
            upper = f" to {high}" if high is not None else " or more"
            self.fail(f"{at}/{key}", f"must be an integer (a JSON number) from {low}{upper}")
            return None
        return value

    def array(self, obj: dict[str, Any], key: str, at: str) -> list[Any]:
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(f"{at}/{key}", "must be a JSON array")
            return []
        return value


def _located(obj: Any, sender: str | None) -> tuple[DossierEnvelope, dict[Location, str]]:
    r = _Reader()
    # What names no field of its own (a rule across fields) is about the whole dossier.
    r.where[("header",)] = r.where[("body",)] = ""
    top = r.obj(obj, "", _TOP_KEYS)
    if top is None:
        raise SchemaViolation("a portal dossier must be a JSON object",
                              errors=[FieldError("", "must be a JSON object")])
    header: dict[str, Any] = {}
    body: dict[str, Any] = {}
    applicant: dict[str, Any] = {}

    def put(target: dict[str, Any], name: str, value: Any) -> None:
        if value is not None:
            target[name] = value

    # -- header
    put(header, "id", r.text(top, "MaThongDiep", "", ("header", "id")))
    put(header, "sender", r.text(top, "MaDonViGui", "", ("header", "sender")) or sender)
    if "sender" not in header:
        r.fail("/MaDonViGui", "required (the sending agency)")
    put(header, "created", r.date(top, "NgayGui", "", ("header", "created")))
    code = r.integer(top, "DoKhan", "", ("header", "priority"), low=0, high=3)
    put(header, "priority", None if code is None else _PRIORITY_BY_CODE[code])
    put(header, "due", r.date(top, "HanXuLy", "", ("header", "due")))
    r.where[("header", "references")] = "/ThamChieu"
    references = []
    for i, item in enumerate(r.array(top, "ThamChieu", "")):
        r.where[("header", "references", i)] = f"/ThamChieu/{i}"
        if not isinstance(item, str):
            r.fail(f"/ThamChieu/{i}", "must be a message id (a UUID string)")
        references.append(item)
    put(header, "references", references or None)
    trace = []
    r.where[("header", "trace")] = "/NhatKy"
    for i, item in enumerate(r.array(top, "NhatKy", "")):
        at = f"/NhatKy/{i}"
        entry = r.obj(item, at, _TRACE_KEYS)
        if entry is None:
            continue
        path: Location = ("header", "trace", i)
        trace.append({
            k: v for k, v in {
                "at": r.date(entry, "ThoiDiem", at, (*path, "at"), required=True),
                "event": r.text(entry, "SuKien", at, (*path, "event"), required=True),
                "agency": r.text(entry, "MaDonVi", at, (*path, "agency")),
                "detail": r.text(entry, "ChiTiet", at, (*path, "detail")),
            }.items() if v is not None
        })
    put(header, "trace", trace or None)

    # -- body
    dossier_code = r.text(top, "MaHoSo", "", ("body", "code"), required=True)
    put(body, "code", dossier_code)
    put(body, "procedure_code", r.text(top, "MaTTHC", "", ("body", "procedure_code"),
                                       required=True))
    put(body, "procedure_name", r.text(top, "TenTTHC", "", ("body", "procedure_name"),
                                       required=True))
    put(applicant, "name", r.text(top, "ChuHoSo", "", ("body", "applicant", "name"),
                                  required=True))
    kind = r.integer(top, "LoaiDoiTuong", "", ("body", "applicant", "kind"), low=1, high=2)
    put(applicant, "kind", None if kind is None else _KIND_BY_CODE[kind])
    put(applicant, "identity", r.text(top, "SoGiayToChuHoSo", "",
                                      ("body", "applicant", "identity")))
    put(applicant, "address", r.text(top, "DiaChiChuHoSo", "", ("body", "applicant", "address")))
    put(applicant, "phone", r.text(top, "SoDienThoaiChuHoSo", "",
                                   ("body", "applicant", "phone")))
    put(applicant, "email", r.text(top, "EmailChuHoSo", "", ("body", "applicant", "email")))
    body["applicant"] = applicant
    receiving = _receiving_agency(r, top, dossier_code)
    put(body, "receiving_agency", receiving)
    received = r.date(top, "NgayTiepNhan", "", ("body", "received_at"), required=True)
    appointment = r.date(top, "NgayHenTra", "", ("body", "appointment_at"), required=True)
    put(body, "received_at", received)
    put(body, "appointment_at", appointment)
    put(body, "status", r.integer(top, "TrangThaiHoSo", "", ("body", "status"), low=1, high=10,
                                  required=True))
    route = _route(r, top)
    put(body, "route", route or None)
    step = r.integer(top, "BuocHienTai", "", ("body", "current_step"), low=1, high=None)
    current = 0 if step is None else step - 1
    body["current_step"] = current
    put(body, "attachments", _attachments(r, top) or None)
    put(body, "comment", r.text(top, "GhiChu", "", ("body", "comment")))
    put(body, "fields", _fields(r, top) or None)

    # -- recipients: explicit, or the agency of the current step
    to = _recipients(r, top)
    if to is None:
        if route and current < len(route) and "agency" in route[current]:
            to = [{"agency": route[current]["agency"]}]
            pointer = f"/QuyTrinhXuLy/{current}/MaDonVi"
            r.where[("header", "to")] = r.where[("header", "to", 0)] = pointer
        elif not route:
            r.fail("/MaDonViNhan",
                   "required when there is no QuyTrinhXuLy (nobody to hand the dossier to)")
    header["to"] = to or []

    # -- what the Envelope checks across fields, said here with the portal's names
    if received and appointment and appointment < received:
        r.fail("/NgayHenTra", "before NgayTiepNhan (ngày hẹn trả trước ngày tiếp nhận)")
    if (dossier_code and receiving and DOSSIER_CODE_RE.fullmatch(dossier_code)
            and not dossier_code.startswith(receiving)):
        r.fail("/MaHoSo", "must start with the receiving agency's code (MaCoQuanTiepNhan)")
    if route and current >= len(route):
        r.fail("/BuocHienTai", f"past the end of QuyTrinhXuLy ({len(route)} steps)")
    try:
        envelope = DossierEnvelope.model_validate(
            {"version": "1.0", "kind": "dossier", "header": header, "body": body}
        )
    except pydantic.ValidationError as exc:
        named = {e.pointer for e in r.errors}
        read_errors = bool(r.errors)
        for err in exc.errors(include_url=False):
            pointer = _pointer(r.where, err["loc"]) or ""
            # After a read error the Envelope misses that value: say so once, not twice.
            if read_errors and (err["type"] == "missing" or not pointer or pointer in named):
                continue
            r.fail(pointer, err["msg"])
            named.add(pointer)
    if r.errors:
        _raise(r.errors)
    return envelope, r.where


def _receiving_agency(r: _Reader, top: dict[str, Any], dossier_code: str | None) -> str | None:
    code = r.text(top, "MaCoQuanTiepNhan", "", ("body", "receiving_agency"))
    alias = r.text(top, "DonViTiepNhan", "")
    if alias is not None:
        if code is None:
            r.where[("body", "receiving_agency")] = "/DonViTiepNhan"
            return alias
        if alias != code:
            r.fail("/DonViTiepNhan", "differs from MaCoQuanTiepNhan (both name the same agency)")
    if code is None and dossier_code is not None:
        # Mã hồ sơ starts with the receiving agency's code, so it says who received it.
        r.where[("body", "receiving_agency")] = "/MaHoSo"
        return dossier_code.split("-", 1)[0]
    return code


def _route(r: _Reader, top: dict[str, Any]) -> list[dict[str, Any]]:
    r.where[("body", "route")] = "/QuyTrinhXuLy"
    steps: list[dict[str, Any]] = []
    for i, item in enumerate(r.array(top, "QuyTrinhXuLy", "")):
        at = f"/QuyTrinhXuLy/{i}"
        raw = r.obj(item, at, _STEP_KEYS)
        if raw is None:
            steps.append({})
            continue
        path: Location = ("body", "route", i)
        r.where[path] = at
        step: dict[str, Any] = {}
        agency = r.text(raw, "MaDonVi", at, (*path, "agency"), required=True)
        if agency is not None:
            step["agency"] = agency
        name = r.text(raw, "TenBuoc", at, (*path, "name"))
        if name is not None:
            step["name"] = name
        days = raw.get("SoNgayXuLy")
        r.where[(*path, "working_days")] = f"{at}/SoNgayXuLy"
        if days is None:
            r.fail(f"{at}/SoNgayXuLy", "required")
        elif isinstance(days, bool) or not isinstance(days, int | float):
            r.fail(f"{at}/SoNgayXuLy", "must be a number of working days (a JSON number)")
        else:
            step["working_days"] = days
        steps.append(step)
    return steps


def _attachments(r: _Reader, top: dict[str, Any]) -> list[dict[str, Any]]:
    r.where[("body", "attachments")] = "/TaiLieuNop"
    files = []
    for i, item in enumerate(r.array(top, "TaiLieuNop", "")):
        at = f"/TaiLieuNop/{i}"
        raw = r.obj(item, at, _FILE_KEYS)
        if raw is None:
            continue
        path: Location = ("body", "attachments", i)
        r.where[path] = at
        name = r.text(raw, "TenTepDinhKem", at, (*path, "name"), required=True)
        media_type = r.text(raw, "MimeType", at, (*path, "media_type"))
        alias = r.text(raw, "LoaiTep", at)
        if alias is not None:
            if media_type is None:
                media_type = alias
                r.where[(*path, "media_type")] = f"{at}/LoaiTep"
            elif alias != media_type:
                r.fail(f"{at}/LoaiTep", "differs from MimeType (both are the file's media type)")
        if media_type is None and name is not None:
            media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        data_text = r.text(raw, "DuLieu", at, (*path, "content"), blank_is_absent=False)
        size = r.integer(raw, "KichThuoc", at, (*path, "size"), low=0, high=None)
        digest = r.text(raw, "MaBam", at, (*path, "sha256"))
        if digest is not None:
            digest = digest.lower()
        content = None
        if data_text is not None:
            content = "".join(data_text.split())  # base64 may come in lines
            try:
                data = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError):
                r.fail(f"{at}/DuLieu", "not base64")
                continue
            if size is not None and size != len(data):
                r.fail(f"{at}/KichThuoc", f"DuLieu holds {len(data)} bytes")
            real = hashlib.sha256(data).hexdigest()
            if digest is not None and digest != real:
                r.fail(f"{at}/MaBam", "not the SHA-256 of DuLieu")
            size, digest = len(data), real
        else:
            for key, value in (("KichThuoc", size), ("MaBam", digest)):
                if value is None:
                    r.fail(f"{at}/{key}", "required without DuLieu (the file is then in the "
                                          "gateway's blob store, by its SHA-256)")
        file = {"name": name, "media_type": media_type, "size": size, "sha256": digest,
                "content": content,
                "description": r.text(raw, "MoTa", at, (*path, "description"))}
        files.append({k: v for k, v in file.items() if v is not None})
    return files


def _fields(r: _Reader, top: dict[str, Any]) -> dict[str, str]:
    r.where[("body", "fields")] = "/ThongTinKhac"
    raw = top.get("ThongTinKhac")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        r.fail("/ThongTinKhac", "must be a JSON object of texts")
        return {}
    fields: dict[str, str] = {}
    for key, value in raw.items():
        r.where[("body", "fields", key)] = f"/ThongTinKhac/{_escape(key)}"
        if not isinstance(value, str):
            r.fail(f"/ThongTinKhac/{_escape(key)}", "must be a string")
            continue
        fields[key] = value
    return fields


def _recipients(r: _Reader, top: dict[str, Any]) -> list[dict[str, Any]] | None:
    raw = top.get("MaDonViNhan")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    r.where[("header", "to")] = "/MaDonViNhan"
    if isinstance(raw, str):
        r.where[("header", "to", 0)] = "/MaDonViNhan"
        return [{"agency": raw}]
    if not isinstance(raw, list):
        r.fail("/MaDonViNhan", "must be an agency code or a list of agency codes and subtrees")
        return []
    to: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        at = f"/MaDonViNhan/{i}"
        path: Location = ("header", "to", i)
        r.where[path] = at
        if isinstance(item, str):
            to.append({"agency": item})
            continue
        sub = r.obj(item, at, _SUBTREE_KEYS)
        if sub is None:
            to.append({})
            continue
        address: dict[str, Any] = {}
        under = r.text(sub, "MaDonViCha", at, (*path, "under"), required=True)
        if under is not None:
            address["under"] = under
        level = r.text(sub, "Cap", at, (*path, "level"))
        if level is not None:
            address["level"] = level
        include = sub.get("GomCaDonViCha")
        r.where[(*path, "include_self")] = f"{at}/GomCaDonViCha"
        if include is not None and not isinstance(include, bool):
            r.fail(f"{at}/GomCaDonViCha", "must be true or false")
        elif include is not None:
            address["include_self"] = include
        to.append(address)
    return to


def _pointer(where: Mapping[Location, str], loc: Sequence[int | str]) -> str | None:
    """The portal pointer for an Envelope location (pydantic's, or an Envelope pointer's
    parts): the one of its longest known prefix."""
    parts = list(loc)
    if len(parts) >= 4 and parts[:2] == ["header", "to"] and parts[3] in ADDRESS_TAGS:
        del parts[3]  # the address union's tag, not a field
    for end in range(len(parts), 0, -1):
        found = where.get(tuple(parts[:end]))
        if found is not None:
            return found
    return None


def _raise(errors: list[FieldError]) -> Any:
    first = errors[0]
    raise SchemaViolation(
        f"the dossier does not match the portal format (motcua-dossier.schema.json): "
        f"{first.pointer or '/'}: {first.detail}",
        errors=errors[:_MAX_ERRORS],
    )


def _load(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedInput(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            errors=[FieldError("", f"line {exc.lineno}, column {exc.colno}: {exc.msg}")],
        ) from None


def decode_located(data: bytes | str, *, sender: str | None = None
                   ) -> tuple[DossierEnvelope, Mapping[Location, str]]:
    """:func:`decode_portal`, and where each Envelope path came from in the portal JSON."""
    return _located(_load(data), sender)


def decode_portal(data: bytes | str, *, sender: str | None = None) -> DossierEnvelope:
    """Portal dossier JSON -> the dossier Envelope. ``sender`` (the calling agency) stands in
    for an absent MaDonViGui. Raises MalformedInput or SchemaViolation naming the field."""
    return _located(_load(data), sender)[0]


def decode_portal_obj(obj: Any, *, sender: str | None = None) -> DossierEnvelope:
    return _located(obj, sender)[0]


# -- encoding ---------------------------------------------------------------------------------
def portal_obj(envelope: DossierEnvelope) -> dict[str, Any]:
    """The dossier Envelope as portal JSON (a dict, keys in the specification's order)."""
    header, body = envelope.header, envelope.body
    out: dict[str, Any] = {}
    if header.id is not None:
        out["MaThongDiep"] = str(header.id)
    out["MaDonViGui"] = header.sender
    to = [_address(a) for a in header.to]
    out["MaDonViNhan"] = to[0] if len(to) == 1 and isinstance(to[0], str) else to
    if header.created is not None:
        out["NgayGui"] = portal_date(header.created)
    if header.priority is not Priority.NORMAL:
        out["DoKhan"] = _PRIORITY_CODE[header.priority]
    if header.due is not None:
        out["HanXuLy"] = portal_date(header.due)
    if header.references:
        out["ThamChieu"] = [str(ref) for ref in header.references]
    if header.trace:
        out["NhatKy"] = [_drop_none({"ThoiDiem": portal_date(t.at), "SuKien": t.event,
                                     "MaDonVi": t.agency, "ChiTiet": t.detail})
                         for t in header.trace]
    applicant = body.applicant
    out |= _drop_none({
        "MaHoSo": body.code,
        "MaTTHC": body.procedure_code,
        "TenTTHC": body.procedure_name,
        "ChuHoSo": applicant.name,
        "LoaiDoiTuong": _KIND_CODE[applicant.kind.value],
        "SoGiayToChuHoSo": applicant.identity,
        "DiaChiChuHoSo": applicant.address,
        "SoDienThoaiChuHoSo": applicant.phone,
        "EmailChuHoSo": applicant.email,
        "MaCoQuanTiepNhan": body.receiving_agency,
        "NgayTiepNhan": portal_date(body.received_at),
        "NgayHenTra": portal_date(body.appointment_at),
        "TrangThaiHoSo": int(body.status),
    })
    if body.route:
        out["QuyTrinhXuLy"] = [_drop_none({"MaDonVi": s.agency, "TenBuoc": s.name,
                                           "SoNgayXuLy": s.working_days}) for s in body.route]
    if body.route or body.current_step:
        out["BuocHienTai"] = body.current_step + 1
    if body.attachments:
        out["TaiLieuNop"] = [
            _drop_none({"TenTepDinhKem": a.name, "MimeType": a.media_type, "KichThuoc": a.size,
                        "MaBam": a.sha256, "DuLieu": a.content, "MoTa": a.description})
            for a in body.attachments
        ]
    if body.comment is not None:
        out["GhiChu"] = body.comment
    if body.fields:
        out["ThongTinKhac"] = dict(body.fields)
    return out


def _address(address: AgencyAddress | SubtreeAddress) -> str | dict[str, Any]:
    if isinstance(address, AgencyAddress):
        return address.agency
    sub: dict[str, Any] = {"MaDonViCha": address.under}
    if address.level is not None:
        sub["Cap"] = address.level
    if address.include_self:
        sub["GomCaDonViCha"] = True
    return sub


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def encode_portal(envelope: AnyEnvelope) -> bytes:
    """A dossier Envelope as portal JSON bytes; another kind is a SchemaViolation."""
    if not isinstance(envelope, DossierEnvelope):
        raise SchemaViolation(
            f"a {envelope.kind} message cannot be written as a portal dossier",
            errors=[FieldError("/kind", "must be dossier")],
        )
    return orjson.dumps(portal_obj(envelope))


class MotCuaCodec:
    """The portals' and one-stop-shops' dossier JSON (:mod:`adapters.base` ``Codec``)."""

    media_type = "application/json"

    def decode(self, data: bytes, *, sender: str | None = None) -> AnyEnvelope:
        return decode_portal(data, sender=sender)

    def encode(self, envelope: AnyEnvelope) -> bytes:
        return encode_portal(envelope)


MOTCUA = MotCuaCodec()


# -- HTTP -------------------------------------------------------------------------------------
routes = web.RouteTableDef()


def _route_check(directory: Directory) -> Check:
    """Before anything is stored: every agency of the route is in the directory (the gateway
    hands the dossier along it later), named in the portal's terms."""

    def check(_body: bytes, envelope: AnyEnvelope) -> tuple[AnyEnvelope, Sequence[AuditNote]]:
        assert isinstance(envelope, DossierEnvelope)  # the decoder gives nothing else
        unknown = [(i, step.agency) for i, step in enumerate(envelope.body.route)
                   if step.agency not in directory]
        if unknown:
            raise UnprocessableRequest(
                f"unknown agency {', '.join(code for _, code in unknown)} in QuyTrinhXuLy",
                errors=[FieldError(f"/QuyTrinhXuLy/{i}/MaDonVi", "not in the directory")
                        for i, _ in unknown],
            )
        return envelope, ()

    return check


def _portal_pointer(where: Mapping[Location, str], pointer: str) -> str:
    """An Envelope pointer (``/header/to/0/agency``, from the ingress's checks) as the portal
    field it came from; any other pointer (``header:Idempotency-Key``) as it is."""
    if not pointer.startswith(("/header", "/body")):
        return pointer
    parts: list[str | int] = [int(p) if p.isdigit() else p
                              for p in pointer.strip("/").split("/") if p]
    found = _pointer(where, parts)
    return pointer if found is None else found


@routes.post("/api/v1/motcua/dossiers")
async def post_dossier(request: web.Request) -> web.Response:
    """Accept one dossier, as portal JSON, from the calling agency's one-stop-shop."""
    agency = request[AGENCY]
    where: dict[Location, str] = {}

    def decoder(data: bytes) -> AnyEnvelope:
        envelope, located = decode_located(data, sender=agency)
        where.update(located)
        return envelope

    try:
        return await ingest(request, decoder, sender_at="/MaDonViGui",
                            check=_route_check(request.app[DIRECTORY]))
    except GatewayError as exc:  # the ingress speaks Envelope; the caller sent portal JSON
        exc.errors = [FieldError(_portal_pointer(where, e.pointer), e.detail)
                      for e in exc.errors]
        raise


@routes.get("/api/v1/motcua/dossiers/{id}")
async def get_dossier(request: web.Request) -> web.Response:
    """A dossier message as portal JSON, for its sender or one of its recipients."""
    _agency, row = await visible_message(request)
    envelope = decode(row.envelope)
    if not isinstance(envelope, DossierEnvelope):
        raise NotFound(
            f"message {row.id} is a {envelope.kind}, not a dossier (hồ sơ): "
            f"read it at /api/v1/messages/{row.id}",
            errors=[FieldError("path:id", "not a dossier")],
        )
    return web.Response(body=MOTCUA.encode(envelope), content_type=MOTCUA.media_type,
                        charset="utf-8")


# -- progress to a portal ---------------------------------------------------------------------
def progress_update(envelope: DossierEnvelope, *, message_id: str) -> bytes:
    """The CapNhatTienDoHoSoMC body for one dossier message: the same bytes on every attempt."""
    body, header = envelope.body, envelope.header
    step = body.route[body.current_step] if body.current_step < len(body.route) else None
    update: dict[str, Any] = {
        "MaThongDiep": message_id,
        "MaHoSo": body.code,
        "MaTTHC": body.procedure_code,
        "MaCoQuanTiepNhan": body.receiving_agency,
        "TrangThaiHoSo": int(body.status),
        "NgayCapNhat": portal_date(header.created or body.received_at),
        "NoiDungXuLy": body.comment or STATUS_TEXT[body.status],
        "DonViXuLy": step.agency if step is not None else header.sender,
        "MaDonViGui": header.sender,
        "NgayTiepNhan": portal_date(body.received_at),
        "NgayHenTra": portal_date(body.appointment_at),
    }
    if step is not None:
        update["BuocHienTai"] = body.current_step + 1
        if step.name is not None:
            update["TenBuoc"] = step.name
    return orjson.dumps(update)


def portal_signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of ``timestamp + "." + body`` under ``secret``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


_RETRYABLE = frozenset({408, 425, 429})


class PortalTransport:
    """Delivery mode ``portal``: dossier progress POSTed, signed, to the portal's endpoint."""

    def __init__(self, session: aiohttp.ClientSession, *, secret: str, timeout: float) -> None:
        self.session = session
        self.secret = secret
        self.timeout = timeout

    async def send(self, agency: Agency, delivery: Delivery) -> None:
        if agency.endpoint is None:
            raise PermanentFailure(f"portal {agency.code} has no endpoint in the directory")
        if not self.secret:
            raise PermanentFailure("LIENTHONG_PORTAL_SECRET is not set: progress updates to "
                                   f"portal {agency.code} cannot be signed")
        try:
            envelope = decode(delivery.body)
        except CodecError as exc:
            raise PermanentFailure(f"the stored message does not decode: {exc.detail}") from exc
        if not isinstance(envelope, DossierEnvelope):
            raise PermanentFailure(
                f"portal {agency.code} takes dossier (hồ sơ) progress only; this message is a "
                f"{envelope.kind}"
            )
        body = progress_update(envelope, message_id=delivery.message_id)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": PROGRESS_MEDIA_TYPE,
            "X-Lienthong-Message-Id": delivery.message_id,
            "Idempotency-Key": delivery.message_id,
            "X-Lienthong-Attempt": str(delivery.attempt),
            "X-Lienthong-Timestamp": timestamp,
            "X-Lienthong-Signature": portal_signature(self.secret, timestamp, body),
        }
        try:
            async with self.session.post(
                agency.endpoint, data=body, headers=headers, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                answer = await response.content.read(_MAX_ANSWER_BYTES)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RetryLater(f"portal update failed: {exc.__class__.__name__}: {exc}") from exc
        classify_answer(agency.code, status, answer, retry_after)


def portal_transport(app: web.Application, http: aiohttp.ClientSession) -> PortalTransport:
    """The delivery worker's transport for mode ``portal`` (built even without
    LIENTHONG_PORTAL_SECRET: each update then fails, naming the setting)."""
    settings = app[SETTINGS]
    return PortalTransport(http, secret=settings.portal_secret, timeout=settings.push_timeout)


def classify_answer(portal: str, status: int, answer: bytes, retry_after: str | None) -> None:
    """Map the portal's answer onto the error tree; return if the update was applied."""
    reason = _reason(answer)
    if 200 <= status < 300:
        refused = _refusal(answer)
        if refused is not None:
            raise PermanentFailure(f"portal {portal} refused the update: {refused}")
        return
    if status in _RETRYABLE or status >= 500:
        raise RetryLater(f"portal answered HTTP {status}{reason}",
                         delay=parse_retry_after(retry_after))
    if status in {401, 403}:
        raise PermanentFailure(f"portal {portal} refused our credentials (HTTP {status}{reason});"
                               " check LIENTHONG_PORTAL_SECRET")
    raise PermanentFailure(f"portal answered HTTP {status}{reason}")


def _reason(answer: bytes) -> str:
    """``: <what the portal said>``, short, for the dead-letter reason."""
    try:
        data = orjson.loads(answer)
    except orjson.JSONDecodeError:
        text = answer.decode("utf-8", "replace").strip()
    else:
        text = str(data.get("message", "")) if isinstance(data, dict) else ""
    text = " ".join(text.split())[:200]
    return f": {text}" if text else ""


def _refusal(answer: bytes) -> str | None:
    """The national portal answers business errors with 200 and ``error_code`` other than 0."""
    try:
        data = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("error_code") in (None, 0, "0"):
        return None
    return f"error_code {data['error_code']}{_reason(answer)}"


ADAPTER = Adapter(name="one_stop_shop", codec=MOTCUA, mode=DeliveryMode.PORTAL,
                  transport=portal_transport, routes=routes)
