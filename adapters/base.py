"""The one small protocol every adapter follows: a codec plus a transport.

An adapter is one module in ``adapters/`` for one kind of external system, and exports one
:class:`Adapter` as ``ADAPTER``; :data:`adapters.ADAPTERS` lists them, and the process is wired
from that list alone (:mod:`gateway.service`, :func:`gateway.api.create_app`):

* ``codec`` (:class:`Codec`): the system's wire format, bytes <-> Envelope, pure;
* ``mode`` and ``transport``: the delivery mode (:class:`~gateway.directory.DeliveryMode`)
  whose agencies the adapter reaches, and a factory building that :class:`Transport` from
  the app and the delivery workers' HTTP session (None when not configured: the worker then
  dead-letters such messages, "no ... transport is configured"). An ingress-only adapter has
  neither. Modes ``pull`` (the agency reads the gateway's inbox) and ``push`` (the gateway's
  own :class:`~gateway.delivery.HttpPush`, JSON or edXML as the agency's ``format`` says) are
  the core's, not an adapter's;
* ``routes``: its HTTP surface (documented in ``schemas/openapi.yaml``), if any;
* ``background``: a ``cleanup_ctx`` for a task of its own (the hub poller), if any, run with
  the broker.

:class:`Transport` and :class:`Delivery` are :mod:`gateway.delivery`'s, re-exported here: the
delivery worker calls them, and :mod:`gateway.delivery` never imports ``adapters`` (only the
wiring does, :mod:`gateway.service` and, inside ``create_app``, :mod:`gateway.api.app`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import aiohttp
from aiohttp import web

from gateway.delivery import Delivery, Transport
from gateway.directory import DeliveryMode
from gateway.envelope import AnyEnvelope

__all__ = ["Adapter", "BackgroundCtx", "Codec", "Delivery", "Transport", "TransportFactory"]


@runtime_checkable
class Codec(Protocol):
    """A wire format of an external system."""

    media_type: str

    def decode(self, data: bytes) -> AnyEnvelope:
        """Parse and validate; raise MalformedInput or SchemaViolation naming where."""
        ...

    def encode(self, envelope: AnyEnvelope) -> bytes: ...


#: Builds the adapter's transport from what the process has; None when it is not configured.
TransportFactory = Callable[[web.Application, aiohttp.ClientSession], Transport | None]
#: An aiohttp ``cleanup_ctx``: set up before the yield, torn down after it.
BackgroundCtx = Callable[[web.Application], AsyncIterator[None]]


@dataclass(frozen=True, slots=True)
class Adapter:
    """One external system, as the process wires it."""

    name: str
    codec: Codec
    mode: DeliveryMode | None = None  # None: ingress only, no transport
    transport: TransportFactory | None = None
    routes: web.RouteTableDef | None = None
    background: BackgroundCtx | None = None

    def __post_init__(self) -> None:
        if (self.mode is None) != (self.transport is None):
            raise ValueError(f"adapter {self.name}: a delivery mode goes with a transport")
