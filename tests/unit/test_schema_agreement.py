"""The committed JSON Schema, the pydantic models and the codec agree with one another."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator

from gateway.codecs.canonical import decode_obj, encode
from gateway.envelope import DocumentEnvelope, StatusEnvelope, json_schema
from gateway.errors import SchemaViolation
from tests.unit.strategies import envelopes

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "envelope.schema.json"
COMMITTED = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(COMMITTED, format_checker=Draft202012Validator.FORMAT_CHECKER)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_committed_schema_is_the_generated_one() -> None:
    assert COMMITTED == json_schema(), (
        "schemas/envelope.schema.json is out of date: "
        "run `lienthong schema export -o schemas/envelope.schema.json`"
    )


def test_committed_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(COMMITTED)
    assert COMMITTED["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert COMMITTED["$id"].endswith("envelope-1.0.schema.json")


@PROPERTY
@given(envelopes())
def test_every_valid_envelope_validates_under_the_schema(
    envelope: DocumentEnvelope | StatusEnvelope,
) -> None:
    errors = [e.message for e in VALIDATOR.iter_errors(envelope.model_dump(mode="json"))]
    assert errors == []
    # ...and so does its canonical form (optional fields left out instead of null).
    assert [e.message for e in VALIDATOR.iter_errors(json.loads(encode(envelope)))] == []


def test_validator_checks_formats() -> None:
    # "naive datetime" and "reference not a uuid" below rely on format checking, which
    # jsonschema silently skips when the checker's library is missing.
    checkers = VALIDATOR.format_checker.checkers if VALIDATOR.format_checker else {}
    assert {"date-time", "date", "uuid"} <= set(checkers)


def _document() -> dict[str, Any]:
    return {
        "version": "1.0",
        "kind": "document",
        "header": {
            "sender": "000.00.00.H57",
            "to": [{"agency": "000.00.31.H57"}, {"under": "000.00.34.H57", "level": "commune"}],
            "created": "2024-05-01T08:00:00+07:00",
            "references": ["5f0c3d5e-8c1b-4a57-9a0f-2b1e6f7d9c10"],
        },
        "body": {
            "number": "125",
            "notation": "UBND-VP",
            "type": {"code": "CV", "name": "Công văn"},
            "subject": "Về việc sáp nhập đơn vị hành chính cấp xã",
            "promulgation": {"place": "Huế", "date": "2024-05-01"},
            "attachments": [
                {
                    "name": "Phương án.pdf",
                    "media_type": "application/pdf",
                    "size": 2048,
                    "sha256": "ab" * 32,
                }
            ],
        },
    }


def _status() -> dict[str, Any]:
    return {
        "kind": "status",
        "header": {"sender": "000.00.31.H57", "to": [{"agency": "000.00.00.H57"}]},
        "body": {
            "about": "5f0c3d5e-8c1b-4a57-9a0f-2b1e6f7d9c10",
            "code": "05",
            "at": "2024-05-02T08:30:00Z",
        },
    }


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        node: Any = doc
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split("/")]
        node: Any = doc
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


MUTATIONS: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None]]] = {
    "bad sender code": (_document, _set("header/sender", "00.00.00.H57")),
    "lowercase letter in code": (_document, _set("header/sender", "000.00.00.h57")),
    "bad recipient code": (_document, _set("header/to/0/agency", "000.00.31.H5")),
    "bad subtree code": (_document, _set("header/to/1/under", "H57")),
    "bad subtree level": (_document, _set("header/to/1/level", "Commune")),
    "missing body": (_document, _drop("body")),
    "missing header": (_document, _drop("header")),
    "missing sender": (_document, _drop("header/sender")),
    "missing subject": (_document, _drop("body/subject")),
    "missing status code": (_status, _drop("body/code")),
    "wrong kind": (_document, _set("kind", "memo")),
    "document body under status kind": (_document, _set("kind", "status")),
    "status body under document kind": (_status, _set("kind", "document")),
    "wrong version": (_document, _set("version", "2.0")),
    "extra top-level key": (_document, _set("signature", "abc")),
    "extra header key": (_document, _set("header/cc", [])),
    "extra body key": (_document, _set("body/urgency", "high")),
    "extra key in address": (_document, _set("header/to/1/recursive", True)),
    "both address forms": (_document, _set("header/to/1/agency", "000.00.31.H57")),
    "empty to list": (_document, _set("header/to", [])),
    "to not a list": (_document, _set("header/to", {"agency": "000.00.31.H57"})),
    "wrong priority": (_document, _set("header/priority", "high")),
    "priority in Vietnamese": (_document, _set("header/priority", "hỏa tốc")),
    "empty subject": (_document, _set("body/subject", "")),
    "uppercase sha256": (_document, _set("body/attachments/0/sha256", "AB" * 32)),
    "negative size": (_document, _set("body/attachments/0/size", -1)),
    "bad media type": (_document, _set("body/attachments/0/media_type", "pdf")),
    "naive datetime": (_document, _set("header/created", "2024-05-01T08:00:00")),
    "reference not a uuid": (_document, _set("header/references/0", "125/UBND-VP")),
    "unknown status code": (_status, _set("body/code", "99")),
}


def _mutated(name: str) -> dict[str, Any]:
    make, mutate = MUTATIONS[name]
    doc = copy.deepcopy(make())
    mutate(doc)
    return doc


@pytest.mark.parametrize("make", [_document, _status])
def test_unmutated_documents_are_accepted_by_both(make: Callable[[], dict[str, Any]]) -> None:
    doc = make()
    assert [e.message for e in VALIDATOR.iter_errors(doc)] == []
    decode_obj(doc)  # raises if pydantic disagrees


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_invalid_document_is_rejected_by_schema_and_codec(name: str) -> None:
    doc = _mutated(name)
    assert not VALIDATOR.is_valid(doc), f"the JSON Schema accepts: {name}"
    with pytest.raises(SchemaViolation):
        decode_obj(doc)


def test_envelope_without_kind_is_rejected_by_schema_and_codec() -> None:
    # The codec needs "kind" to pick the body model; the committed schema must say so too,
    # otherwise a client that validates against the schema sends what the gateway refuses.
    doc = _document()
    del doc["kind"]
    with pytest.raises(SchemaViolation):
        decode_obj(doc)
    assert not VALIDATOR.is_valid(doc), "the JSON Schema accepts an envelope without 'kind'"
