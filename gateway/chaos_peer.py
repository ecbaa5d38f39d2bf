"""Push endpoints for the chaos suite: agencies' document systems that misbehave on purpose.

``python -m gateway.chaos_peer --port P [--fail-share 0.3] ...`` serves ``POST /receive/{agency}``
for any number of push agencies, and ``GET /stats`` for the reconciliation.

Each request first meets the "infrastructure" (a proxy, the network, a slow disk), which fails a
share of requests (``--fail-share``) in one of three ways, and slows another share down:

* ``5xx``: a 500, 502 or 503 (the 503 with ``Retry-After: 1``), nothing takes effect;
* ``reset``: the connection is reset (RST) before anything takes effect;
* ``timeout``: the document takes effect, but the answer comes after ``--late-seconds``,
  later than the gateway's push timeout: the gateway must try again, and the repeat must be
  absorbed;
* ``slow`` (``--slow-share``, not a failure): the answer takes up to ``--slow-seconds``, in time.

What gets through reaches the "application", which behaves as every receiver must: it takes
effect once per (agency, ``X-Lienthong-Message-Id``) and answers 200 to a repeat, counting it
as absorbed. A small share of messages (``--reject-share``, drawn per message id, so always the
same answer for one message) is refused with 422, a permanent failure the gateway must
dead-letter with its reason; a refused message never takes effect.

``GET /stats`` answers what took effect, per agency: message id -> the chaos key found in the
envelope's ``body.extra.chaos_key``, and the counts of requests, repeats and injected faults.
Everything is in memory: the reconciliation reads it before the peer stops.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import socket
import struct
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

FAULTS = ("5xx", "reset", "timeout")


@dataclass
class PeerOptions:
    fail_share: float = 0.3
    slow_share: float = 0.05
    reject_share: float = 0.0
    late_seconds: float = 2.0  # a "timeout": longer than the gateway's push timeout
    slow_seconds: float = 0.4  # a slow answer that is still in time
    seed: int = 0


@dataclass
class ChaosPeer:
    options: PeerOptions = field(default_factory=PeerOptions)
    # agency -> message id -> chaos key (None when the envelope had none)
    effects: dict[str, dict[str, str | None]] = field(default_factory=dict)
    requests: int = 0
    repeats: int = 0  # requests for a message that had already taken effect there
    injected: Counter[str] = field(default_factory=Counter)
    _random: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self._random.seed(self.options.seed)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_post("/receive/{agency}", self.receive)
        app.router.add_get("/stats", self.stats)
        return app

    def rejects(self, message_id: str) -> bool:
        """Whether the application refuses this message (the same answer every time)."""
        if self.options.reject_share <= 0:
            return False
        digest = hashlib.sha256(f"{self.options.seed}:{message_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.options.reject_share

    async def receive(self, request: web.Request) -> web.StreamResponse:
        agency = request.match_info["agency"]
        message_id = request.headers.get("X-Lienthong-Message-Id", "")
        body = await request.read()
        self.requests += 1
        if not message_id:
            return web.Response(status=400, text="missing X-Lienthong-Message-Id")
        draw = self._random.random()
        if draw < self.options.fail_share:
            fault = self._random.choice(FAULTS)
            self.injected[fault] += 1
            if fault == "5xx":
                status = self._random.choice((500, 502, 503))
                headers = {"Retry-After": "1"} if status == 503 else None
                return web.Response(status=status, text="injected failure", headers=headers)
            if fault == "reset":
                _reset(request)
                return web.Response(status=500)  # never written: the connection is gone
            answer = self._apply(agency, message_id, body)  # "timeout": effect, late answer
            await asyncio.sleep(self.options.late_seconds)
            return answer
        if draw < self.options.fail_share + self.options.slow_share:
            self.injected["slow"] += 1
            await asyncio.sleep(self._random.uniform(0.0, self.options.slow_seconds))
        return self._apply(agency, message_id, body)

    def _apply(self, agency: str, message_id: str, body: bytes) -> web.Response:
        """The receiving application: reject, absorb a repeat, or take effect once."""
        if self.rejects(message_id):
            self.injected["reject"] += 1
            return web.Response(status=422, text="document refused by the receiving system")
        seen = self.effects.setdefault(agency, {})
        if message_id in seen:
            self.repeats += 1
        else:
            seen[message_id] = _chaos_key(body)
        return web.json_response({"received": message_id})

    async def stats(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps({
                "requests": self.requests,
                "repeats": self.repeats,
                "injected": dict(self.injected),
                "effects": self.effects,
            }),
            content_type="application/json",
        )


def _chaos_key(body: bytes) -> str | None:
    try:
        envelope: Any = orjson.loads(body)
        key = envelope["body"]["extra"]["chaos_key"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return key if isinstance(key, str) else None


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), not a polite FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.chaos_peer",
        description="Push endpoints that fail a share of requests; GET /stats reconciles.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail-share", type=float, default=0.3)
    parser.add_argument("--slow-share", type=float, default=0.05)
    parser.add_argument("--reject-share", type=float, default=0.0)
    parser.add_argument("--late-seconds", type=float, default=2.0)
    parser.add_argument("--slow-seconds", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    peer = ChaosPeer(PeerOptions(
        fail_share=args.fail_share, slow_share=args.slow_share, reject_share=args.reject_share,
        late_seconds=args.late_seconds, slow_seconds=args.slow_seconds, seed=args.seed,
    ))
    web.run_app(peer.app(), host=args.host, port=args.port, print=None, access_log=None,
                shutdown_timeout=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
