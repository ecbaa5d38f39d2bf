"""Typed, strict settings read from ``LIENTHONG_*`` environment variables.

An unknown ``LIENTHONG_*`` variable or a malformed value is a :class:`ConfigError` naming the
variable: a typo must stop start-up, not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.envelope import Priority
from gateway.errors import ConfigError

PREFIX = "LIENTHONG_"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIRECTORY = REPO_ROOT / "deploy" / "directory.yaml"
DEFAULT_CALENDAR = REPO_ROOT / "deploy" / "calendar.yaml"

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``"5s"``, ``"30m"``, ``"2h"``, ``"250ms"`` or plain seconds -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 5s, 30m, 2h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _durations(text: str) -> tuple[float, ...]:
    values = tuple(parse_duration(part) for part in text.split(",") if part.strip())
    if not values:
        raise ValueError("needs at least one duration")
    return values


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {value}")
    return value


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("must be longer than zero")
    return value


@dataclass(frozen=True, slots=True)
class Limits:
    """When a delivery is given up: after ``max_attempts`` attempts, or ``max_age`` seconds
    after its first failed attempt (whichever comes first)."""

    max_attempts: int
    max_age: float


_PRIORITY_LIMIT = re.compile(r"^([a-z_]+)=(\d+)/(\S+)$")


def _priority_limits(text: str) -> tuple[tuple[Priority, Limits], ...]:
    """``"flash=12/6h,very_urgent=10/24h"``: per priority, attempts/age. Empty: none."""
    names = ", ".join(p.value for p in Priority)
    result: dict[Priority, Limits] = {}
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            if text.strip():
                raise ValueError("empty entry (use e.g. flash=12/6h,very_urgent=10/24h)")
            continue
        match = _PRIORITY_LIMIT.match(part)
        if not match:
            raise ValueError(f"{part!r} is not PRIORITY=ATTEMPTS/AGE (e.g. flash=12/6h)")
        name, attempts, age = match.groups()
        try:
            priority = Priority(name)
        except ValueError:
            raise ValueError(f"unknown priority {name!r} (one of {names})") from None
        if priority in result:
            raise ValueError(f"priority {name!r} given twice")
        try:
            result[priority] = Limits(_positive_int(attempts), _positive_duration(age))
        except ValueError as exc:
            raise ValueError(f"{part!r}: {exc}") from None
    return tuple(sorted(result.items()))


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"not a TCP port: {value}")
    return value


def _scheme(text: str) -> str:
    try:
        return urlsplit(text).scheme
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise ValueError(f"not a URL: {exc}") from None


def _amqp_url(text: str) -> str:
    if _scheme(text) not in {"amqp", "amqps"}:
        raise ValueError("must be an amqp:// or amqps:// URL")
    return text


def _db_url(text: str) -> str:
    scheme = _scheme(text)
    if scheme not in {"sqlite+aiosqlite", "postgresql+asyncpg"}:
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    return text


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return text

    return parse


def _agency_code(text: str) -> str:
    if not re.fullmatch(r"\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}", text):
        raise ValueError("must be an agency code like 000.00.00.A00")
    return text


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise ValueError("must be a number of at least 0")
    return value


def _http_url_or_empty(text: str) -> str:
    if text and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise ValueError("must be an http:// or https:// URL, or empty")
    return text.rstrip("/")


def _namespace(text: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_.-]{0,40}", text):
        raise ValueError("must be lowercase letters, digits, '.', '-' or '_' (max 41)")
    return text


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway reads from its environment. Defaults are safe for one machine."""

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    data_dir: Path = Path("var")
    database_url: str = ""  # empty: SQLite file under data_dir
    directory_path: Path = DEFAULT_DIRECTORY
    # Working days and office hours for dossier deadlines (lịch ngày làm việc).
    calendar_path: Path = DEFAULT_CALENDAR
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    namespace: str = "lienthong"  # prefix of every exchange and queue name
    shards: int = 8
    prefetch: int = 32
    retry_delays: tuple[float, ...] = (5.0, 30.0, 300.0, 1800.0, 7200.0)
    max_attempts: int = 8
    max_age: float = 72 * 3600.0  # give up this long after the first failed attempt
    # Per-priority (max_attempts, max_age) instead of the two above.
    priority_limits: tuple[tuple[Priority, Limits], ...] = ()
    breaker_failures: int = 5  # consecutive push failures that open an agency's breaker
    breaker_cooldown: float = 30.0  # first open period; doubles while probes fail...
    breaker_max_cooldown: float = 600.0  # ...up to this
    delivery_limit: int = 20
    push_timeout: float = 10.0
    relay_interval: float = 1.0
    relay_grace: float = 5.0
    drain_timeout: float = 30.0
    max_body_bytes: int = 2 * 1024 * 1024
    # An edXML package whose attachments are streamed to the blob store (claim check) may be
    # this large; it is never held whole in memory, only spooled to disk.
    max_package_bytes: int = 256 * 1024 * 1024
    log_format: str = "auto"
    log_level: str = "info"
    allow_insecure_push: bool = False  # http:// push endpoints (tests and the demo only)
    migrate_on_start: bool = True
    # The central document hub (Trục liên thông văn bản quốc gia); an empty URL: no bridge.
    hub_url: str = ""
    hub_system_id: str = ""
    hub_secret: str = ""  # HMAC-SHA256 key of our system at the hub; never logged
    hub_poll_interval: float = 5.0
    # Digital signatures (chữ ký số): trusted CA files (os.pathsep-separated), the default
    # policy for agencies whose directory entry names none, and our own signing key.
    signature_trust: str = ""
    signature_policy: str = "verify_if_present"
    signature_allow_sha1: bool = False
    signing_key: str = ""  # PEM private key file; empty: what we emit is not signed
    signing_certificate: str = ""  # PEM certificate (and chain) of that key
    # Public-service portals (Cổng dịch vụ công): the shared secret of their progress API.
    portal_secret: str = ""
    # Dossier deadlines: the gateway's own sender code for alerts and transfers (mã định danh
    # của hệ thống), how often the scheduler looks, and how many working days before a step
    # falls due it warns.
    system_code: str = "000.00.00.A00"
    scheduler_interval: float = 60.0
    alert_warning_days: float = 1.0

    @property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'lienthong.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    def limits(self, priority: str | None) -> Limits:
        """The delivery limits for a message of this priority (unknown or None: the defaults)."""
        for name, limits in self.priority_limits:
            if name == priority:
                return limits
        return Limits(self.max_attempts, self.max_age)

    def with_(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        known = {f"{PREFIX}{f.name.upper()}": f for f in dataclasses.fields(cls)}
        # Two names kept for habit: LIENTHONG_DIRECTORY, LIENTHONG_DATA_DIR.
        known[f"{PREFIX}DIRECTORY"] = known.pop(f"{PREFIX}DIRECTORY_PATH")
        values: dict[str, Any] = {}
        for name, raw in env.items():
            if not name.startswith(PREFIX):
                continue
            spec = known.get(name)
            if spec is None:
                raise ConfigError(f"{name}: unknown setting (known: {', '.join(sorted(known))})")
            try:
                values[spec.name] = _PARSERS[spec.name](raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={_shown(name, raw)}: {exc}") from None
        return cls(**values)


def _shown(name: str, raw: str) -> str:
    """A value fit for an error line: the password hidden, even in a URL too broken to parse
    (without ``://`` the whole part before ``@`` is hidden: it may be ``user:password``)."""
    if "SECRET" in name or "PASSWORD" in name:
        return "'***'"
    if "URL" not in name or "@" not in raw:
        return repr(raw)
    userinfo, host = raw.rsplit("@", 1)
    scheme, sep, user = userinfo.partition("://")
    if not sep:
        return repr(f"***@{host}")
    user = user.split(":", 1)[0] + ":***" if ":" in user else user
    return repr(f"{scheme}://{user}@{host}")


_PARSERS: dict[str, Callable[[str], Any]] = {
    "amqp_url": _amqp_url,
    "data_dir": Path,
    "database_url": _db_url,
    "directory_path": Path,
    "calendar_path": Path,
    "http_host": str,
    "http_port": _port,
    "namespace": _namespace,
    "shards": _positive_int,
    "prefetch": _positive_int,
    "retry_delays": _durations,
    "max_attempts": _positive_int,
    "max_age": _positive_duration,
    "priority_limits": _priority_limits,
    "breaker_failures": _positive_int,
    "breaker_cooldown": _positive_duration,
    "breaker_max_cooldown": _positive_duration,
    "delivery_limit": _positive_int,
    "push_timeout": parse_duration,
    "relay_interval": parse_duration,
    "relay_grace": parse_duration,
    "drain_timeout": parse_duration,
    "max_body_bytes": _positive_int,
    "max_package_bytes": _positive_int,
    "log_format": _choice("auto", "console", "json"),
    "log_level": _choice("debug", "info", "warning", "error"),
    "allow_insecure_push": _bool,
    "migrate_on_start": _bool,
    "hub_url": _http_url_or_empty,
    "hub_system_id": str,
    "hub_secret": str,
    "hub_poll_interval": _positive_duration,
    "signature_trust": str,
    "signature_policy": _choice("require", "verify_if_present", "record_only"),
    "signature_allow_sha1": _bool,
    "signing_key": str,
    "signing_certificate": str,
    "portal_secret": str,
    "system_code": _agency_code,
    "scheduler_interval": _positive_duration,
    "alert_warning_days": _non_negative_float,
}

# Every field has a parser; checked at import so that a new field cannot be forgotten.
if set(_PARSERS) != {f.name for f in dataclasses.fields(Settings)}:
    raise RuntimeError("Settings and _PARSERS disagree")
