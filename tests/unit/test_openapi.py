"""schemas/openapi.yaml is a valid OpenAPI 3.1 document and describes exactly the app's routes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from gateway.api import create_app
from gateway.codecs import decode_obj
from gateway.settings import Settings

SPEC_PATH = Path(__file__).resolve().parents[2] / "schemas" / "openapi.yaml"
ENVELOPE_SCHEMA_PATH = SPEC_PATH.with_name("envelope.schema.json")
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
#: Methods aiohttp adds by itself (HEAD beside every GET) or that are not one method ("*").
_SKIPPED_METHODS = frozenset({"HEAD", "*"})

Operation = tuple[str, str]  # (METHOD, path template)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))
    return loaded


def app_operations(app: web.Application) -> set[Operation]:
    """(METHOD, path template) of every route the app serves, as OpenAPI spells paths."""
    found: set[Operation] = set()
    for route in app.router.routes():
        if route.method in _SKIPPED_METHODS or route.resource is None:
            continue
        found.add((route.method, route.resource.canonical))
    return found


def spec_operations(spec: dict[str, Any]) -> set[Operation]:
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS and method != "head"
    }


def compare(app: web.Application, spec: dict[str, Any]) -> tuple[set[Operation], set[Operation]]:
    """(routes missing from the spec, documented operations the app does not serve)."""
    served, documented = app_operations(app), spec_operations(spec)
    return served - documented, documented - served


def _describe(undocumented: set[Operation], unserved: set[Operation]) -> str:
    lines = []
    if undocumented:
        lines.append(f"routes of the app missing from {SPEC_PATH.name}:")
        lines += [f"  {method} {path}" for method, path in sorted(undocumented, key=_by_path)]
    if unserved:
        lines.append(f"operations in {SPEC_PATH.name} the app does not serve:")
        lines += [f"  {method} {path}" for method, path in sorted(unserved, key=_by_path)]
    return "\n".join(lines)


def _by_path(op: Operation) -> tuple[str, str]:
    return op[1], op[0]


def _operations(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    ]


def test_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    # base_uri: the envelope's $ref ("envelope.schema.json") resolves next to the spec.
    validate(spec, base_uri=SPEC_PATH.as_uri())


def test_spec_documents_exactly_the_app_routes(spec: dict[str, Any]) -> None:
    undocumented, unserved = compare(create_app(Settings()), spec)
    assert not undocumented and not unserved, _describe(undocumented, unserved)


async def _dummy(_request: web.Request) -> web.Response:
    return web.Response()


def test_comparison_reports_an_undocumented_route(spec: dict[str, Any]) -> None:
    app = create_app(Settings())
    app.router.add_delete("/api/v1/messages/{id}", _dummy)
    app.router.add_get("/api/v1/agencies", _dummy)
    undocumented, unserved = compare(app, spec)
    assert undocumented == {("DELETE", "/api/v1/messages/{id}"), ("GET", "/api/v1/agencies")}
    assert unserved == set()
    message = _describe(undocumented, unserved)
    assert "missing from openapi.yaml" in message and "GET /api/v1/agencies" in message


def test_comparison_reports_an_operation_the_app_does_not_serve(spec: dict[str, Any]) -> None:
    extended = {**spec, "paths": {**spec["paths"], "/api/v1/agencies": {"get": {}}}}
    undocumented, unserved = compare(create_app(Settings()), extended)
    assert undocumented == set()
    assert unserved == {("GET", "/api/v1/agencies")}
    assert "the app does not serve" in _describe(undocumented, unserved)


def test_every_operation_has_an_id_and_a_summary(spec: dict[str, Any]) -> None:
    missing = [
        name for name, op in _operations(spec) if not op.get("operationId") or not op.get("summary")
    ]
    assert not missing, f"operations without operationId or summary: {missing}"
    ids = [op["operationId"] for _, op in _operations(spec)]
    assert len(ids) == len(set(ids)), f"duplicate operationIds: {sorted(ids)}"


def test_every_authenticated_operation_documents_401(spec: dict[str, Any]) -> None:
    assert spec["security"] == [{"bearerAuth": []}]
    missing = [
        name
        for name, op in _operations(spec)
        if op.get("security", spec["security"]) != [] and "401" not in op["responses"]
    ]
    assert not missing, f"operations needing a token but not documenting 401: {missing}"


def test_public_operations_are_the_unauthenticated_paths(spec: dict[str, Any]) -> None:
    from gateway.api.auth import PUBLIC_PATHS

    public = {path for path, item in spec["paths"].items()
              for method, op in item.items()
              if method in HTTP_METHODS and op.get("security") == []}
    assert public == set(PUBLIC_PATHS)


def test_errors_are_problem_documents(spec: dict[str, Any]) -> None:
    """Every 4xx/5xx of the API is application/problem+json (the health checks answer JSON)."""
    responses = spec["components"]["responses"]
    wrong = []
    for name, op in _operations(spec):
        if op.get("security") == []:
            continue
        for status, response in op["responses"].items():
            if int(status) < 400:
                continue
            if "$ref" in response:
                response = responses[response["$ref"].rsplit("/", 1)[-1]]
            if set(response.get("content", {})) != {"application/problem+json"}:
                wrong.append(f"{name} {status}")
    assert not wrong, f"error responses that are not application/problem+json: {wrong}"


def test_request_examples_are_valid_envelopes(spec: dict[str, Any]) -> None:
    examples = spec["components"]["examples"]
    assert examples
    for name, example in examples.items():
        envelope = decode_obj(example["value"])
        assert envelope.kind == example["value"]["kind"], name


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _examples(spec: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(where, JSON pointer of the schema, example value) for every example in the spec."""
    found: list[tuple[str, str, Any]] = []

    def media(where: str, at: tuple[str, ...], content: dict[str, Any]) -> None:
        for media_type, body in content.items():
            schema_at = _pointer(*at, media_type, "schema")
            if "example" in body:
                found.append((f"{where} {media_type}", schema_at, body["example"]))
            for name, example in body.get("examples", {}).items():
                if "$ref" in example:
                    example = spec["components"]["examples"][example["$ref"].rsplit("/", 1)[-1]]
                found.append((f"{where} {media_type} {name}", schema_at, example["value"]))

    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in HTTP_METHODS:
                continue
            where = f"{method.upper()} {path}"
            if "requestBody" in op:
                media(f"{where} request", ("paths", path, method, "requestBody", "content"),
                      op["requestBody"]["content"])
            for status, response in op["responses"].items():
                if "$ref" not in response:
                    media(f"{where} {status}",
                          ("paths", path, method, "responses", status, "content"),
                          response.get("content", {}))
    for name, response in spec["components"]["responses"].items():
        media(f"response {name}", ("components", "responses", name, "content"),
              response.get("content", {}))
    for name, schema in spec["components"]["schemas"].items():
        for value in [schema["example"]] if "example" in schema else schema.get("examples", []):
            found.append((f"schema {name}", _pointer("components", "schemas", name), value))
    return found


def test_examples_match_their_schemas(spec: dict[str, Any]) -> None:
    spec_uri = SPEC_PATH.as_uri()
    envelope = orjson.loads(ENVELOPE_SCHEMA_PATH.read_bytes())
    registry: Registry[Any] = Registry().with_resources([
        (spec_uri, Resource.from_contents(spec, default_specification=DRAFT202012)),
        (ENVELOPE_SCHEMA_PATH.as_uri(), Resource.from_contents(envelope)),
    ])
    examples = _examples(spec)
    assert len(examples) >= 15, [where for where, _, _ in examples]
    wrong = []
    for where, schema_at, value in examples:
        validator = OAS31Validator({"$ref": f"{spec_uri}#{schema_at}"}, registry=registry,
                                   format_checker=oas31_format_checker)
        wrong += [f"{where}: {e.json_path}: {e.message}" for e in validator.iter_errors(value)]
    assert not wrong, "examples that break their schema:\n" + "\n".join(wrong)
