"""The adapter protocol (adapters/base.py): every module in ``adapters/`` exports one ``ADAPTER``,
the registry reaches every delivery mode the sample directory uses that is not the core's, each
codec round-trips, and the registry's routes are the adapters' part of the app."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import uuid
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

import adapters
from adapters import ADAPTERS
from adapters.amqp_native import CODECS
from adapters.base import Adapter, Codec
from gateway.api import create_app
from gateway.api.keys import BROKER, SETTINGS, STORE
from gateway.codecs import canonical
from gateway.delivery import wire_body
from gateway.directory import DeliveryMode, WireFormat, load_directory
from gateway.envelope import AnyEnvelope, DocumentEnvelope, DossierEnvelope, StatusEnvelope
from gateway.settings import DEFAULT_DIRECTORY, Settings
from tests.conftest import document

SENDER = "000.00.01.H57"
TO = "000.00.04.H57"
COMMUNE = "000.21.35.H57"
DISTRICT = "000.00.35.H57"
ADAPTER_PREFIXES = ("/api/v1/edxml/", "/api/v1/motcua/")


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(adapters.__path__)
                  if m.name not in {"base", "__init__"})


def test_every_adapter_module_exports_one_adapter_in_the_registry() -> None:
    names = _modules()
    assert names == ["amqp_native", "central_hub", "document_management", "one_stop_shop"]
    exported = [importlib.import_module(f"adapters.{name}").ADAPTER for name in names]
    assert sorted(a.name for a in exported) == names  # named after its module
    assert set(map(id, exported)) == set(map(id, ADAPTERS)) and len(ADAPTERS) == len(names)
    for adapter in exported:
        assert isinstance(adapter, Adapter)
        assert isinstance(adapter.codec, Codec), adapter.name
        assert isinstance(adapter.codec.media_type, str)
        assert (adapter.mode is None) == (adapter.transport is None), adapter.name
        assert adapter.routes is None or isinstance(adapter.routes, web.RouteTableDef)
        assert adapter.background is None or inspect.isasyncgenfunction(adapter.background)
    modes = [a.mode for a in ADAPTERS if a.mode is not None]
    assert len(modes) == len(set(modes))  # one transport per mode


def test_a_mode_without_a_transport_is_not_an_adapter() -> None:
    with pytest.raises(ValueError, match="goes with a transport"):
        Adapter(name="x", codec=ADAPTERS[0].codec, mode=DeliveryMode.HUB)


def test_the_registry_reaches_every_mode_the_directory_uses_but_the_cores() -> None:
    directory = load_directory(DEFAULT_DIRECTORY)
    used = {a.mode for a in directory.agencies.values()
            if a.mode is not DeliveryMode.PULL  # the gateway's own inbox
            and not (a.mode is DeliveryMode.PUSH and a.format is WireFormat.JSON)}
    served = {a.mode for a in ADAPTERS}
    assert used and used <= served, used - served
    assert DeliveryMode.PULL not in served and DeliveryMode.PUSH not in served


async def test_each_transport_factory_builds_a_transport_when_configured() -> None:
    app = web.Application()
    app[STORE] = object()  # built, never used here
    app[BROKER] = object()
    app[SETTINGS] = Settings(hub_url="http://127.0.0.1:9/", hub_system_id="lienthong",
                             hub_secret="s", portal_secret="p")
    async with aiohttp.ClientSession() as http:
        for adapter in ADAPTERS:
            if adapter.transport is None:
                continue
            transport = adapter.transport(app, http)
            assert transport is not None, adapter.name
            assert inspect.iscoroutinefunction(transport.send), adapter.name
        # Not configured: the hub has no transport (the worker dead-letters mode hub).
        app2 = web.Application()
        app2[SETTINGS] = Settings()
        hub = next(a for a in ADAPTERS if a.mode is DeliveryMode.HUB)
        assert hub.transport is not None and hub.transport(app2, http) is None


def _document() -> DocumentEnvelope:
    envelope = canonical.decode(orjson.dumps(document(
        SENDER, [{"agency": TO}], id=str(uuid.uuid4()), created="2026-11-20T09:30:00+07:00")))
    assert isinstance(envelope, DocumentEnvelope)
    return envelope


def _dossier() -> DossierEnvelope:
    envelope = canonical.decode(orjson.dumps({
        "kind": "dossier",
        "header": {"sender": COMMUNE, "to": [{"agency": DISTRICT}],
                   "id": str(uuid.uuid4()), "created": "2026-03-14T10:00:00+07:00"},
        "body": {
            "code": f"{COMMUNE}-260314-0042", "procedure_code": "1.001193",
            "procedure_name": "Đăng ký khai sinh",
            "applicant": {"name": "Nguyễn Thị Hoa"},
            "receiving_agency": COMMUNE,
            "received_at": "2026-03-14T09:15:00+07:00",
            "appointment_at": "2026-03-21T17:00:00+07:00",
            "status": 2,
        },
    }))
    assert isinstance(envelope, DossierEnvelope)
    return envelope


def _meaning(envelope: AnyEnvelope) -> Any:
    return orjson.loads(canonical.encode(envelope))


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.name)
def test_each_codec_round_trips_an_envelope_it_carries(adapter: Adapter) -> None:
    envelope = _dossier() if adapter.name == "one_stop_shop" else _document()
    back = adapter.codec.decode(adapter.codec.encode(envelope))
    assert _meaning(back) == _meaning(envelope)


@pytest.mark.parametrize("wire", list(WireFormat))
def test_amqp_agencies_get_the_codec_of_their_format(wire: WireFormat) -> None:
    """What wire_body writes for an AMQP-native agency is what CODECS says it is."""
    envelope = _document()
    body, content_type = wire_body(wire, canonical.encode(envelope))
    assert content_type == CODECS[wire].media_type
    assert _meaning(CODECS[wire].decode(body)) == _meaning(envelope)


def test_a_status_round_trips_through_the_hubs_codec() -> None:
    hub = next(a for a in ADAPTERS if a.name == "central_hub")
    status = canonical.decode(orjson.dumps({
        "kind": "status",
        "header": {"sender": TO, "to": [{"agency": SENDER}], "id": str(uuid.uuid4()),
                   "created": "2026-11-20T10:00:00+07:00"},
        "body": {"about": str(uuid.uuid4()), "code": "01", "at": "2026-11-20T10:00:00+07:00"},
    }))
    assert isinstance(status, StatusEnvelope)
    assert _meaning(hub.codec.decode(hub.codec.encode(status))) == _meaning(status)


def _served(app: web.Application) -> set[tuple[str, str]]:
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.resource is not None and r.method != "HEAD"
            and r.resource.canonical.startswith(ADAPTER_PREFIXES)}


def test_the_registrys_routes_are_the_adapter_routes_the_app_serves() -> None:
    app = create_app(Settings())
    declared = {(d.method, d.path) for a in ADAPTERS if a.routes is not None
                for d in a.routes if isinstance(d, web.RouteDef)}
    assert declared == _served(app)
    assert {p for _m, p in declared} >= {"/api/v1/edxml/messages", "/api/v1/motcua/dossiers"}
