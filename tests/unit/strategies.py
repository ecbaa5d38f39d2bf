"""Hypothesis strategies for valid Envelope values (shared by the envelope and schema tests).

Everything drawn here is valid by construction: agency codes match the national identifier
pattern, texts are Vietnamese words without leading or trailing whitespace (the models strip it),
datetimes are timezone-aware, attachments carry a real sha256 (and, when inline, real base64).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import strategies as st

from gateway.envelope import (
    AgencyAddress,
    Attachment,
    DocumentBody,
    DocumentEnvelope,
    DocumentType,
    Header,
    Operation,
    Priority,
    Promulgation,
    Signer,
    StatusBody,
    StatusCode,
    StatusEnvelope,
    SubtreeAddress,
    TraceEntry,
)

VIETNAMESE_LETTERS = (
    "aàáảãạăằắẳẵặâầấẩẫậbcdđeèéẻẽẹêềếểễệghiìíỉĩịklmnoòóỏõọôồốổỗộơờớởỡợpqrstuùúủũụưừứửữựvxyỳýỷỹỵ"
)
ALPHABET = VIETNAMESE_LETTERS + VIETNAMESE_LETTERS.upper() + "0123456789"
PUNCTUATION = ",.;:-/()\"'"

ICT = timezone(timedelta(hours=7), "ICT")  # giờ Việt Nam
TIMEZONES = (UTC, ICT, timezone(timedelta(hours=-5, minutes=-30)), timezone(timedelta(hours=14)))

REQUIRES_COMMENT = frozenset({StatusCode.REJECTED, StatusCode.RECALL_REFUSED})

MEDIA_TYPES = (
    "application/pdf",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/xml",
    "image/png",
    "text/plain",
)


def agency_codes() -> st.SearchStrategy[str]:
    """Codes like ``000.21.35.H57``: ASCII digits, one capital letter (G, H, ...)."""
    return st.builds(
        lambda a, b, c, letter, d: f"{a:03d}.{b:02d}.{c:02d}.{letter}{d:02d}",
        st.integers(0, 999),
        st.integers(0, 99),
        st.integers(0, 99),
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
        st.integers(0, 99),
    )


def words(max_words: int = 8) -> st.SearchStrategy[str]:
    """Vietnamese text: words of letters and digits, punctuation inside, single spaces between."""
    word = st.builds(
        lambda head, tail: head + tail,
        st.text(ALPHABET, min_size=1, max_size=12),
        st.text(ALPHABET + PUNCTUATION, max_size=4),
    )
    return st.lists(word, min_size=1, max_size=max_words).map(" ".join)


def short_texts() -> st.SearchStrategy[str]:
    return words(8)  # at most 8 * 16 + 7 < 255 characters


def long_texts() -> st.SearchStrategy[str]:
    paragraphs = st.lists(words(12), min_size=1, max_size=4)
    return paragraphs.map("\n".join)  # inner newlines only: nothing to strip


def aware_datetimes() -> st.SearchStrategy[datetime]:
    return st.datetimes(
        min_value=datetime(1990, 1, 1),
        max_value=datetime(2100, 1, 1),
        timezones=st.sampled_from(TIMEZONES),
    )


def sha256_hex() -> st.SearchStrategy[str]:
    return st.text("0123456789abcdef", min_size=64, max_size=64)


@st.composite
def attachments(draw: st.DrawFn) -> Attachment:
    name = draw(short_texts()) + draw(st.sampled_from([".pdf", ".docx", ".xml", ".png"]))
    if draw(st.booleans()):  # inline: size, hash and content agree
        data = draw(st.binary(max_size=256))
        return Attachment(
            name=name,
            media_type=draw(st.sampled_from(MEDIA_TYPES)),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            content=base64.b64encode(data).decode("ascii"),
            description=draw(st.none() | long_texts()),
        )
    return Attachment(  # by reference to the blob store (claim check)
        name=name,
        media_type=draw(st.sampled_from(MEDIA_TYPES)),
        size=draw(st.integers(0, 2**40)),
        sha256=draw(sha256_hex()),
        description=draw(st.none() | long_texts()),
    )


def addresses() -> st.SearchStrategy[AgencyAddress | SubtreeAddress]:
    subtree = st.builds(
        SubtreeAddress,
        under=agency_codes(),
        level=st.none() | st.sampled_from(["central", "province", "district", "commune", "ward"]),
        include_self=st.booleans(),
    )
    return st.one_of(st.builds(AgencyAddress, agency=agency_codes()), subtree)


def trace_entries() -> st.SearchStrategy[TraceEntry]:
    return st.builds(
        TraceEntry,
        at=aware_datetimes(),
        event=st.sampled_from(["accepted", "routed", "delivered", "retry", "đã chuyển"]),
        agency=st.none() | agency_codes(),
        detail=st.none() | long_texts(),
    )


def headers() -> st.SearchStrategy[Header]:
    return st.builds(
        Header,
        id=st.none() | st.uuids(),
        sender=agency_codes(),
        to=st.lists(addresses(), min_size=1, max_size=5),
        created=st.none() | aware_datetimes(),
        priority=st.sampled_from(Priority),
        due=st.none() | aware_datetimes(),
        references=st.lists(st.uuids(), max_size=3),
        trace=st.lists(trace_entries(), max_size=3),
    )


NOTATIONS = ("UBND-VP", "SNV-TCCB", "QĐ-UBND", "CT-TTg", "BTC-NSNN")


def document_keys() -> st.SearchStrategy[str]:
    """Mã văn bản (edXML DocumentId): mostly ``{OrganId},{yyyy/MM/dd},{number}/{notation}``,
    sometimes a UUID or free text, as deployed systems write them."""
    conventional = st.builds(
        lambda agency, day, number, notation: f"{agency},{day:%Y/%m/%d},{number}/{notation}",
        agency_codes(),
        st.dates(min_value=date(1945, 9, 2), max_value=date(2100, 12, 31)),
        st.integers(1, 99999),
        st.sampled_from(NOTATIONS),
    )
    return st.one_of(conventional, st.uuids().map(str), words(4))


@st.composite
def document_bodies(draw: st.DrawFn) -> DocumentBody:
    """A document of any operation: a recall or update names its document, a replace the
    documents it replaces (the model's rules)."""
    operation = draw(st.sampled_from(Operation))
    if operation in {Operation.RECALL, Operation.UPDATE}:
        key: str | None = draw(document_keys())
    else:
        key = draw(st.none() | document_keys())
    replaces = (
        draw(st.lists(document_keys(), min_size=1, max_size=3))
        if operation is Operation.REPLACE
        else []
    )
    return DocumentBody(
        number=str(draw(st.integers(1, 99999))),
        notation=draw(st.sampled_from(NOTATIONS)),
        type=DocumentType(
            code=draw(st.sampled_from(["CV", "QĐ", "CT", "TB", "BC"])), name=draw(short_texts())
        ),
        subject=draw(long_texts()),
        promulgation=Promulgation(
            place=draw(st.sampled_from(["Huế", "Hà Nội", "Thành phố Hồ Chí Minh", "Đà Nẵng"])),
            date=draw(st.dates(min_value=date(1945, 9, 2), max_value=date(2100, 12, 31))),
        ),
        signer=draw(
            st.none() | st.builds(Signer, name=short_texts(), position=st.none() | short_texts())
        ),
        content=draw(st.none() | long_texts()),
        attachments=draw(st.lists(attachments(), max_size=3)),
        document_id=key,
        operation=operation,
        operation_reason=draw(st.none() | long_texts()),
        replaces=replaces,
        to_places=draw(st.lists(short_texts(), max_size=3)),
        extra=draw(
            st.dictionaries(
                st.sampled_from(["so_den", "ngay_den", "do_mat", "linh_vuc", "ghi_chú"]),
                st.just("") | words(6),
                max_size=3,
            )
        ),
    )


@st.composite
def status_bodies(draw: st.DrawFn) -> StatusBody:
    code = draw(st.sampled_from(StatusCode))
    comment = draw(long_texts() if code in REQUIRES_COMMENT else st.none() | long_texts())
    return StatusBody(
        about=draw(st.uuids()),
        code=code,
        at=draw(aware_datetimes()),
        by=draw(st.none() | short_texts()),
        comment=comment,
    )


def document_envelopes() -> st.SearchStrategy[DocumentEnvelope]:
    return st.builds(DocumentEnvelope, header=headers(), body=document_bodies())


def status_envelopes() -> st.SearchStrategy[StatusEnvelope]:
    return st.builds(StatusEnvelope, header=headers(), body=status_bodies())


def envelopes() -> st.SearchStrategy[DocumentEnvelope | StatusEnvelope]:
    return st.one_of(document_envelopes(), status_envelopes())
