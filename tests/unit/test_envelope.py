"""The canonical JSON codec: round trip, canonical bytes, and precise rejections."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.codecs.canonical import decode, decode_obj, encode
from gateway.envelope import (
    AgencyAddress,
    DocumentEnvelope,
    StatusCode,
    StatusEnvelope,
    SubtreeAddress,
    stamp,
)
from gateway.errors import CodecError, MalformedInput, SchemaViolation
from tests.unit.strategies import ICT, envelopes

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _document() -> dict[str, Any]:
    return {
        "version": "1.0",
        "kind": "document",
        "header": {
            "sender": "000.00.00.H57",
            "to": [{"agency": "000.00.31.H57"}, {"under": "000.00.00.H57", "level": "district"}],
            "priority": "urgent",
        },
        "body": {
            "number": "125",
            "notation": "UBND-VP",
            "type": {"code": "CV", "name": "Công văn"},
            "subject": "Về việc triển khai dịch vụ công trực tuyến toàn trình",
            "promulgation": {"place": "Huế", "date": "2024-05-01"},
            "signer": {"name": "Nguyễn Văn An", "position": "Chủ tịch"},
        },
    }


def _status(code: str = "03", comment: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "about": "5f0c3d5e-8c1b-4a57-9a0f-2b1e6f7d9c10",
        "code": code,
        "at": "2024-05-02T08:30:00+07:00",
    }
    if comment is not None:
        body["comment"] = comment
    return {
        "version": "1.0",
        "kind": "status",
        "header": {"sender": "000.00.31.H57", "to": [{"agency": "000.00.00.H57"}]},
        "body": body,
    }


def _violation(obj: Any) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as info:
        decode_obj(obj)
    assert info.value.status == 422
    assert info.value.errors, "a schema violation must list the offending fields"
    return info.value


def _pointers(exc: SchemaViolation) -> list[str]:
    return [e.pointer for e in exc.errors]


def _key_orders_sorted(data: bytes) -> bool:
    ok = True

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal ok
        keys = [k for k, _ in pairs]
        ok = ok and keys == sorted(keys)
        return dict(pairs)

    json.loads(data, object_pairs_hook=hook)
    return ok


def _has_null(obj: Any) -> bool:
    if obj is None:
        return True
    if isinstance(obj, dict):
        return any(_has_null(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_null(v) for v in obj)
    return False


def _reversed_keys(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _reversed_keys(obj[k]) for k in reversed(list(obj))}
    if isinstance(obj, list):
        return [_reversed_keys(v) for v in obj]
    return obj


# -- round trip and canonical form --------------------------------------------------------------
@PROPERTY
@given(envelopes())
def test_decode_inverts_encode(envelope: DocumentEnvelope | StatusEnvelope) -> None:
    decoded = decode(encode(envelope))
    assert type(decoded) is type(envelope)
    assert decoded == envelope


@PROPERTY
@given(envelopes())
def test_encode_is_canonical(envelope: DocumentEnvelope | StatusEnvelope) -> None:
    data = encode(envelope)
    # UTF-8, keys sorted at every depth, no insignificant whitespace, no nulls.
    text = data.decode("utf-8")
    obj = json.loads(text)
    assert _key_orders_sorted(data)
    assert (
        data == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    assert not _has_null(obj)  # absent optionals are left out, not written as null
    # Stable: encoding again, or encoding what decoding gave, yields the very same bytes.
    assert encode(envelope) == data
    assert encode(decode(data)) == data


@PROPERTY
@given(envelopes())
def test_equal_envelopes_from_reordered_input_encode_identically(
    envelope: DocumentEnvelope | StatusEnvelope,
) -> None:
    shuffled = _reversed_keys(envelope.model_dump(mode="json"))
    other = decode(json.dumps(shuffled, indent=3, ensure_ascii=True))
    assert other == envelope
    assert encode(other) == encode(envelope)


def test_equal_envelopes_with_differently_written_instants_encode_identically() -> None:
    # The codec's contract: "Two equal envelopes encode to the same bytes, so hashes and
    # signatures over them are stable." 07:00+07:00 and 00:00Z are the same instant, and the
    # envelopes compare equal -- so their canonical bytes must not differ.
    in_vietnam = _document()
    in_vietnam["header"]["created"] = "2024-05-01T07:00:00+07:00"
    in_utc = _document()
    in_utc["header"]["created"] = "2024-05-01T00:00:00Z"
    a, b = decode_obj(in_vietnam), decode_obj(in_utc)
    assert a == b
    assert encode(a) == encode(b)


def test_known_document_encodes_to_exact_bytes() -> None:
    envelope = decode(json.dumps(_document()))
    assert isinstance(envelope, DocumentEnvelope)
    assert envelope.header.to == [
        AgencyAddress(agency="000.00.31.H57"),
        SubtreeAddress(under="000.00.00.H57", level="district"),
    ]
    assert (
        encode(envelope)
        == (
            '{"body":{"attachments":[],"extra":{},"notation":"UBND-VP","number":"125",'
            '"operation":"new","promulgation":{"date":"2024-05-01","place":"Huế"},'
            '"replaces":[],"signer":{"name":"Nguyễn Văn An","position":"Chủ tịch"},'
            '"subject":"Về việc triển khai dịch vụ công trực tuyến toàn trình",'
            '"to_places":[],"type":{"code":"CV","name":"Công văn"}},'
            '"header":{"priority":"urgent","references":[],"sender":"000.00.00.H57",'
            '"to":[{"agency":"000.00.31.H57"},'
            '{"include_self":false,"level":"district","under":"000.00.00.H57"}],"trace":[]},'
            '"kind":"document","version":"1.0"}'
        ).encode()
    )


def test_decode_accepts_str_and_bytes_alike() -> None:
    text = json.dumps(_status())
    assert decode(text) == decode(text.encode("utf-8"))
    assert isinstance(decode(text), StatusEnvelope)


def test_whitespace_around_values_is_stripped() -> None:
    doc = _document()
    doc["body"]["subject"] = "  Về việc tổ chức hội nghị \n"
    doc["header"]["sender"] = " 000.00.00.H57 "
    envelope = decode_obj(doc)
    assert isinstance(envelope, DocumentEnvelope)
    assert envelope.body.subject == "Về việc tổ chức hội nghị"
    assert envelope.header.sender == "000.00.00.H57"


def test_stamp_fills_id_and_created_but_keeps_a_given_created() -> None:
    envelope = decode_obj(_document())
    message_id = uuid.UUID("0b8f3c9e-1d2a-4e5f-8a7b-6c5d4e3f2a1b")
    now = datetime(2024, 5, 1, 9, 0, tzinfo=ICT)
    stamped = stamp(envelope, message_id=message_id, now=now)
    assert stamped.header.id == message_id
    assert stamped.header.created == now
    assert envelope.header.id is None  # the original is untouched (frozen values)
    earlier = datetime(2024, 4, 30, tzinfo=UTC)
    given_created = envelope.model_copy(
        update={"header": envelope.header.model_copy(update={"created": earlier})}
    )
    assert stamp(given_created, message_id=message_id, now=now).header.created == earlier


# -- malformed input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "line", "column"),
    [
        (b'{\n  "kind": }', 2, 11),
        (b'{"kind": "document",', 1, 21),
        (b"\n\n   [1, 2", 3, 9),
        (b"", 1, 1),
    ],
)
def test_invalid_json_names_line_and_column(data: bytes, line: int, column: int) -> None:
    with pytest.raises(MalformedInput) as info:
        decode(data)
    exc = info.value
    assert isinstance(exc, CodecError)
    assert exc.status == 400
    assert f"line {line}, column {column}" in exc.detail
    assert exc.errors and f"line {line}" in exc.errors[0].detail


def test_invalid_utf8_is_malformed_not_a_crash() -> None:
    with pytest.raises(MalformedInput):
        decode(b'{"kind": "document", "x": "\xff\xfe"}')


@pytest.mark.parametrize("value", [[], "document", 42, None])
def test_json_that_is_not_an_object_is_a_schema_violation(value: Any) -> None:
    _violation(value)


# -- schema violations name the field -------------------------------------------------------------
def _mutated(base: dict[str, Any], path: list[str | int], value: Any = ...) -> dict[str, Any]:
    """``base`` with the field at ``path`` set to ``value`` (deleted when value is ...)."""
    doc = copy.deepcopy(base)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "pointer"),
    [
        (["header", "sender"], "H57", "/header/sender"),
        (["header", "sender"], "000.00.00.h57", "/header/sender"),
        (["header", "sender"], ..., "/header/sender"),
        (["header", "to", 0, "agency"], "000.00.31", "/header/to/0/agency"),
        (["header", "to", 1, "under"], "000.0.00.H57", "/header/to/1/under"),
        (["header", "to", 1, "level"], "Huyện", "/header/to/1/level"),
        (["header", "to"], [], "/header/to"),
        (["header", "priority"], "high", "/header/priority"),
        (["header", "created"], "2024-05-01T08:00:00", "/header/created"),
        (["header", "references"], ["not-a-uuid"], "/header/references/0"),
        (["body", "subject"], "", "/body/subject"),
        (["body", "subject"], "   ", "/body/subject"),
        (["body", "subject"], ..., "/body/subject"),
        (["body", "subject"], "x" * 4001, "/body/subject"),
        (["body", "type", "code"], ..., "/body/type/code"),
        (["body", "promulgation", "date"], "01/05/2024", "/body/promulgation/date"),
        (["body"], ..., "/body"),
        (["header"], ..., "/header"),
        (["kind"], "memo", "/kind"),
        (["kind"], ..., "/kind"),
        (["version"], "2.0", "/version"),
    ],
)
def test_schema_violation_points_at_the_field(
    path: list[str | int], value: Any, pointer: str
) -> None:
    exc = _violation(_mutated(_document(), path, value))
    assert pointer in _pointers(exc)
    assert pointer in exc.detail  # the one-line message names the field too
    assert "envelope.schema.json" in exc.detail


@pytest.mark.parametrize(
    ("path", "pointer"),
    [
        (["extension"], "/extension"),
        (["header", "cc"], "/header/cc"),
        (["body", "urgency"], "/body/urgency"),
        (["body", "type", "label"], "/body/type/label"),
        (["header", "to", 1, "recursive"], "/header/to/1/recursive"),
    ],
)
def test_extra_fields_are_rejected_and_named(path: list[str | int], pointer: str) -> None:
    exc = _violation(_mutated(_document(), path, "x"))
    assert _pointers(exc) == [pointer]
    assert "Extra inputs" in exc.errors[0].detail


def test_extra_field_on_an_agency_address_is_named() -> None:
    # {"agency": ..., "level": ...} mixes the two address forms: the error must point at
    # /header/to/0/level (the extra key), not at the valid "agency" value next to it.
    exc = _violation(_mutated(_document(), ["header", "to", 0, "level"], "district"))
    assert _pointers(exc) == ["/header/to/0/level"]


def test_extra_field_named_like_the_kind_is_named() -> None:
    exc = _violation(_mutated(_document(), ["document"], {"x": 1}))
    assert _pointers(exc) == ["/document"]


def test_several_errors_are_all_listed() -> None:
    doc = _mutated(_document(), ["header", "sender"], "bad")
    doc = _mutated(doc, ["body", "subject"], "")
    exc = _violation(doc)
    assert {"/header/sender", "/body/subject"} <= set(_pointers(exc))


def test_errors_are_capped() -> None:
    doc = _document()
    doc["header"]["to"] = [{"agency": f"bad-{i}"} for i in range(60)]
    exc = _violation(doc)
    assert 1 <= len(exc.errors) <= 20


def test_body_of_the_other_kind_is_rejected() -> None:
    doc = _document()
    doc["kind"] = "status"
    exc = _violation(doc)
    assert any(p.startswith("/body") for p in _pointers(exc))


@pytest.mark.parametrize("code", [StatusCode.REJECTED.value, StatusCode.RECALL_REFUSED.value])
def test_refusing_status_needs_a_comment(code: str) -> None:
    exc = _violation(_status(code))
    assert _pointers(exc) == ["/body/comment"]
    assert "comment" in exc.errors[0].detail
    with pytest.raises(SchemaViolation):
        decode_obj(_status(code, comment="   "))  # whitespace only is no reason
    accepted = decode_obj(_status(code, comment="Sai thẩm quyền giải quyết"))
    assert isinstance(accepted, StatusEnvelope)
    assert accepted.body.code == code


@given(st.sampled_from([c for c in StatusCode if c.value not in {"02", "16"}]))
def test_other_status_codes_need_no_comment(code: StatusCode) -> None:
    envelope = decode_obj(_status(code.value))
    assert isinstance(envelope, StatusEnvelope)
    assert envelope.body.comment is None


@pytest.mark.parametrize("code", ["07", "2", "", "rejected"])
def test_unknown_status_code_is_rejected(code: str) -> None:
    assert "/body/code" in _pointers(_violation(_status(code)))


def test_too_many_recipients_is_rejected() -> None:
    doc = _document()
    doc["header"]["to"] = [{"agency": "000.00.31.H57"}] * 201
    assert "/header/to" in _pointers(_violation(doc))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", "A" * 64),
        ("sha256", "0" * 63),
        ("size", -1),
        ("media_type", "pdf"),
        ("name", ""),
    ],
)
def test_bad_attachment_is_rejected(field: str, value: Any) -> None:
    attachment = {
        "name": "Công văn 125.pdf",
        "media_type": "application/pdf",
        "size": 12,
        "sha256": "0" * 64,
        field: value,
    }
    doc = _mutated(_document(), ["body", "attachments"], [attachment])
    assert f"/body/attachments/0/{field}" in _pointers(_violation(doc))


def test_schema_violation_problem_lists_errors() -> None:
    problem = _violation(_mutated(_document(), ["header", "sender"], "x")).problem()
    assert problem["status"] == 422
    assert problem["type"].endswith("/schema-violation")
    assert {"pointer": "/header/sender", "detail": problem["errors"][0]["detail"]} in problem[
        "errors"
    ]
