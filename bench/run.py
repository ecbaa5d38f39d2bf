"""Throughput and latency of the gateway against raw aio-pika on the same RabbitMQ.

    .venv/bin/python bench/run.py [--messages N] [--agencies K] [--concurrency C]
                                  [--database-url URL] [--json PATH]

Two measurements, one process, one table (see bench/README.md for what is measured and how):

1. baseline: raw aio-pika, a fresh quorum queue, N persistent 2 KB messages published with
   publisher confirms (in windows), consumed concurrently with manual acks and a bounded prefetch;
2. gateway: the whole gateway (``gateway.service.build_app``) on a local port, K sender agencies
   POSTing 2 KB document envelopes to one recipient with C requests in flight; a message counts
   when the store records its ``delivered_at``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import platform
import secrets
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere: import the local gateway
    sys.path.insert(0, str(REPO_ROOT))

import aio_pika  # noqa: E402
import aiohttp  # noqa: E402
import aiormq  # noqa: E402
import orjson  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage  # noqa: E402
from aiohttp import web  # noqa: E402

from gateway import logging as gw_logging  # noqa: E402
from gateway import topology as topo  # noqa: E402
from gateway.directory import Directory, load_directory  # noqa: E402
from gateway.service import build_app  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from gateway.store.store import Store  # noqa: E402
from gateway.store.tables import (  # noqa: E402
    audit_events,
    credentials,
    document_links,
    inbox,
    messages,
    outbox,
    recipients,
)

PAYLOAD_BYTES = 2048
PROVINCE = "000.00.00.H57"
TS_HEADER = "x-bench-published-at"


# -- figures ----------------------------------------------------------------------------------
def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation): the value that pct% of samples are <= to."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Result:
    name: str
    messages: int
    seconds: float  # first publish/POST to last ack/delivered_at
    latencies_ms: list[float] = field(repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else math.nan

    @property
    def p50(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99)

    def figures(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "seconds": round(self.seconds, 3),
            "msg_per_s": round(self.rate, 1),
            "p50_ms": round(self.p50, 1),
            "p99_ms": round(self.p99, 1),
            "max_ms": round(max(self.latencies_ms, default=math.nan), 1),
            **self.extra,
        }


# -- baseline: raw aio-pika -------------------------------------------------------------------
async def run_baseline(
    url: str, *, n: int, warmup: int, window: int, prefetch: int, wait_s: float
) -> tuple[Result, str]:
    """Publish-with-confirms and consume-with-acks through one fresh quorum queue."""
    body = secrets.token_bytes(PAYLOAD_BYTES // 2).hex().encode()  # 2 KB, incompressible-ish
    connection = await aio_pika.connect(url, client_properties={"connection_name": "bench"})
    async with connection:
        version = _broker_version(connection)
        publisher = await connection.channel(publisher_confirms=True)
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=prefetch)
        name = f"bench.baseline.{uuid.uuid4().hex[:12]}"
        queue = await consumer.declare_queue(
            name, durable=True, arguments={"x-queue-type": "quorum"}
        )
        try:
            state: dict[str, Any] = {"expected": 0, "seen": 0, "lat": [], "last": 0.0}
            done = asyncio.Event()

            async def on_message(message: AbstractIncomingMessage) -> None:
                now_us = time.time_ns() // 1000
                published_us = int((message.headers or {}).get(TS_HEADER, now_us))  # type: ignore[call-overload]
                state["lat"].append((now_us - published_us) / 1000)
                await message.ack()
                state["last"] = time.time()
                state["seen"] += 1
                if state["seen"] >= state["expected"]:
                    done.set()

            tag = await queue.consume(on_message)
            try:

                async def phase(count: int) -> tuple[float, list[float]]:
                    state.update(expected=count, seen=0, lat=[], last=0.0)
                    done.clear()
                    start = time.time()
                    for offset in range(0, count, window):
                        await asyncio.gather(
                            *(
                                publisher.default_exchange.publish(
                                    aio_pika.Message(
                                        body,
                                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                        headers={TS_HEADER: time.time_ns() // 1000},
                                    ),
                                    routing_key=name,
                                    mandatory=True,
                                )
                                for _ in range(min(window, count - offset))
                            )
                        )
                    await asyncio.wait_for(done.wait(), wait_s)
                    return state["last"] - start, list(state["lat"])

                if warmup:
                    await phase(warmup)
                cpu0 = time.process_time()
                seconds, latencies = await phase(n)
                cpu = time.process_time() - cpu0
            finally:
                await queue.cancel(tag)
        finally:
            await queue.delete(if_unused=False, if_empty=False)
    return (
        Result("baseline", n, seconds, latencies,
               extra={"cpu_ms_per_msg": round(1000 * cpu / n, 2), "prefetch": prefetch,
                      "publish_window": window}),
        version,
    )


def _broker_version(connection: AbstractConnection) -> str:
    try:
        props = connection.transport.connection.server_properties  # type: ignore[union-attr]
        product = props.get("product", "RabbitMQ")
        version = props.get("version", "?")
        return f"{_text(product)} {_text(version)}"
    except Exception:  # informational only
        return "unknown"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- gateway: the whole thing over HTTP -------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pick_senders(directory: Directory, k: int) -> list[str]:
    """The first K of the district agencies, then the (active) commune agencies."""
    districts = [a.code for a in directory.agencies.values()
                 if a.level == "district" and a.active]
    communes = [a.code for a in directory.agencies.values()
                if a.level == "commune" and a.active]
    pool = districts + communes
    if not 1 <= k <= len(pool):
        raise SystemExit(f"--agencies must be 1..{len(pool)} (district and commune agencies)")
    return pool[:k]


def envelope_template(sender: str, recipient: str) -> dict[str, Any]:
    return {
        "version": "1.0",
        "kind": "document",
        "header": {"id": "", "sender": sender, "to": [{"agency": recipient}],
                   "priority": "normal"},
        "body": {
            "number": "0",
            "notation": "UBND-VP",
            "type": {"code": "CV", "name": "Công văn"},
            "subject": "Về việc đo hiệu năng liên thông văn bản (benchmark)",
            "promulgation": {"place": "Huế", "date": "2024-05-02"},
            "signer": {"name": "Nguyễn Văn A", "position": "Chánh Văn phòng"},
            "content": "",
        },
    }


def padded_body(template: dict[str, Any], number: int, message_id: str) -> bytes:
    """The envelope as JSON, ``body.content`` padded so the whole is ~PAYLOAD_BYTES."""
    doc = {**template, "header": {**template["header"], "id": message_id},
           "body": {**template["body"], "number": str(number)}}
    size = len(orjson.dumps(doc))
    doc["body"]["content"] = ("Nội dung văn bản. " * 200).encode()[: PAYLOAD_BYTES - size].decode(
        errors="ignore"
    )
    return orjson.dumps(doc)


@dataclass
class Sent:
    start: float  # time.time() just before the POST
    answered: float  # time.time() when the 202 body was read


async def send_all(
    base_url: str, tokens: dict[str, str], recipient_of: dict[str, str], *, n: int,
    concurrency: int, attempted: list[str],
) -> tuple[dict[str, Sent], list[str]]:
    """N POSTs from len(tokens) senders, ``concurrency`` in flight in total. Every id tried
    goes into ``attempted`` first (what to clean up, even if the run breaks half-way)."""
    senders = list(tokens)
    per_sender = math.ceil(concurrency / len(senders))
    sessions = {
        agency: aiohttp.ClientSession(
            base_url,
            connector=aiohttp.TCPConnector(limit=per_sender),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        for agency, token in tokens.items()
    }
    templates = {a: envelope_template(a, recipient_of[a]) for a in senders}
    sent: dict[str, Sent] = {}
    errors: list[str] = []
    counter = itertools.count()

    async def worker(index: int) -> None:
        agency = senders[index % len(senders)]
        session = sessions[agency]
        while (number := next(counter)) < n:
            message_id = str(uuid.uuid4())
            attempted.append(message_id)
            body = padded_body(templates[agency], number, message_id)
            start = time.time()
            try:
                async with session.post("/api/v1/messages", data=body) as response:
                    text = await response.read()
                    if response.status != 202:
                        errors.append(f"HTTP {response.status}: {text[:200]!r}")
                        continue
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            sent[message_id] = Sent(start, time.time())

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        for session in sessions.values():
            await session.close()
    return sent, errors


async def delivered_count(store: Store) -> int:
    counts = await store.counts()
    return counts.get("delivered", 0) + counts.get("read", 0)


async def wait_delivered(store: Store, target: int, wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    while True:
        now = await delivered_count(store)
        if now >= target or time.monotonic() > deadline:
            return now
        await asyncio.sleep(0.2)


async def delivery_rows(
    store: Store, ids: Sequence[str]
) -> dict[str, tuple[float, float | None]]:
    """message id -> (accepted_at, delivered_at) as epoch seconds."""
    rows: dict[str, tuple[float, float | None]] = {}
    async with store.read() as conn:
        for offset in range(0, len(ids), 500):
            chunk = list(ids[offset: offset + 500])
            result = await conn.execute(
                sa.select(messages.c.id, messages.c.accepted_at, recipients.c.delivered_at)
                .join(recipients, recipients.c.message_id == messages.c.id)
                .where(messages.c.id.in_(chunk))
            )
            for r in result:
                rows[r.id] = (
                    r.accepted_at.timestamp(),
                    r.delivered_at.timestamp() if r.delivered_at is not None else None,
                )
    return rows


async def run_gateway(
    args: argparse.Namespace, tmpdir: Path
) -> tuple[Result, dict[str, Any]]:
    port = free_port()
    settings = Settings().with_(
        amqp_url=args.amqp_url,
        data_dir=tmpdir,
        database_url=args.database_url or "",
        namespace=f"bench{secrets.token_hex(4)}",
        http_port=port,
        relay_grace=args.relay_grace,
        log_level="warning",
        log_format="json",
    )
    directory = load_directory(settings.directory_path)
    senders = pick_senders(directory, args.agencies)
    if args.recipient == "parent":
        recipient_of = {a: directory.agencies[a].parent or PROVINCE for a in senders}
    else:
        recipient_of = dict.fromkeys(senders, args.recipient)
    for code in set(recipient_of.values()):
        directory.get(code)  # an unknown recipient stops here, not as N failed POSTs
    env: dict[str, Any] = {"namespace": settings.namespace, "senders": senders,
                           "recipients": sorted(set(recipient_of.values()))}
    all_ids: list[str] = []
    cred_ids: list[str] = []
    # The bench's own Store on the same database: migrates it, issues the credentials before
    # the gateway starts, then watches and reads the delivery times.
    async with Store.open(settings.store_url) as store:
        env["dialect"] = store.dialect
        try:
            tokens: dict[str, str] = {}
            for agency in senders:
                cred_id, token = await store.issue_credential(agency, label="bench")
                tokens[agency] = token
                cred_ids.append(cred_id)
            app = build_app(settings, directory)
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            try:
                site = web.TCPSite(runner, settings.http_host, port)
                await site.start()
                base_url = f"http://{settings.http_host}:{port}"
                before = await delivered_count(store)
                if args.warmup:
                    warm, warm_errors = await send_all(
                        base_url, tokens, recipient_of, n=args.warmup,
                        concurrency=min(args.concurrency, args.warmup), attempted=all_ids,
                    )
                    if warm_errors:
                        raise SystemExit(f"warm-up failed: {warm_errors[0]}")
                    before += len(warm)
                    if await wait_delivered(store, before, args.timeout) < before:
                        raise SystemExit("warm-up messages were not delivered in time")
                cpu0 = time.process_time()
                sent, errors = await send_all(
                    base_url, tokens, recipient_of, n=args.messages,
                    concurrency=args.concurrency, attempted=all_ids,
                )
                reached = await wait_delivered(store, before + len(sent), args.timeout)
                cpu = time.process_time() - cpu0
            finally:
                await runner.cleanup()
            rows = await delivery_rows(store, list(sent))
        finally:
            await delete_topology(settings)
            if store.dialect != "sqlite":  # a shared database: take the bench's rows back out
                await delete_rows(store, all_ids, cred_ids)

    latencies: list[float] = []
    accept_ms: list[float] = []
    queued_ms: list[float] = []
    http_ms: list[float] = []
    delivered_at: list[float] = []
    for message_id, s in sent.items():
        accepted, delivered = rows.get(message_id, (math.nan, None))
        http_ms.append((s.answered - s.start) * 1000)
        accept_ms.append((accepted - s.start) * 1000)
        if delivered is None:
            continue
        delivered_at.append(delivered)
        latencies.append((delivered - s.start) * 1000)
        queued_ms.append((delivered - accepted) * 1000)
    first = min((s.start for s in sent.values()), default=0.0)
    seconds = (max(delivered_at) - first) if delivered_at else math.nan
    extra = {
        "posted": len(sent),
        "cpu_ms_per_msg": round(1000 * cpu / max(len(sent), 1), 2),
        "http_errors": len(errors),
        "delivered": len(delivered_at),
        "http_202_p50_ms": round(percentile(http_ms, 50), 1),
        "http_202_p99_ms": round(percentile(http_ms, 99), 1),
        "accepted_to_delivered_p50_ms": round(percentile(queued_ms, 50), 1),
        "accepted_to_delivered_p99_ms": round(percentile(queued_ms, 99), 1),
        "request_start_to_accepted_p50_ms": round(percentile(accept_ms, 50), 1),
    }
    if errors:
        env["first_error"] = errors[0]
    if reached < before + len(sent):
        env["timeout"] = f"only {reached - before} of {len(sent)} delivered in {args.timeout}s"
    # N in the rate is the number delivered (equal to --messages on a clean run).
    return Result("gateway", len(delivered_at), seconds, latencies, extra=extra), env


async def delete_topology(settings: Settings) -> None:
    """Delete the namespace's queues and exchanges (passive declare first: only what exists)."""
    topology = topo.build(settings, load_directory(settings.directory_path))
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel: AbstractChannel = await connection.channel()
        for q in topology.queues:
            try:
                queue = await channel.declare_queue(q.name, passive=True)
                await queue.delete(if_unused=False, if_empty=False)
            except (aio_pika.exceptions.ChannelClosed, aiormq.exceptions.ChannelClosed):
                channel = await connection.channel()  # a failed passive declare closes it
        for e in topology.exchanges:
            try:
                exchange = await channel.declare_exchange(e.name, passive=True)
                await exchange.delete()
            except (aio_pika.exceptions.ChannelClosed, aiormq.exceptions.ChannelClosed):
                channel = await connection.channel()
        await channel.close()


async def delete_rows(store: Store, ids: Sequence[str], cred_ids: Sequence[str]) -> None:
    async with store.write() as conn:
        for offset in range(0, len(ids), 500):
            chunk = list(ids[offset: offset + 500])
            for table in (audit_events, document_links, inbox, outbox, recipients):
                await conn.execute(table.delete().where(table.c.message_id.in_(chunk)))
            await conn.execute(messages.delete().where(messages.c.id.in_(chunk)))
        for cred_id in cred_ids:
            await conn.execute(
                audit_events.delete().where(
                    audit_events.c.event == "credential.issued",
                    audit_events.c.detail.contains(cred_id),
                )
            )
        await conn.execute(credentials.delete().where(credentials.c.id.in_(list(cred_ids))))


# -- entry point ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = Settings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--messages", "-n", type=int, default=2000, help="N, messages per run")
    p.add_argument("--agencies", "-k", type=int, default=8, help="K, sender agencies")
    p.add_argument("--concurrency", "-c", type=int, default=64,
                   help="C, gateway requests in flight in total")
    p.add_argument("--database-url", default="",
                   help="store URL (default: SQLite in a temp dir), e.g. "
                        "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
    p.add_argument("--amqp-url", default=defaults.amqp_url)
    p.add_argument("--recipient", default=PROVINCE,
                   help="the one recipient of every message, or 'parent' (each sender's parent)")
    p.add_argument("--warmup", type=int, default=50,
                   help="messages sent (and waited for) before each measured run, not counted")
    p.add_argument("--window", type=int, default=200, help="baseline: publishes per gather")
    p.add_argument("--prefetch", type=int, default=defaults.prefetch,
                   help="baseline consumer prefetch (default: the gateway's own)")
    p.add_argument("--relay-grace", type=float, default=60.0,
                   help="gateway relay_grace, s (long: the sweep must not re-publish in flight)")
    p.add_argument("--timeout", type=float, default=90.0, help="max wait for deliveries, s")
    p.add_argument("--only", choices=("baseline", "gateway"), help="run one of the two")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = p.parse_args(argv)
    for name in ("messages", "agencies", "concurrency", "window", "prefetch"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def print_table(results: list[Result], env: dict[str, Any]) -> None:
    print()
    print(f"{'':10} {'msg/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'N':>6} {'s':>7}"
          f" {'CPU ms/msg':>11}")
    for r in results:
        f = r.figures()
        print(f"{r.name:10} {f['msg_per_s']:>9.1f} {f['p50_ms']:>9.1f} {f['p99_ms']:>9.1f} "
              f"{f['max_ms']:>9.1f} {r.messages:>6} {f['seconds']:>7.2f}"
              f" {f['cpu_ms_per_msg']:>11.2f}")
    by_name = {r.name: r for r in results}
    if "baseline" in by_name and "gateway" in by_name:
        share = 100 * by_name["gateway"].rate / by_name["baseline"].rate
        env["gateway_share_of_baseline_pct"] = round(share, 1)
        print(f"\ngateway share of baseline: {share:.1f}%")
    if "gateway" in by_name:
        x = by_name["gateway"].extra
        print(f"gateway detail: HTTP 202 p50/p99 {x['http_202_p50_ms']}/{x['http_202_p99_ms']} ms, "
              f"accepted->delivered p50/p99 {x['accepted_to_delivered_p50_ms']}/"
              f"{x['accepted_to_delivered_p99_ms']} ms, posted {x['posted']}, "
              f"HTTP errors {x['http_errors']}, delivered {x['delivered']}")
    print("environment: " + ", ".join(
        f"{k}={v}" for k, v in env.items() if k not in {"senders", "recipients"}))
    if "senders" in env:
        print(f"senders: {', '.join(env['senders'])} -> {', '.join(env['recipients'])}")


async def amain(args: argparse.Namespace, tmpdir: Path) -> tuple[list[Result], dict[str, Any]]:
    env: dict[str, Any] = {
        "N": args.messages, "K": args.agencies, "C": args.concurrency,
        "python": platform.python_version(), "aio_pika": aio_pika.__version__,
        "cpus": os.cpu_count(),
    }
    results: list[Result] = []
    if args.only in (None, "baseline"):
        print(f"baseline: {args.messages} x {PAYLOAD_BYTES} B through one quorum queue ...",
              flush=True)
        baseline, env["broker"] = await run_baseline(
            args.amqp_url, n=args.messages, warmup=args.warmup, window=args.window,
            prefetch=args.prefetch, wait_s=args.timeout,
        )
        results.append(baseline)
    if args.only in (None, "gateway"):
        print(f"gateway: {args.messages} POSTs from {args.agencies} agencies, "
              f"{args.concurrency} in flight ...", flush=True)
        gateway, genv = await run_gateway(args, tmpdir)
        results.append(gateway)
        env["database"] = genv.pop("dialect")
        env.update(genv)
    return results, env


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    gw_logging.configure(level="warning", fmt="json")
    tmpdir = Path(tempfile.mkdtemp(prefix="lienthong-bench-"))
    try:
        results, env = asyncio.run(amain(args, tmpdir))
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    print_table(results, env)
    if args.json:
        doc = {"environment": env, "results": {r.name: r.figures() for r in results}}
        Path(args.json).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return 1 if "timeout" in env or "first_error" in env else 0


if __name__ == "__main__":
    sys.exit(main())
