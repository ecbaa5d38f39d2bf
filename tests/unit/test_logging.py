"""The redact processor (a plain function), and redaction through the configured pipeline."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog

from gateway.logging import REDACTED, configure, redact

TOKEN = "lt_" + "Q3VzdG9tZXJUb2tlbjEyMzQ1Njc4OTA"


def _redact(event: dict[str, Any]) -> dict[str, Any]:
    return dict(redact(None, "info", event))


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "access_token",
        "Authorization",
        "password",
        "db_passwd",
        "client_secret",
        "api_key",
        "X-Api-Key",
        "cookie",
        "credential_value",
        "phone",
        "applicant",
        "applicant_name",
        "identity_number",
        "id_number",
        "cccd",
        "citizen",
        "email",
        "address",
        "date_of_birth",
        "ho_ten",
        "so_dinh_danh",
        "dien_thoai",
        "dia_chi",
    ],
)
def test_secret_and_personal_keys_are_redacted(key: str) -> None:
    event = _redact({"event": "received", key: "0905123456"})
    assert event[key] == REDACTED
    assert event["event"] == "received"


@pytest.mark.parametrize("value", [12345, None, ["a"], {"a": 1}, b"raw"])
def test_redacted_keys_hide_any_value_type(value: Any) -> None:
    assert _redact({"password": value})["password"] == REDACTED


def test_ordinary_keys_are_untouched() -> None:
    event = {
        "event": "delivered",
        "message_id": "5f0c3d5e-8c1b-4a57-9a0f-2b1e6f7d9c10",
        "agency": "000.00.00.H57",
        "recipient": "000.00.31.H57",
        "attempt": 3,
        "shard": 5,
        "duration_ms": 12.5,
        "level": "info",
        "status": 202,
    }
    assert _redact(dict(event)) == event


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        ("push failed: header Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("Bearer   XyZ123", "XyZ123"),
        (f"credential {TOKEN} issued", TOKEN),
        ("connecting to amqp://gateway:s3cr3t@rabbit:5672/lienthong", "s3cr3t"),
        ("db postgresql+asyncpg://gw:pa55@db/lienthong unreachable", "pa55"),
    ],
)
def test_secret_values_are_scrubbed_inside_strings(value: str, secret: str) -> None:
    event = _redact({"event": value, "detail": value})
    for key in ("event", "detail"):
        assert secret not in event[key]
        assert REDACTED in event[key]


def test_scrubbing_keeps_the_rest_of_the_string() -> None:
    event = _redact({"url": "amqp://gateway:s3cr3t@rabbit:5672/lienthong"})
    assert event["url"] == f"amqp://{REDACTED}rabbit:5672/lienthong"
    event = _redact({"event": "calling https://qlvb.gov.vn/in with Bearer abc"})
    assert event["event"] == f"calling https://qlvb.gov.vn/in with {REDACTED}"


def test_strings_that_only_look_similar_are_kept() -> None:
    event = {
        "event": "lt_short is no token; Bearer-less text; amqp://rabbit:5672/ has no user",
        "url": "https://user@example.gov.vn/path",
    }
    assert _redact(dict(event)) == event


def test_nested_dicts_are_redacted() -> None:
    event = _redact(
        {
            "event": "push",
            "request": {
                "headers": {"Authorization": "Bearer abc", "Content-Type": "application/json"},
                "url": "https://user:pw@qlvb.gov.vn/in",
                "agency": "000.00.12.H57",
                "applicant": {"name": "Nguyễn Văn A"},
            },
        }
    )
    request = event["request"]
    assert request["headers"] == {"Authorization": REDACTED, "Content-Type": "application/json"}
    assert request["url"] == f"https://{REDACTED}qlvb.gov.vn/in"
    assert request["agency"] == "000.00.12.H57"
    assert request["applicant"] == REDACTED


def test_redact_does_not_mutate_nested_input() -> None:
    headers = {"Authorization": "Bearer abc"}
    _redact({"headers": headers})
    assert headers == {"Authorization": "Bearer abc"}


def test_secrets_inside_lists_are_redacted() -> None:
    # "whatever key they hide under": a list of dicts or strings hides them too.
    event = _redact(
        {
            "event": "retrying",
            "attempts": [{"token": TOKEN}, {"agency": "000.00.31.H57"}],
            "argv": ["lienthong", "--url", "amqp://gateway:s3cr3t@rabbit/"],
        }
    )
    assert TOKEN not in repr(event)
    assert "s3cr3t" not in repr(event)
    assert "000.00.31.H57" in repr(event)


# -- through configure() -----------------------------------------------------------------------
@contextmanager
def _configured(fmt: str) -> Iterator[None]:
    """configure() for one test, then put the root logger and structlog back as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libraries = {n: logging.getLogger(n).level for n in ("aio_pika", "aiormq", "aiohttp.access")}
    try:
        configure(level="info", fmt=fmt)
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, lib_level in libraries.items():
            logging.getLogger(name).setLevel(lib_level)
        logging.getLogger("alembic").setLevel(logging.NOTSET)
        structlog.reset_defaults()


def _json_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_configured_json_logging_redacts(capsys: pytest.CaptureFixture[str]) -> None:
    with _configured("json"):
        log = structlog.get_logger("gateway.test")
        log.info(
            "push with Bearer abc123secret",
            authorization="Bearer abc123secret",
            amqp="amqp://gateway:s3cr3t@rabbit/",
            phone="0905123456",
            message_id="5f0c3d5e",
            agency="000.00.12.H57",
        )
    err = capsys.readouterr().err
    for secret in ("abc123secret", "s3cr3t", "0905123456"):
        assert secret not in err
    [record] = _json_lines(err)
    assert record["event"] == f"push with {REDACTED}"
    assert record["authorization"] == REDACTED
    assert record["phone"] == REDACTED
    assert record["message_id"] == "5f0c3d5e"
    assert record["agency"] == "000.00.12.H57"
    assert record["level"] == "info"
    assert record["logger"] == "gateway.test"
    assert "timestamp" in record


def test_configured_logging_redacts_stdlib_records(capsys: pytest.CaptureFixture[str]) -> None:
    # aio-pika and aiohttp log through the stdlib; their messages go through redact too.
    with _configured("json"):
        logging.getLogger("aiormq.connection").warning(
            "connection to %s lost; header was %s", "amqp://gw:s3cr3t@rabbit/", f"Bearer {TOKEN}"
        )
        logging.getLogger("aio_pika.robust").info("reconnecting")  # below WARNING: dropped
    err = capsys.readouterr().err
    assert "s3cr3t" not in err
    assert TOKEN not in err
    [record] = _json_lines(err)
    assert record["level"] == "warning"
    assert record["logger"] == "aiormq.connection"
    assert record["event"] == f"connection to amqp://{REDACTED}rabbit/ lost; header was {REDACTED}"


def test_configured_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    with _configured("json"):
        log = structlog.get_logger("gateway.test")
        log.debug("hidden")
        log.warning("shown")
    records = _json_lines(capsys.readouterr().err)
    assert [r["event"] for r in records] == ["shown"]


def test_configured_console_logging_redacts(capsys: pytest.CaptureFixture[str]) -> None:
    with _configured("console"):
        structlog.get_logger("gateway.test").info("issued", token=TOKEN, note=f"Bearer {TOKEN}")
    err = capsys.readouterr().err
    assert "issued" in err
    assert TOKEN not in err
    assert REDACTED in err
