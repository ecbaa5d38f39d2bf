"""The canonical JSON codec: bytes <-> Envelope.

Canonical means: UTF-8, keys sorted, no insignificant whitespace, absent optional fields left out.
Two equal envelopes encode to the same bytes, so hashes and signatures over them are stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pydantic

from gateway.envelope import ADDRESS_TAGS, ENVELOPE, AnyEnvelope
from gateway.errors import FieldError, MalformedInput, SchemaViolation

_MAX_ERRORS = 20


def encode(envelope: AnyEnvelope) -> bytes:
    return orjson.dumps(
        envelope.model_dump(mode="json", exclude_none=True), option=orjson.OPT_SORT_KEYS
    )


def decode(data: bytes | str) -> AnyEnvelope:
    """Parse and validate; raise :class:`MalformedInput` or :class:`SchemaViolation`."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedInput(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            errors=[FieldError("", f"line {exc.lineno}, column {exc.colno}: {exc.msg}")],
        ) from None
    return decode_obj(obj)


def decode_obj(obj: Any) -> AnyEnvelope:
    try:
        return ENVELOPE.validate_python(obj)
    except pydantic.ValidationError as exc:
        errors = [_field_error(obj, err) for err in exc.errors(include_url=False)[:_MAX_ERRORS]]
        first = errors[0]
        where = first.pointer or "/"
        raise SchemaViolation(
            f"envelope does not match schema {ENVELOPE_SCHEMA_NAME}: {where}: {first.detail}",
            errors=errors,
        ) from None


ENVELOPE_SCHEMA_NAME = "envelope.schema.json"


def _field_error(obj: Any, err: Any) -> FieldError:
    loc = list(err["loc"])
    if err["type"] in {"union_tag_invalid", "union_tag_not_found"}:
        # The discriminator itself is wrong: point at it, not at its parent.
        loc.append(str(err.get("ctx", {}).get("discriminator", "")).strip("'"))
    return FieldError(pointer_for(obj, _without_tags(obj, loc)), err["msg"])


def _without_tags(obj: Any, loc: list[int | str]) -> list[int | str]:
    """Drop the union tags pydantic puts into locations: the envelope's kind (first) and an
    address's tag (after ``header/to/N``). They may equal real keys ("agency"), so they are
    removed by position, not by name."""
    if loc and isinstance(obj, dict) and loc[0] == obj.get("kind") and len(loc) > 1:
        loc = loc[1:]
    if len(loc) >= 4 and loc[0] == "header" and loc[1] == "to" and isinstance(loc[2], int):
        if loc[3] in ADDRESS_TAGS:
            loc = loc[:3] + loc[4:]
    return loc


def pointer_for(obj: Any, loc: Sequence[int | str]) -> str:
    """An RFC 6901 pointer into the *input* for a pydantic error location.

    Only the parts that walk the input (and a final missing key) make the pointer; union tags
    must already be removed (:func:`_without_tags`).
    """
    parts: list[str] = []
    node: Any = obj
    for i, key in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and key in node:
            node = node[key]
            parts.append(str(key))
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
            parts.append(str(key))
        elif last and isinstance(node, dict) and isinstance(key, str) and key:
            parts.append(key)  # a required key that is missing
        # else: a union tag or validator name pydantic added; not part of the input
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)
