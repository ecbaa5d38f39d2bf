"""The gateway as one process: API, outbox relay and delivery workers, wired with cleanup_ctx.

Each resource is one ``cleanup_ctx`` generator: set up in order, torn down in reverse, only
what was set up. On SIGTERM aiohttp stops accepting requests and runs the teardown: the workers
stop consuming and drain what they hold, the relay stops, the broker and store close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import web

from adapters import ADAPTERS
from gateway import scheduler as dossier_scheduler
from gateway import topology as topo
from gateway.api import create_app
from gateway.api.keys import (
    BLOBS,
    BROKER,
    CALENDAR,
    DIRECTORY,
    RELAY,
    SETTINGS,
    STORE,
    WORKER,
)
from gateway.blobs import BlobStore
from gateway.broker import Broker
from gateway.calendar import load_calendar
from gateway.deadletters import DeadLetterKeeper
from gateway.delivery import DeliveryWorker, Transport
from gateway.directory import DeliveryMode, Directory, load_directory
from gateway.relay import OutboxRelay
from gateway.settings import Settings
from gateway.signing import SIGNER
from gateway.signing import configure as configure_signatures
from gateway.store.store import Store

log = structlog.get_logger(__name__)


def build_app(
    settings: Settings,
    directory: Directory | None = None,
    *,
    broker: bool = True,
    workers: bool = True,
    relay_loop: bool = True,
    keeper: bool = True,
    scheduler: bool = True,
) -> web.Application:
    """The whole gateway as an aiohttp app. ``broker=False`` gives the API on the store alone
    (accepted messages wait in the outbox); ``workers=False`` runs no delivery consumers and
    ``keeper=False`` leaves dead letters in the dead-letter queue; ``scheduler=False`` sends
    no dossier alerts and moves no dossiers to successors."""
    app = create_app(settings)
    app[DIRECTORY] = directory or load_directory(
        settings.directory_path, allow_insecure_push=settings.allow_insecure_push
    )
    # Trust store, registered certificates, policies and our signing key: read once, here, so
    # that a missing or unusable file stops start-up.
    configure_signatures(app, settings, app[DIRECTORY])
    app[CALENDAR] = load_calendar(settings.calendar_path)
    app.cleanup_ctx.append(_store_ctx)
    if scheduler:
        app.cleanup_ctx.append(_scheduler_ctx)
    if broker:
        app.cleanup_ctx.append(_broker_ctx)
        if relay_loop:
            app.cleanup_ctx.append(_relay_loop_ctx)
        if workers:
            app.cleanup_ctx.append(_workers_ctx)
        if keeper:
            app.cleanup_ctx.append(_keeper_ctx)
        for adapter in ADAPTERS:  # the hub poller (it idles without LIENTHONG_HUB_URL)
            if adapter.background is not None:
                app.cleanup_ctx.append(adapter.background)
    return app


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(dossier_scheduler.run(app), name="dossier-scheduler")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app[BLOBS] = BlobStore(settings.blob_dir)
    app[BLOBS].sweep()  # what a crash left half-written
    async with Store.open(settings.store_url, migrate_schema=settings.migrate_on_start) as store:
        app[STORE] = store
        yield


async def _broker_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    name = f"lienthong@{socket.gethostname()}:{os.getpid()}"
    # With the directory: each AMQP-mode agency's queue is declared too.
    topology = topo.build(settings, app[DIRECTORY])
    async with Broker.open(settings.amqp_url, topology, name=name) as broker:
        app[BROKER] = broker
        app[RELAY] = OutboxRelay(app[STORE], broker, settings)
        yield


async def _relay_loop_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[RELAY].run(), name="outbox-relay")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _workers_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    timeout = aiohttp.ClientTimeout(total=settings.push_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        # Each adapter's transport for its mode, if configured (mode hub only with
        # LIENTHONG_HUB_URL; without it the worker dead-letters those messages, "no hub
        # transport is configured"). Modes push and pull are the worker's own.
        transports: dict[DeliveryMode, Transport] = {}
        for adapter in ADAPTERS:
            if adapter.mode is not None and adapter.transport is not None:
                transport = adapter.transport(app, http)
                if transport is not None:
                    transports[adapter.mode] = transport
        worker = DeliveryWorker(
            store=app[STORE], broker=app[BROKER], directory=app[DIRECTORY],
            settings=settings, http=http, relay=app[RELAY], blobs=app[BLOBS],
            transports=transports,
            sign=app[SIGNER].sign if SIGNER in app else None,  # edXML pushes, our key
        )
        await worker.start()
        app[WORKER] = worker
        yield
        await worker.stop()


async def _keeper_ctx(app: web.Application) -> AsyncIterator[None]:
    keeper = DeadLetterKeeper(app[STORE], app[BROKER])
    await keeper.start()
    yield
    await keeper.stop()


def serve(settings: Settings) -> None:
    """``lienthong serve``: run until SIGINT/SIGTERM, then drain and exit."""
    app = build_app(settings)
    log.info("gateway.starting", host=settings.http_host, port=settings.http_port,
             agencies=len(app[DIRECTORY]))
    web.run_app(
        app, host=settings.http_host, port=settings.http_port, print=None,
        shutdown_timeout=settings.drain_timeout, access_log=None,
    )
