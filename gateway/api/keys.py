"""Typed application keys (aiohttp ``AppKey``) and request keys shared by the API modules."""

from __future__ import annotations

from aiohttp import web

from gateway.blobs import BlobStore
from gateway.broker import Broker
from gateway.delivery import DeliveryWorker
from gateway.directory import Directory
from gateway.dossiers import WorkingDays
from gateway.relay import OutboxRelay
from gateway.settings import Settings
from gateway.signatures import SignatureSettings
from gateway.store.store import Principal, Store

SETTINGS = web.AppKey("settings", Settings)
DIRECTORY = web.AppKey("directory", Directory)
STORE = web.AppKey("store", Store)
#: attachments above the inline limit, by SHA-256 (claim check)
BLOBS = web.AppKey("blobs", BlobStore)
BROKER = web.AppKey("broker", Broker)
RELAY = web.AppKey("relay", OutboxRelay)
WORKER = web.AppKey("worker", DeliveryWorker)
#: the working-day calendar for dossier deadlines
CALENDAR = web.AppKey("calendar", WorkingDays)
#: trust store, registered certificates and policies; absent: signatures are not checked
SIGNATURES = web.AppKey("signatures", SignatureSettings)

#: who the bearer token belongs to, and for agency tokens the agency code (auth middleware)
PRINCIPAL = web.RequestKey("principal", Principal)
AGENCY = web.RequestKey("agency", str)
