"""Readiness checks that do the real handshake (AMQP, SQL), not a port probe.

``python -m gateway.readiness amqp URL [--timeout S]`` exits 0 once RabbitMQ accepts an AMQP
connection; the set-up scripts use it after starting a local broker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

import aio_pika
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine


async def amqp_ready(url: str) -> str | None:
    """None when RabbitMQ completed an AMQP handshake at ``url``, else the reason it did not."""
    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception as exc:  # any failure means "not ready"; the reason is reported
        return f"{exc.__class__.__name__}: {exc}"
    await connection.close()
    return None


async def database_ready(url: str) -> str | None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # any failure means "not ready"; the reason is reported
        return f"{exc.__class__.__name__}: {exc}"
    finally:
        await engine.dispose()
    return None


async def wait(kind: str, url: str, timeout: float) -> str | None:
    check = amqp_ready if kind == "amqp" else database_ready
    deadline = time.monotonic() + timeout
    while True:
        reason = await check(url)
        if reason is None or time.monotonic() >= deadline:
            return reason
        await asyncio.sleep(1.0)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.readiness")
    parser.add_argument("kind", choices=["amqp", "database"])
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=0.0)
    args = parser.parse_args()
    for name in ("aiormq", "aio_pika"):  # their connect warnings repeat what we report
        logging.getLogger(name).setLevel(logging.CRITICAL)
    reason = asyncio.run(wait(args.kind, args.url, args.timeout))
    if reason is not None:
        sys.stderr.write(f"{args.kind} not ready at {args.url.split('@')[-1]}: {reason}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
