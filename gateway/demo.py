"""``lienthong demo``: the gateway on the sample directory of Thừa Thiên Huế, with a scenario.

1. UBND tỉnh (000.00.00.H57) sends a directive (chỉ thị) to every district and to Sở TT&TT,
   whose document system takes pushes: the demo serves that endpoint itself, deduplicating by
   ``X-Lienthong-Message-Id`` as any receiver must, and marks what it got as read.
2. UBND huyện Phong Điền sends a report (báo cáo) up to the province.
3. The province answers the report with status 03 (đã tiếp nhận, accepted).
Every pull agency reads its inbox (hộp thư đến) and acknowledges; the demo waits until each
recipient shows ``read`` and prints what was sent, delivered and read. Exit 0 only if all were.

Everything goes through the real API over HTTP and the real RabbitMQ; the demo uses its own
namespace and data folder and removes both at the end (``--keep`` keeps the data folder).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from gateway import topology as topo
from gateway.broker import delete_topology
from gateway.directory import Directory, load_directory, with_endpoint
from gateway.service import build_app
from gateway.settings import Settings
from gateway.store.store import Store

log = structlog.get_logger(__name__)

PROVINCE = "000.00.00.H57"  # UBND tỉnh Thừa Thiên Huế
PUSH_AGENCY = "000.00.12.H57"  # Sở Thông tin và Truyền thông: push endpoint served by the demo
REPORTING_DISTRICT = "000.00.35.H57"  # UBND huyện Phong Điền


@dataclass
class PushReceiver:
    """The document system of Sở TT&TT, as a real HTTP endpoint: dedups by message id."""

    token: str = ""
    gateway_url: str = ""
    received: dict[str, bytes] = field(default_factory=dict)
    repeats: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        message_id = request.headers.get("X-Lienthong-Message-Id", "")
        body = await request.read()
        if not message_id:
            return web.Response(status=400, text="missing X-Lienthong-Message-Id")
        if message_id in self.received:
            self.repeats += 1  # a redelivery: same id, no second effect
        else:
            self.received[message_id] = body
            task = asyncio.create_task(self._mark_read(message_id))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return web.json_response({"received": message_id})

    async def _mark_read(self, message_id: str) -> None:
        # A clerk opens it a moment later; the gateway may still be recording the delivery.
        assert self.session is not None
        for _ in range(50):
            await asyncio.sleep(0.1)
            async with self.session.post(
                f"{self.gateway_url}/api/v1/inbox/{message_id}/ack",
                headers={"Authorization": f"Bearer {self.token}"},
            ) as response:
                if response.status == 200:
                    return


def _document(sender: str, to: list[dict[str, Any]], *, number: str, notation: str,
              type_code: str, type_name: str, subject: str, signer: str, position: str
              ) -> dict[str, Any]:
    return {
        "kind": "document",
        "header": {"sender": sender, "to": to, "priority": "urgent"},
        "body": {
            "number": number,
            "notation": notation,
            "type": {"code": type_code, "name": type_name},
            "subject": subject,
            "promulgation": {"place": "Thừa Thiên Huế", "date": date.today().isoformat()},
            "signer": {"name": signer, "position": position},
        },
    }


@contextlib.asynccontextmanager
async def _site(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Client:
    """One agency's software talking to the gateway with its own token."""

    def __init__(self, session: aiohttp.ClientSession, base: str, agency: str, token: str
                 ) -> None:
        self.session, self.base, self.agency = session, base, agency
        self.headers = {"Authorization": f"Bearer {token}"}

    async def send(self, envelope: dict[str, Any], key: str) -> dict[str, Any]:
        async with self.session.post(
            f"{self.base}/api/v1/messages", json=envelope,
            headers={**self.headers, "Idempotency-Key": key},
        ) as response:
            body: dict[str, Any] = await response.json()
            if response.status != 202:
                raise RuntimeError(f"{self.agency} could not send: {body}")
            return body

    async def read_inbox(self, expected: int, timeout: float = 30.0) -> list[str]:
        """Poll the inbox (hộp thư đến) until ``expected`` unread messages are in; ack them."""
        deadline = time.monotonic() + timeout
        acked: list[str] = []
        while len(acked) < expected and time.monotonic() < deadline:
            async with self.session.get(
                f"{self.base}/api/v1/inbox", params={"unread": "true"}, headers=self.headers
            ) as response:
                page = await response.json()
            for item in page["items"]:
                async with self.session.post(
                    f"{self.base}/api/v1/inbox/{item['message_id']}/ack", headers=self.headers
                ) as response:
                    if response.status == 200:
                        acked.append(item["message_id"])
            if len(acked) < expected:
                await asyncio.sleep(0.2)
        return acked

    async def message(self, message_id: str) -> dict[str, Any]:
        async with self.session.get(
            f"{self.base}/api/v1/messages/{message_id}", headers=self.headers
        ) as response:
            result: dict[str, Any] = await response.json()
            return result


async def run_demo(settings: Settings, *, keep: bool = False) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="lienthong-demo-"))
    settings = settings.with_(
        data_dir=data_dir, namespace=f"lienthong-demo-{secrets.token_hex(3)}",
        relay_grace=2.0, allow_insecure_push=True, retry_delays=(1.0, 2.0, 5.0),
    )
    directory = load_directory(settings.directory_path, allow_insecure_push=True)
    receiver = PushReceiver()
    push_app = web.Application()
    push_app.router.add_post("/lienthong/receive", receiver.handle)
    try:
        async with _site(push_app) as push_url:
            directory = with_endpoint(directory, PUSH_AGENCY, f"{push_url}/lienthong/receive")
            return await _scenario(settings, directory, receiver)
    finally:
        await delete_topology(settings.amqp_url, topo.build(settings))
        if keep:
            sys.stdout.write(f"data kept in {data_dir}\n")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


async def _scenario(settings: Settings, directory: Directory, receiver: PushReceiver) -> int:
    districts = [a.code for a in directory.descendants(PROVINCE) if a.level == "district"]
    agencies = [PROVINCE, PUSH_AGENCY, *districts]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with Store.open(settings.store_url) as store:
        tokens = {code: (await store.issue_credential(code, "demo"))[1] for code in agencies}
    receiver.token = tokens[PUSH_AGENCY]
    started = time.monotonic()
    async with _site(build_app(settings, directory)) as base, aiohttp.ClientSession() as session:
        receiver.gateway_url, receiver.session = base, session
        clients = {code: Client(session, base, code, tokens[code]) for code in agencies}
        province, reporter = clients[PROVINCE], clients[REPORTING_DISTRICT]

        directive = await province.send(_document(
            PROVINCE, [{"under": PROVINCE, "level": "district"}, {"agency": PUSH_AGENCY}],
            number="15", notation="CT-UBND", type_code="CT", type_name="Chỉ thị",
            subject="Về việc tăng cường công tác phòng, chống bão lũ cuối năm 2026",
            signer="Nguyễn Văn Phương", position="Chủ tịch UBND tỉnh",
        ), key="demo-directive-15")
        # Every district reads the directive, then Phong Điền reports back up.
        await asyncio.gather(*(clients[d].read_inbox(1) for d in districts))
        report = await reporter.send(_document(
            REPORTING_DISTRICT, [{"agency": PROVINCE}],
            number="212", notation="BC-UBND", type_code="BC", type_name="Báo cáo",
            subject="Báo cáo tình hình triển khai phòng, chống bão lũ trên địa bàn huyện",
            signer="Lê Văn Hòa", position="Chủ tịch UBND huyện Phong Điền",
        ), key="demo-report-212")
        await province.read_inbox(1)
        status = await province.send({
            "kind": "status",
            "header": {"sender": PROVINCE, "to": [{"agency": REPORTING_DISTRICT}]},
            "body": {"about": report["id"], "code": "03", "at": _now_iso(),
                     "by": "Văn thư UBND tỉnh", "comment": "Đã tiếp nhận báo cáo"},
        }, key="demo-status-212")
        await reporter.read_inbox(1)

        sent = [("Chỉ thị 15/CT-UBND", province, directive),
                ("Báo cáo 212/BC-UBND", reporter, report),
                ("Trạng thái 03 (đã tiếp nhận)", province, status)]
        views = await _wait_all_read([(client, body["id"]) for _, client, body in sent])
        await asyncio.gather(*receiver.tasks, return_exceptions=True)
    elapsed = time.monotonic() - started
    rows = [
        (label, client.agency, r["agency"], directory.agencies[r["agency"]].mode.value,
         r["state"], _ms(view["accepted_at"], r.get("delivered_at")),
         _ms(view["accepted_at"], r.get("read_at")))
        for (label, client, _), view in zip(sent, views, strict=True)
        for r in view["recipients"]
    ]
    _print_table(rows, directory)
    all_read = all(row[4] == "read" for row in rows)
    sys.stdout.write(
        f"\n{len(sent)} messages, {len(rows)} deliveries: "
        f"{sum(r[4] in ('delivered', 'read') for r in rows)} delivered, "
        f"{sum(r[4] == 'read' for r in rows)} read; push endpoint absorbed "
        f"{receiver.repeats} repeat(s); {elapsed:.1f} s\n"
        f"{'OK: every message delivered and read' if all_read else 'NOT ALL READ'}\n"
    )
    return 0 if all_read else 1


async def _wait_all_read(
    pending: list[tuple[Client, str]], timeout: float = 30.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        views = [await client.message(message_id) for client, message_id in pending]
        done = all(r["state"] == "read" for v in views for r in v["recipients"])
        if done or time.monotonic() > deadline:
            return views
        await asyncio.sleep(0.2)


def _now_iso() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat()


def _ms(start: str, end: str | None) -> str:
    if end is None:
        return "-"
    from datetime import datetime

    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return f"{delta.total_seconds() * 1000:.0f} ms"


def _print_table(rows: Sequence[tuple[str, ...]], directory: Directory) -> None:
    header = ("message", "from", "to", "mode", "state", "delivered", "read")
    shown = [
        (label, sender, f"{to} {directory.agencies[to].name[:28]}", mode, state, d, r)
        for label, sender, to, mode, state, d, r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *shown, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    sys.stdout.write(line.format(*header) + "\n")
    sys.stdout.write("  ".join("-" * w for w in widths) + "\n")
    for row in shown:
        sys.stdout.write(line.format(*row) + "\n")
