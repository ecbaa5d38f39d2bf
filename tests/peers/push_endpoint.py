"""An agency's document system receiving pushes: a real aiohttp server.

It deduplicates by ``X-Lienthong-Message-Id`` (as every receiver must), counts the repeats it
absorbed, and fails on command: a queue of scripted answers (an HTTP status, ``"slow"`` to
answer after a delay, ``"reset"`` to drop the connection) is consumed one per request, then it
answers 200.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class PushEndpoint:
    slow_seconds: float = 3.0
    script: deque[int | str] = field(default_factory=deque)
    effects: dict[str, bytes] = field(default_factory=dict)  # message id -> first body
    requests: Counter[str] = field(default_factory=Counter)  # message id -> requests seen
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    max_size: int = 1024**2  # aiohttp's default body limit; more for large packages

    @property
    def repeats(self) -> int:
        return sum(self.requests.values()) - len(self.requests)

    def fail_next(self, *answers: int | str) -> None:
        self.script.extend(answers)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_size)
        app.router.add_post("/receive", self.receive)
        return app

    async def receive(self, request: web.Request) -> web.StreamResponse:
        message_id = request.headers.get("X-Lienthong-Message-Id")
        if not message_id:
            return web.Response(status=400, text="missing X-Lienthong-Message-Id")
        body = await request.read()
        self.requests[message_id] += 1
        answer = self.script.popleft() if self.script else 200
        if answer == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if answer == "slow":
            # The effect happens, but the answer comes too late for the gateway's timeout.
            self._take_effect(message_id, body, request)
            await asyncio.sleep(self.slow_seconds)
            return web.json_response({"ok": True})
        if isinstance(answer, int) and answer >= 300:
            return web.Response(status=answer, text="scripted failure")
        self._take_effect(message_id, body, request)
        return web.json_response({"ok": True})

    def _take_effect(self, message_id: str, body: bytes, request: web.Request) -> None:
        if message_id not in self.effects:  # deduplicate: one effect per message id
            self.effects[message_id] = body
            self.headers[message_id] = dict(request.headers)
        self.arrived.set()
