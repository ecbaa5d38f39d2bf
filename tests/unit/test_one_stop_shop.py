"""The one-stop-shop / portal dossier codec (adapters.one_stop_shop): every field both ways,
dates in Vietnam time, errors naming the field, the committed JSON Schema agreeing with the
codec, the progress update a portal gets, and property round trips."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from adapters.base import Codec
from adapters.one_stop_shop import (
    MOTCUA,
    STATUS_TEXT,
    VIETNAM,
    classify_answer,
    decode_portal,
    decode_portal_obj,
    encode_portal,
    parse_portal_date,
    portal_date,
    portal_obj,
    portal_signature,
    progress_update,
)
from gateway.codecs import decode_obj
from gateway.envelope import (
    AgencyAddress,
    Applicant,
    ApplicantKind,
    DossierBody,
    DossierEnvelope,
    DossierStatus,
    DossierStep,
    Header,
    Priority,
    SubtreeAddress,
    TraceEntry,
)
from gateway.errors import MalformedInput, PermanentFailure, RetryLater, SchemaViolation
from gateway.logging import REDACTED, redact
from tests.unit.strategies import (
    addresses,
    agency_codes,
    attachments,
    aware_datetimes,
    long_texts,
    short_texts,
    words,
)

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "motcua-dossier.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

COMMUNE = "000.21.35.H57"  # UBND thị trấn Phong Điền: receives the dossier (một cửa cấp xã)
DISTRICT = "000.00.35.H57"  # UBND huyện Phong Điền: the second step
CCCD = "046095001234"
PDF = b"%PDF-1.7 to khai dang ky khai sinh"


def full() -> dict[str, Any]:
    """A dossier with every field, as the encoder writes it (so it comes back identical)."""
    return {
        "MaThongDiep": "5f0c3d5e-8c1b-4a57-9a0f-2b1e6f7d9c10",
        "MaDonViGui": COMMUNE,
        "MaDonViNhan": DISTRICT,
        "NgayGui": "20250314100000",
        "DoKhan": 1,
        "HanXuLy": "20250318170000",
        "ThamChieu": ["6f1c2a4e-8d3b-4f7a-9c1e-2b5d7e9f0a13"],
        "NhatKy": [{"ThoiDiem": "20250314093000", "SuKien": "tiếp nhận", "MaDonVi": COMMUNE,
                    "ChiTiet": "Bộ phận một cửa"}],
        "MaHoSo": f"{COMMUNE}-250314-0042",
        "MaTTHC": "1.001193.000.00.00.H57",
        "TenTTHC": "Đăng ký khai sinh kết hợp đăng ký thường trú",
        "ChuHoSo": "Nguyễn Thị Hoa",
        "LoaiDoiTuong": 1,
        "SoGiayToChuHoSo": CCCD,
        "DiaChiChuHoSo": "Thôn Vĩnh Nguyên, thị trấn Phong Điền",
        "SoDienThoaiChuHoSo": "0905123456",
        "EmailChuHoSo": "hoa.nguyen@example.vn",
        "MaCoQuanTiepNhan": COMMUNE,
        "NgayTiepNhan": "20250314091500",
        "NgayHenTra": "20250321170000",
        "TrangThaiHoSo": 4,
        "QuyTrinhXuLy": [
            {"MaDonVi": COMMUNE, "TenBuoc": "Tiếp nhận, kiểm tra", "SoNgayXuLy": 0.5},
            {"MaDonVi": DISTRICT, "TenBuoc": "Đăng ký thường trú", "SoNgayXuLy": 3.0},
        ],
        "BuocHienTai": 2,
        "TaiLieuNop": [
            {"TenTepDinhKem": "To khai.pdf", "MimeType": "application/pdf",
             "KichThuoc": len(PDF), "MaBam": hashlib.sha256(PDF).hexdigest(),
             "DuLieu": base64.b64encode(PDF).decode(), "MoTa": "Tờ khai (bản chính)"},
            {"TenTepDinhKem": "Giay chung sinh.png", "MimeType": "image/png",
             "KichThuoc": 120400, "MaBam": "ab" * 32},
        ],
        "GhiChu": "Chuyển Công an huyện đăng ký thường trú",
        "ThongTinKhac": {"NoiSinh": "Bệnh viện Phong Điền", "QuocTich": "Việt Nam"},
    }


def minimal() -> dict[str, Any]:
    return {
        "MaHoSo": f"{COMMUNE}-250314-0042",
        "MaTTHC": "1.001193",
        "TenTTHC": "Đăng ký khai sinh",
        "ChuHoSo": "Nguyễn Thị Hoa",
        "NgayTiepNhan": "20250314091500",
        "NgayHenTra": "20250321170000",
        "TrangThaiHoSo": 2,
        "MaDonViNhan": DISTRICT,
    }


def dec(obj: dict[str, Any], sender: str | None = COMMUNE) -> DossierEnvelope:
    return decode_portal(orjson.dumps(obj), sender=sender)


def refusal(obj: Any, sender: str | None = COMMUNE) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as info:
        decode_portal(orjson.dumps(obj), sender=sender)
    return info.value


# -- every field, both ways --------------------------------------------------------------------
def test_every_field_reaches_the_envelope() -> None:
    envelope = dec(full())
    h, b = envelope.header, envelope.body
    assert str(h.id) == "5f0c3d5e-8c1b-4a57-9a0f-2b1e6f7d9c10"
    assert h.sender == COMMUNE
    assert h.to == [AgencyAddress(agency=DISTRICT)]
    assert h.created == datetime(2025, 3, 14, 3, 0, tzinfo=UTC)
    assert h.priority is Priority.URGENT
    assert h.due == datetime(2025, 3, 18, 10, 0, tzinfo=UTC)
    assert [str(r) for r in h.references] == ["6f1c2a4e-8d3b-4f7a-9c1e-2b5d7e9f0a13"]
    assert h.trace == [TraceEntry(at=datetime(2025, 3, 14, 2, 30, tzinfo=UTC), event="tiếp nhận",
                                  agency=COMMUNE, detail="Bộ phận một cửa")]
    assert b.code == f"{COMMUNE}-250314-0042"
    assert b.procedure_code == "1.001193.000.00.00.H57"
    assert b.procedure_name == "Đăng ký khai sinh kết hợp đăng ký thường trú"
    assert b.applicant == Applicant(
        kind=ApplicantKind.CITIZEN, name="Nguyễn Thị Hoa", identity=CCCD,
        address="Thôn Vĩnh Nguyên, thị trấn Phong Điền", phone="0905123456",
        email="hoa.nguyen@example.vn",
    )
    assert b.receiving_agency == COMMUNE
    assert b.received_at == datetime(2025, 3, 14, 2, 15, tzinfo=UTC)
    assert b.appointment_at == datetime(2025, 3, 21, 10, 0, tzinfo=UTC)
    assert b.status is DossierStatus.PROCESSING
    assert b.route == [
        DossierStep(agency=COMMUNE, working_days=0.5, name="Tiếp nhận, kiểm tra"),
        DossierStep(agency=DISTRICT, working_days=3, name="Đăng ký thường trú"),
    ]
    assert b.current_step == 1  # BuocHienTai counts from 1
    inline, stored = b.attachments
    assert (inline.name, inline.media_type, inline.size) == ("To khai.pdf", "application/pdf",
                                                             len(PDF))
    assert inline.sha256 == hashlib.sha256(PDF).hexdigest()
    assert base64.b64decode(inline.content or "") == PDF
    assert inline.description == "Tờ khai (bản chính)"
    assert (stored.size, stored.sha256, stored.content) == (120400, "ab" * 32, None)
    assert b.comment == "Chuyển Công an huyện đăng ký thường trú"
    assert b.fields == {"NoiSinh": "Bệnh viện Phong Điền", "QuocTich": "Việt Nam"}


def test_the_envelope_comes_back_as_the_same_portal_json() -> None:
    assert portal_obj(dec(full())) == full()
    assert orjson.loads(MOTCUA.encode(dec(full()))) == full()
    assert list(portal_obj(dec(full()))) == list(full())  # the specification's order


def test_a_minimal_dossier_gets_the_defaults() -> None:
    envelope = dec(minimal())
    assert envelope.header.sender == COMMUNE  # the calling agency
    assert envelope.header.id is None and envelope.header.created is None
    assert envelope.header.priority is Priority.NORMAL
    assert envelope.body.applicant.kind is ApplicantKind.CITIZEN
    assert envelope.body.receiving_agency == COMMUNE  # MaHoSo's prefix
    assert envelope.body.route == [] and envelope.body.current_step == 0
    written = portal_obj(envelope)
    assert written == {**minimal(), "MaDonViGui": COMMUNE, "LoaiDoiTuong": 1,
                       "MaCoQuanTiepNhan": COMMUNE}
    assert "BuocHienTai" not in written and "DoKhan" not in written


def test_the_codec_follows_the_adapter_protocol() -> None:
    codec: Codec = MOTCUA
    assert codec.media_type == "application/json"
    assert codec.decode(orjson.dumps({**minimal(), "MaDonViGui": COMMUNE})) == dec(minimal())


def test_null_and_blank_mean_absent() -> None:
    noisy = {**minimal(), "GhiChu": "", "EmailChuHoSo": None, "SoGiayToChuHoSo": "  ",
             "DoKhan": None, "NgayGui": "", "QuyTrinhXuLy": None, "TaiLieuNop": None,
             "ThongTinKhac": None, "MaThongDiep": "", "LoaiDoiTuong": None}
    assert dec(noisy) == dec(minimal())


def test_texts_are_stripped_like_the_envelope_strips_them() -> None:
    padded = {**minimal(), "ChuHoSo": "  Nguyễn Thị Hoa ", "MaHoSo": f" {COMMUNE}-250314-0042"}
    assert dec(padded) == dec(minimal())


# -- dates: yyyyMMddHHmmss, Vietnam time -------------------------------------------------------
def test_dates_are_vietnam_time() -> None:
    assert parse_portal_date("20250314091500") == datetime(2025, 3, 14, 2, 15, tzinfo=UTC)
    assert parse_portal_date("20250314091500").utcoffset() == timedelta(hours=7)
    # 23:30 UTC is already the next day in Việt Nam.
    assert portal_date(datetime(2025, 3, 14, 23, 30, tzinfo=UTC)) == "20250315063000"
    new_york = timezone(timedelta(hours=-5))
    assert portal_date(datetime(2025, 3, 14, 10, 0, tzinfo=new_york)) == "20250314220000"
    # The format counts seconds: a fraction is dropped, never rounded up.
    assert portal_date(datetime(2025, 3, 14, 2, 15, 59, 999999, tzinfo=UTC)) == "20250314091559"
    assert portal_date(datetime(999, 1, 2, 3, 4, 5, tzinfo=VIETNAM)) == "09990102030405"


@pytest.mark.parametrize("text", [
    "2025031409150", "202503140915000", "2025-03-14 09:15", "20251314091500", "20250230091500",
    "20250314241500", "20250314096000", "20250314091560", "00000314091500", "２０２５0314091500",
    "2025031409150a",
])
def test_malformed_dates_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(ValueError):
        parse_portal_date(text)
    error = refusal({**minimal(), "NgayHenTra": text})
    assert [e.pointer for e in error.errors] == ["/NgayHenTra"]
    assert error.errors[0].detail.startswith("not yyyyMMddHHmmss")
    assert "/NgayHenTra: not yyyyMMddHHmmss" in error.detail


# -- recipients, sender, receiving agency ------------------------------------------------------
def test_recipient_is_the_agency_of_the_current_step() -> None:
    dossier = full()
    del dossier["MaDonViNhan"]
    assert dec(dossier).header.to == [AgencyAddress(agency=DISTRICT)]
    dossier["BuocHienTai"] = 1
    assert dec(dossier).header.to == [AgencyAddress(agency=COMMUNE)]
    del dossier["BuocHienTai"]  # absent: the first step
    assert dec(dossier).body.current_step == 0


def test_recipients_as_a_list_with_a_subtree() -> None:
    dossier = {**minimal(), "MaDonViNhan": [
        DISTRICT, {"MaDonViCha": "000.00.00.H57", "Cap": "district", "GomCaDonViCha": True}]}
    envelope = dec(dossier)
    assert envelope.header.to == [
        AgencyAddress(agency=DISTRICT),
        SubtreeAddress(under="000.00.00.H57", level="district", include_self=True),
    ]
    assert portal_obj(envelope)["MaDonViNhan"] == dossier["MaDonViNhan"]


def test_without_a_route_the_recipient_must_be_named() -> None:
    dossier = minimal()
    del dossier["MaDonViNhan"]
    error = refusal(dossier)
    assert [e.pointer for e in error.errors] == ["/MaDonViNhan"]


def test_sender_is_mandonvigui_or_the_caller() -> None:
    assert dec({**minimal(), "MaDonViGui": DISTRICT}, sender=None).header.sender == DISTRICT
    # The ingress, not the codec, refuses a MaDonViGui other than the caller (403).
    assert dec({**minimal(), "MaDonViGui": DISTRICT}).header.sender == DISTRICT
    error = refusal(minimal(), sender=None)
    assert [e.pointer for e in error.errors] == ["/MaDonViGui"]


def test_receiving_agency_alias_and_conflict() -> None:
    assert dec({**minimal(), "DonViTiepNhan": COMMUNE}).body.receiving_agency == COMMUNE
    error = refusal({**minimal(), "MaCoQuanTiepNhan": COMMUNE, "DonViTiepNhan": DISTRICT})
    assert [e.pointer for e in error.errors] == ["/DonViTiepNhan"]
    error = refusal({**minimal(), "MaCoQuanTiepNhan": DISTRICT})
    assert [e.pointer for e in error.errors] == ["/MaHoSo"]
    assert "receiving agency" in error.errors[0].detail


def test_organisations_are_loai_doi_tuong_2() -> None:
    envelope = dec({**minimal(), "LoaiDoiTuong": 2, "SoGiayToChuHoSo": "3300123456"})
    assert envelope.body.applicant.kind is ApplicantKind.ORGANISATION
    assert portal_obj(envelope)["LoaiDoiTuong"] == 2


# -- attachments ---------------------------------------------------------------------------------
def test_size_and_hash_are_computed_from_the_data() -> None:
    data = bytes(range(256)) * 3
    lines = base64.encodebytes(data).decode()  # 76-character lines, as MIME writes them
    envelope = dec({**minimal(), "TaiLieuNop": [{"TenTepDinhKem": "ban ve.dwg", "LoaiTep":
                                                 "application/acad", "DuLieu": lines}]})
    [file] = envelope.body.attachments
    assert (file.size, file.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert file.media_type == "application/acad"  # LoaiTep read as MimeType
    assert file.content == base64.b64encode(data).decode()
    assert portal_obj(envelope)["TaiLieuNop"][0]["MimeType"] == "application/acad"


def test_an_empty_file_is_data_not_absence() -> None:
    [file] = dec({**minimal(), "TaiLieuNop": [{"TenTepDinhKem": "trong.txt", "DuLieu": ""}]}
                 ).body.attachments
    assert (file.size, file.content, file.media_type) == (0, "", "text/plain")
    assert file.sha256 == hashlib.sha256(b"").hexdigest()


def test_media_type_is_guessed_from_the_name() -> None:
    files = [{"TenTepDinhKem": "a.pdf", "DuLieu": "QQ=="},
             {"TenTepDinhKem": "khong-duoi", "DuLieu": "QQ=="}]
    types = [f.media_type for f in dec({**minimal(), "TaiLieuNop": files}).body.attachments]
    assert types == ["application/pdf", "application/octet-stream"]


@pytest.mark.parametrize(("file", "pointer", "detail"), [
    ({"DuLieu": "not base64!"}, "/TaiLieuNop/0/DuLieu", "not base64"),
    ({"DuLieu": "QQ==", "KichThuoc": 2}, "/TaiLieuNop/0/KichThuoc", "holds 1 bytes"),
    ({"DuLieu": "QQ==", "MaBam": "00" * 32}, "/TaiLieuNop/0/MaBam", "not the SHA-256"),
    ({"KichThuoc": 10}, "/TaiLieuNop/0/MaBam", "required without DuLieu"),
    ({"MaBam": "ab" * 32}, "/TaiLieuNop/0/KichThuoc", "required without DuLieu"),
    ({"DuLieu": "QQ==", "MimeType": "application/pdf", "LoaiTep": "image/png"},
     "/TaiLieuNop/0/LoaiTep", "differs from MimeType"),
    ({"DuLieu": "QQ==", "MimeType": "pdf"}, "/TaiLieuNop/0/MimeType", "pattern"),
    ({"DuLieu": "QQ==", "KichThuoc": -1}, "/TaiLieuNop/0/KichThuoc", "integer"),
    ({"DuLieu": "QQ==", "Duong_dan": "http://x"}, "/TaiLieuNop/0/Duong_dan", "unknown field"),
])
def test_attachment_errors_name_the_field(file: dict[str, Any], pointer: str,
                                          detail: str) -> None:
    error = refusal({**minimal(), "TaiLieuNop": [{"TenTepDinhKem": "a.pdf", **file}]})
    assert [e.pointer for e in error.errors] == [pointer]
    assert detail in error.errors[0].detail


# -- errors name the field -------------------------------------------------------------------------
def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        target: Any = d
        *parents, last = key.split("/")
        for part in parents:
            target = target[int(part) if isinstance(target, list) else part]
        if value is _DELETE:
            del target[last]
        else:
            target[int(last) if isinstance(target, list) else last] = value

    return mutate


_DELETE = object()

BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str, str]] = {
    "unknown field": (_set("MaLinhVuc", "G09"), "/MaLinhVuc", "unknown field"),
    "unknown field in a step": (_set("QuyTrinhXuLy/0/NguoiXuLy", "A"), "/QuyTrinhXuLy/0/NguoiXuLy",
                                "unknown field"),
    "missing ChuHoSo": (_set("ChuHoSo", _DELETE), "/ChuHoSo", "required"),
    "blank ChuHoSo": (_set("ChuHoSo", "  "), "/ChuHoSo", "required"),
    "missing MaHoSo": (_set("MaHoSo", _DELETE), "/MaHoSo", "required"),
    "bad MaHoSo": (_set("MaHoSo", "HS-0042"), "/MaHoSo", "pattern"),
    "bad MaTTHC": (_set("MaTTHC", "TTHC-01"), "/MaTTHC", "pattern"),
    "status as text": (_set("TrangThaiHoSo", "4"), "/TrangThaiHoSo", "integer"),
    "status 11": (_set("TrangThaiHoSo", 11), "/TrangThaiHoSo", "from 1 to 10"),
    "status true": (_set("TrangThaiHoSo", True), "/TrangThaiHoSo", "integer"),
    "LoaiDoiTuong 3": (_set("LoaiDoiTuong", 3), "/LoaiDoiTuong", "from 1 to 2"),
    "DoKhan 4": (_set("DoKhan", 4), "/DoKhan", "from 0 to 3"),
    "bad CCCD": (_set("SoGiayToChuHoSo", "04609-5001"), "/SoGiayToChuHoSo", "pattern"),
    "bad phone": (_set("SoDienThoaiChuHoSo", "gọi sau"), "/SoDienThoaiChuHoSo", "pattern"),
    "bad email": (_set("EmailChuHoSo", "hoa at example.vn"), "/EmailChuHoSo", "pattern"),
    "name too long": (_set("ChuHoSo", "A" * 256), "/ChuHoSo", "at most 255"),
    "appointment before receipt": (_set("NgayHenTra", "20250314091459"), "/NgayHenTra",
                                   "before NgayTiepNhan"),
    "step past the route": (_set("BuocHienTai", 3), "/BuocHienTai", "past the end"),
    "step 0": (_set("BuocHienTai", 0), "/BuocHienTai", "from 1"),
    "zero working days": (_set("QuyTrinhXuLy/1/SoNgayXuLy", 0), "/QuyTrinhXuLy/1/SoNgayXuLy",
                          "greater than 0"),
    "working days as text": (_set("QuyTrinhXuLy/1/SoNgayXuLy", "3"),
                             "/QuyTrinhXuLy/1/SoNgayXuLy", "number"),
    "step without agency": (_set("QuyTrinhXuLy/0/MaDonVi", _DELETE), "/QuyTrinhXuLy/0/MaDonVi",
                            "required"),
    "bad step agency": (_set("QuyTrinhXuLy/1/MaDonVi", "PD"), "/QuyTrinhXuLy/1/MaDonVi",
                        "pattern"),
    "route not a list": (_set("QuyTrinhXuLy", {"MaDonVi": DISTRICT}), "/QuyTrinhXuLy",
                         "JSON array"),
    "bad recipient": (_set("MaDonViNhan", "huyện Phong Điền"), "/MaDonViNhan", "pattern"),
    "bad subtree": (_set("MaDonViNhan", [DISTRICT, {"MaDonViCha": "H57"}]),
                    "/MaDonViNhan/1/MaDonViCha", "pattern"),
    "bad subtree flag": (_set("MaDonViNhan", [{"MaDonViCha": DISTRICT, "GomCaDonViCha": "có"}]),
                         "/MaDonViNhan/0/GomCaDonViCha", "true or false"),
    "bad sender": (_set("MaDonViGui", 35), "/MaDonViGui", "string"),
    "field not text": (_set("ThongTinKhac", {"SoBanSao": 2}), "/ThongTinKhac/SoBanSao",
                       "must be a string"),
    "fields not an object": (_set("ThongTinKhac", ["a"]), "/ThongTinKhac", "JSON object"),
    "reference not a uuid": (_set("ThamChieu", ["CT-05"]), "/ThamChieu/0", "UUID"),
    "message id not a uuid": (_set("MaThongDiep", "HS-0042"), "/MaThongDiep", "UUID"),
    "trace without time": (_set("NhatKy/0/ThoiDiem", _DELETE), "/NhatKy/0/ThoiDiem", "required"),
    "bad sent date": (_set("NgayGui", "14/03/2025"), "/NgayGui", "not yyyyMMddHHmmss"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_errors_name_the_field(case: str) -> None:
    mutate, pointer, detail = BROKEN[case]
    dossier = full()
    mutate(dossier)
    error = refusal(dossier)
    assert error.status == 422
    assert error.errors[0].pointer == pointer, error.errors
    assert detail in error.errors[0].detail
    assert error.detail.endswith(f"{pointer}: {error.errors[0].detail}")


def test_errors_never_echo_the_value() -> None:
    # The value may be personal data, and problem details end up in logs.
    bad = "04609 5001 BAD"
    error = refusal({**full(), "SoGiayToChuHoSo": bad, "SoDienThoaiChuHoSo": "0905-HOA"})
    text = json.dumps(error.problem(), ensure_ascii=False)
    assert bad not in text and "0905-HOA" not in text
    assert {e.pointer for e in error.errors} == {"/SoGiayToChuHoSo", "/SoDienThoaiChuHoSo"}


def test_every_error_is_reported_at_once() -> None:
    dossier = {**full(), "MaLinhVuc": "G09", "NgayHenTra": "x", "TrangThaiHoSo": 0,
               "EmailChuHoSo": "@"}
    pointers = [e.pointer for e in refusal(dossier).errors]
    assert sorted(pointers) == ["/EmailChuHoSo", "/MaLinhVuc", "/NgayHenTra", "/TrangThaiHoSo"]


def test_malformed_json_and_non_objects() -> None:
    with pytest.raises(MalformedInput) as info:
        decode_portal(b'{"MaHoSo": ', sender=COMMUNE)
    assert info.value.status == 400 and info.value.errors[0].pointer == ""
    for value in ([], "hồ sơ", 42, None):
        error = refusal(value)
        assert [e.pointer for e in error.errors] == [""]


def test_only_dossiers_are_written_as_portal_json() -> None:
    document = decode_obj({
        "kind": "document",
        "header": {"sender": COMMUNE, "to": [{"agency": DISTRICT}]},
        "body": {"number": "1", "notation": "BC-UBND", "type": {"code": "BC", "name": "Báo cáo"},
                 "subject": "Báo cáo", "promulgation": {"place": "Huế", "date": "2025-03-14"}},
    })
    with pytest.raises(SchemaViolation, match="document"):
        encode_portal(document)


# -- the progress update a portal gets ------------------------------------------------------
def test_progress_update_carries_the_progress_and_no_personal_data() -> None:
    envelope = dec(full())
    header = envelope.header.model_copy(update={"created": datetime(2025, 3, 15, 1, 0,
                                                                    tzinfo=UTC)})
    envelope = envelope.model_copy(update={"header": header})
    body = progress_update(envelope, message_id="5f0c3d5e-8c1b-4a57-9a0f-2b1e6f7d9c10")
    assert orjson.loads(body) == {
        "MaThongDiep": "5f0c3d5e-8c1b-4a57-9a0f-2b1e6f7d9c10",
        "MaHoSo": f"{COMMUNE}-250314-0042",
        "MaTTHC": "1.001193.000.00.00.H57",
        "MaCoQuanTiepNhan": COMMUNE,
        "TrangThaiHoSo": 4,
        "NgayCapNhat": "20250315080000",
        "NoiDungXuLy": "Chuyển Công an huyện đăng ký thường trú",
        "DonViXuLy": DISTRICT,
        "MaDonViGui": COMMUNE,
        "NgayTiepNhan": "20250314091500",
        "NgayHenTra": "20250321170000",
        "BuocHienTai": 2,
        "TenBuoc": "Đăng ký thường trú",
    }
    text = body.decode()
    for personal in (CCCD, "0905123456", "hoa.nguyen", "Nguyễn Thị Hoa", "Thôn Vĩnh Nguyên"):
        assert personal not in text
    assert progress_update(envelope, message_id="5f0c3d5e-8c1b-4a57-9a0f-2b1e6f7d9c10") == body


def test_progress_update_without_comment_or_route() -> None:
    envelope = dec({**minimal(), "TrangThaiHoSo": 9})
    update = orjson.loads(progress_update(envelope, message_id="m"))
    assert update["NoiDungXuLy"] == STATUS_TEXT[DossierStatus.PROCESSED] == "Đã xử lý xong"
    assert update["DonViXuLy"] == COMMUNE  # no route: the sender is processing it
    assert "BuocHienTai" not in update and "TenBuoc" not in update
    assert set(STATUS_TEXT) == set(DossierStatus)


def test_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    body = b'{"MaHoSo":"x"}'
    expected = hmac.new(b"k3y", b"1741918500." + body, hashlib.sha256).hexdigest()
    assert portal_signature("k3y", "1741918500", body) == f"sha256={expected}"
    assert portal_signature("k3y", "1741918501", body) != portal_signature("k3y", "1741918500",
                                                                            body)


@pytest.mark.parametrize(("status", "answer", "outcome", "words"), [
    (200, b'{"error_code": 0, "message": "ok"}', None, ""),
    (204, b"", None, ""),
    (200, '{"error_code": -1, "message": "MaHoSo chưa đồng bộ"}'.encode(), PermanentFailure,
     "error_code -1: MaHoSo chưa đồng bộ"),
    (503, b"down", RetryLater, "HTTP 503: down"),
    (429, b"", RetryLater, "HTTP 429"),
    (408, b"", RetryLater, "HTTP 408"),
    (401, b'{"error_code": -1, "message": "bad signature"}', PermanentFailure,
     "LIENTHONG_PORTAL_SECRET"),
    (403, b"", PermanentFailure, "credentials"),
    (400, b'{"message": "TrangThaiHoSo: must be an integer"}', PermanentFailure,
     "HTTP 400: TrangThaiHoSo"),
    (302, b"", PermanentFailure, "HTTP 302"),
])
def test_answers_map_onto_the_error_tree(status: int, answer: bytes, outcome: type | None,
                                         words: str) -> None:
    if outcome is None:
        classify_answer("P", status, answer, None)
        return
    with pytest.raises(outcome) as info:
        classify_answer("P", status, answer, "120")
    assert words in str(info.value)
    if outcome is RetryLater:
        assert info.value.delay == 120.0  # type: ignore[attr-defined]


# -- personal data in logs -----------------------------------------------------------------------
def test_redaction_hides_the_portal_contact_fields() -> None:
    logged = dict(redact(None, "info", {"event": "x", "dossier": portal_obj(dec(full()))}))
    dossier = logged["dossier"]
    for key in ("SoDienThoaiChuHoSo", "DiaChiChuHoSo", "EmailChuHoSo"):
        assert dossier[key] == REDACTED
    assert dossier["MaHoSo"] == f"{COMMUNE}-250314-0042"


# -- the JSON Schema agrees with the codec ---------------------------------------------------------
def test_committed_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$id"].endswith("motcua-dossier.schema.json")
    # Every field the codec reads is described, and nothing else.
    from adapters.one_stop_shop import _TOP_KEYS

    assert set(SCHEMA["properties"]) == _TOP_KEYS


def _schema_pointers(value: Any) -> list[str]:
    return ["".join(f"/{p}" for p in e.absolute_path) for e in VALIDATOR.iter_errors(value)]


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_schema_refuses_what_the_codec_refuses(case: str) -> None:
    mutate, pointer, _ = BROKEN[case]
    dossier = full()
    mutate(dossier)
    found = _schema_pointers(dossier)
    # What a schema cannot say (dates in order, the step within the route) it leaves to the
    # codec; everything else it refuses at the same place or one of its parents.
    if case in {"appointment before receipt", "step past the route"}:
        assert found == []
        return
    assert found and any(pointer.startswith(p) for p in found), (case, found)


VALID_VARIANTS: dict[str, Callable[[dict[str, Any]], None]] = {
    "aliases": lambda d: d.update(DonViTiepNhan=d.pop("MaCoQuanTiepNhan")),
    "nulls and blanks": lambda d: d.update(GhiChu="", EmailChuHoSo=None, DoKhan=None, NgayGui=""),
    "no recipient, a route": lambda d: d.pop("MaDonViNhan"),
    "a subtree": lambda d: d.update(
        MaDonViNhan=[{"MaDonViCha": "000.00.00.H57", "Cap": "district"}]),
    "LoaiTep": lambda d: d["TaiLieuNop"][0].update(LoaiTep=d["TaiLieuNop"][0].pop("MimeType")),
    "organisation": lambda d: d.update(LoaiDoiTuong=2, SoGiayToChuHoSo="3300123456"),
}


@pytest.mark.parametrize("case", sorted(VALID_VARIANTS))
def test_schema_and_codec_accept_the_same_variants(case: str) -> None:
    dossier = full()
    VALID_VARIANTS[case](dossier)
    assert _schema_pointers(dossier) == []
    dec(dossier)


# -- properties ------------------------------------------------------------------------------------
def instants() -> st.SearchStrategy[datetime]:
    """What the format can carry: instants to the second, in any offset."""
    return aware_datetimes().map(lambda d: d.replace(microsecond=0))


@st.composite
def dossier_envelopes(draw: st.DrawFn) -> DossierEnvelope:
    receiving = draw(agency_codes())
    received, appointment = sorted([draw(instants()), draw(instants())])
    route = draw(st.lists(st.builds(
        DossierStep, agency=agency_codes(), name=st.none() | short_texts(),
        working_days=st.floats(min_value=0, max_value=365, exclude_min=True),
    ), max_size=4))
    step = draw(st.integers(0, len(route) - 1) if route else st.integers(0, 3))
    procedure = draw(st.integers(0, 999999)).__format__("06d")
    suffix = draw(st.none() | agency_codes())
    applicant = Applicant(
        kind=draw(st.sampled_from(ApplicantKind)),
        name=draw(short_texts()),
        identity=draw(st.none() | st.from_regex(r"[0-9A-Z]{6,20}", fullmatch=True)),
        address=draw(st.none() | long_texts()),
        phone=draw(st.none() | st.from_regex(r"\+?[0-9][0-9 .-]{4,17}[0-9]", fullmatch=True)),
        email=draw(st.none() | st.from_regex(r"[a-z0-9._]{1,20}@[a-z0-9.-]{1,20}",
                                             fullmatch=True)),
    )
    body = DossierBody(
        code=f"{receiving}-{draw(st.integers(0, 999999)):06d}-{draw(st.integers(0, 999999)):04d}",
        procedure_code=f"1.{procedure}" + (f".{suffix}" if suffix else ""),
        procedure_name=draw(long_texts()),
        applicant=applicant,
        receiving_agency=receiving,
        received_at=received,
        appointment_at=appointment,
        status=draw(st.sampled_from(DossierStatus)),
        route=route,
        current_step=step,
        attachments=draw(st.lists(attachments(), max_size=3)),
        comment=draw(st.none() | long_texts()),
        fields=draw(st.dictionaries(words(3), st.just("") | words(6), max_size=4)),
    )
    header = Header(
        id=draw(st.none() | st.uuids()),
        sender=draw(agency_codes()),
        to=draw(st.lists(addresses(), min_size=1, max_size=4)),
        created=draw(st.none() | instants()),
        priority=draw(st.sampled_from(Priority)),
        due=draw(st.none() | instants()),
        references=draw(st.lists(st.uuids(), max_size=3)),
        trace=draw(st.lists(st.builds(
            TraceEntry, at=instants(), event=st.sampled_from(["accepted", "đã chuyển"]),
            agency=st.none() | agency_codes(), detail=st.none() | long_texts(),
        ), max_size=2)),
    )
    return DossierEnvelope(kind="dossier", header=header, body=body)


@PROPERTY
@given(dossier_envelopes())
def test_any_dossier_envelope_round_trips(envelope: DossierEnvelope) -> None:
    data = encode_portal(envelope)
    back = decode_portal(data)
    assert back == envelope
    assert encode_portal(back) == data


@PROPERTY
@given(dossier_envelopes())
def test_the_codec_output_validates_under_the_schema(envelope: DossierEnvelope) -> None:
    written = orjson.loads(encode_portal(envelope))
    assert _schema_pointers(written) == []
    assert decode_portal_obj(copy.deepcopy(written)) == envelope
