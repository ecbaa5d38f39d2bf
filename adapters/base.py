"""The one small protocol every adapter follows: a codec (bytes <-> Envelope) that the gateway's
ingress and delivery call, plus the adapter's own transport (HTTP routes, a client, a poller)."""

from __future__ import annotations

from typing import Protocol

from gateway.envelope import AnyEnvelope


class Codec(Protocol):
    """A wire format of an external system."""

    media_type: str

    def decode(self, data: bytes) -> AnyEnvelope:
        """Parse and validate; raise MalformedInput or SchemaViolation naming where."""
        ...

    def encode(self, envelope: AnyEnvelope) -> bytes: ...
