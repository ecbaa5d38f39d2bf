"""The gateway's one error tree.

Every failure the gateway reports is one of these; libraries' exceptions are converted where they
are called (``raise Mapped(...) from exc``) and ``gateway.api.problems`` maps the tree to RFC 7807
problem responses in one middleware.

    GatewayError                      base; ``status`` is the HTTP status, ``title`` its name
    ├── ConfigError                   bad settings or directory file: start-up stops
    │   └── DirectoryError            an entry of the agency directory is wrong (names the entry)
    ├── CodecError                    bytes that cannot become an Envelope
    │   ├── MalformedInput            not parseable at all (bad JSON, bad XML); names where
    │   └── SchemaViolation           parseable but breaks the contract; names the field(s)
    ├── Unauthorised                  no, unknown or revoked credentials (401)
    ├── Forbidden                     authenticated, but not allowed to act as/read that (403)
    ├── NotFound                      no such message, agency or inbox entry (404)
    ├── Conflict                      the request contradicts stored state (409)
    ├── UnprocessableRequest          valid shape, but impossible (unknown recipient...) (422)
    ├── Unavailable                   a dependency is down; try again later (503)
    └── DeliveryError                 delivering to a recipient failed
        ├── RetryLater                transient: try again after ``delay`` seconds
        └── PermanentFailure          will never succeed as sent: dead-letter it
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one place in the input.

    ``pointer`` is an RFC 6901 JSON pointer into the body (``/header/sender``), or names another
    part of the request: ``header:Idempotency-Key``, ``query:limit``, ``path:id``.
    """

    pointer: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "detail": self.detail}


class GatewayError(Exception):
    status: int = 500
    title: str = "Internal gateway error"
    type_slug: str = "internal"

    def __init__(self, detail: str, *, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors: list[FieldError] = errors or []

    def problem(self) -> dict[str, Any]:
        """The RFC 7807 body for this error (without ``instance``, which the API adds)."""
        body: dict[str, Any] = {
            "type": f"https://lienthong.gov.vn/problems/{self.type_slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = [e.as_dict() for e in self.errors]
        return body


class ConfigError(GatewayError):
    title = "Configuration error"
    type_slug = "config"


class DirectoryError(ConfigError):
    title = "Agency directory error"
    type_slug = "directory"


class CodecError(GatewayError):
    status = 400
    title = "Undecodable message"
    type_slug = "codec"


class MalformedInput(CodecError):
    status = 400
    title = "Malformed input"
    type_slug = "malformed"


class SchemaViolation(CodecError):
    status = 422
    title = "Schema violation"
    type_slug = "schema-violation"


class Unauthorised(GatewayError):
    status = 401
    title = "Unauthorised"
    type_slug = "unauthorised"


class Forbidden(GatewayError):
    status = 403
    title = "Forbidden"
    type_slug = "forbidden"


class NotFound(GatewayError):
    status = 404
    title = "Not found"
    type_slug = "not-found"


class Conflict(GatewayError):
    status = 409
    title = "Conflict"
    type_slug = "conflict"


class UnprocessableRequest(GatewayError):
    status = 422
    title = "Unprocessable request"
    type_slug = "unprocessable"


class TooLarge(GatewayError):
    """More bytes than a configured limit (a package fetched from a peer, for instance)."""

    status = 413
    title = "Content too large"
    type_slug = "too-large"


class Unavailable(GatewayError):
    status = 503
    title = "Service unavailable"
    type_slug = "unavailable"


class DeliveryError(GatewayError):
    title = "Delivery failed"
    type_slug = "delivery"


class RetryLater(DeliveryError):
    """A transient failure: the delivery is tried again after ``delay`` seconds (or the tier's)."""

    def __init__(self, detail: str, *, delay: float | None = None) -> None:
        super().__init__(detail)
        self.delay = delay


class PermanentFailure(DeliveryError):
    """The recipient will never accept this as sent: dead-letter it with the reason."""
