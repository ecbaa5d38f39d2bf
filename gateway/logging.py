"""structlog, configured once at the entry point (never on import).

Console output in a terminal, JSON lines otherwise. Processors are plain functions, unit-tested:
:func:`redact` removes secrets and personal data whatever key they hide under.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"

# Keys whose values are never logged: credentials, and personal data of citizens (applicant
# name, identity number, phone, address, email, date of birth).
_SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|authorization|api[_-]?key|cookie|credential_value|"
    r"applicant|citizen|identity|id_number|cccd|cmnd|phone|email|address|birth|"
    r"ho_?ten|so_?dinh_?danh|dien_?thoai|dia_?chi|chu_?ho_?so|giay_?to)",
    re.IGNORECASE,
)
# Values that look like a secret wherever they appear: bearer tokens, our own token format,
# and the userinfo of a URL (amqp://user:password@host).
_SECRET_VALUE = re.compile(
    r"((?i:bearer)\s+\S+|lt_[A-Za-z0-9_-]{20,}|(?<=://)[^/\s:@]+:[^/\s@]+@)"
)


def _scrub(value: str) -> str:
    return _SECRET_VALUE.sub(REDACTED, value)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else _clean(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """Drop secrets and personal data from an event dict (keys by name, values by shape),
    at any depth of dicts and lists."""
    for key in list(event_dict):
        if _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _clean(event_dict[key])
    return event_dict


def configure(*, level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog and the stdlib root logger (aio-pika, aiohttp log through it)."""
    renderer: Any
    if fmt == "console" or (fmt == "auto" and sys.stderr.isatty()):
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    structlog.configure(
        # Drop below-level events first, before the redaction regexes run on them.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The libraries below are chatty at INFO about things the gateway logs better itself.
    for name in ("aio_pika", "aiormq", "aiohttp.access", "alembic"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
