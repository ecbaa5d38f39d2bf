"""``lienthong demo``: the gateway on the sample directory of Thừa Thiên Huế, with a scenario.

1. UBND tỉnh (000.00.00.H57) sends a directive (chỉ thị) to every district and to Sở TT&TT,
   whose document system takes pushes: the demo serves that endpoint itself, deduplicating by
   ``X-Lienthong-Message-Id`` as any receiver must, and marks what it got as read.
2. UBND huyện Phong Điền's document system sends a report (báo cáo) as edXML to the province
   and to the Government Office (Văn phòng Chính phủ), which sits behind the central document
   hub: the hub is a real HTTP server of the project's, and the Government Office's system
   behind it checks the gateway's signature and answers with status packages 01 (đã đến),
   03 (đã tiếp nhận) and 04 (phân công), which come back through the hub to Phong Điền.
3. The province answers the report with status 03 (đã tiếp nhận, accepted).
4. Sở KH&ĐT consumes its own RabbitMQ queue as its own RabbitMQ user (AMQP-native).
5. Dossiers (hồ sơ liên thông) between communes, districts and the province
   (:mod:`gateway.demo_dossiers`), then the statistics, recomputed from the raw events.
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
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import structlog
from aiohttp import web

from adapters.amqp_native import AmqpAccounts, RabbitmqCtl
from adapters.central_hub import HubClient
from deploy.peers.central_hub import CentralHub
from gateway import demo_dossiers, stats
from gateway import topology as topo
from gateway.api.keys import CALENDAR, STORE
from gateway.broker import delete_topology
from gateway.codecs import decode_edxml, encode_edxml
from gateway.directory import DeliveryMode, Directory, load_directory, with_endpoint
from gateway.envelope import (
    AgencyAddress,
    DocumentEnvelope,
    Header,
    StatusBody,
    StatusCode,
    StatusEnvelope,
)
from gateway.errors import GatewayError
from gateway.service import build_app
from gateway.settings import Settings
from gateway.signatures import SignaturePolicy, TrustStore, verify_package
from gateway.store import stats_rows
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

    async def send_edxml(self, package: bytes) -> dict[str, Any]:
        """What a document-management system does: POST the edXML package as it is."""
        async with self.session.post(
            f"{self.base}/api/v1/edxml/messages", data=package,
            headers={**self.headers, "Content-Type": "application/xml"},
        ) as response:
            body: dict[str, Any] = await response.json()
            if response.status != 202:
                raise RuntimeError(f"{self.agency} could not send edXML: {body}")
            return body

    async def get(self, path: str) -> dict[str, Any]:
        async with self.session.get(f"{self.base}{path}", headers=self.headers) as response:
            body: dict[str, Any] = await response.json()
            if response.status != 200:
                raise RuntimeError(f"{self.agency} could not read {path}: {body}")
            return body

    async def inbox_all(self) -> list[dict[str, Any]]:
        page = await self.get("/api/v1/inbox?limit=500")
        return list(page["items"])

    async def message(self, message_id: str) -> dict[str, Any]:
        async with self.session.get(
            f"{self.base}/api/v1/messages/{message_id}", headers=self.headers
        ) as response:
            result: dict[str, Any] = await response.json()
            return result


HUB_SYSTEM = "lienthong-h57"  # our gateway's system at the central hub
VPCP_SYSTEM = "vpcp-qlvb"  # the document system of Văn phòng Chính phủ, behind the hub
VPCP = "000.00.00.G22"
AMQP_AGENCY = "000.00.04.H57"  # Sở Kế hoạch và Đầu tư: consumes its own RabbitMQ queue
PKI = Path(__file__).resolve().parent.parent / "deploy" / "pki"


async def run_demo(settings: Settings, *, keep: bool = False) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="lienthong-demo-"))
    hub = CentralHub()
    hub_secret, vpcp_secret = hub.add_system(HUB_SYSTEM), hub.add_system(VPCP_SYSTEM)
    directory = load_directory(settings.directory_path, allow_insecure_push=True)
    hub.serve_directory(directory, HUB_SYSTEM)
    hub.serve(VPCP_SYSTEM, VPCP, name="Văn phòng Chính phủ")
    receiver = PushReceiver()
    push_app = web.Application()
    push_app.router.add_post("/lienthong/receive", receiver.handle)
    topology = None
    try:
        async with _site(push_app) as push_url, _site(hub.app()) as hub_url:
            settings = settings.with_(
                data_dir=data_dir, namespace=f"lienthong-demo-{secrets.token_hex(3)}",
                relay_grace=2.0, allow_insecure_push=True, retry_delays=(1.0, 2.0, 5.0),
                hub_url=hub_url, hub_system_id=HUB_SYSTEM, hub_secret=hub_secret,
                hub_poll_interval=0.5,
                # The demo PKI (deploy/pki, demo material only): the gateway signs the edXML
                # it emits, and trusts the demo CA.
                signature_trust=str(PKI / "demo-ca.pem"),
                signing_key=str(PKI / "demo-gateway.key.pem"),
                signing_certificate=str(PKI / "demo-gateway.pem"),
            )
            directory = with_endpoint(directory, PUSH_AGENCY, f"{push_url}/lienthong/receive")
            topology = topo.build(settings, directory)
            vpcp = CentralAgencySystem(hub_url, vpcp_secret)
            return await _scenario(settings, directory, receiver, vpcp)
    finally:
        if topology is not None:
            await delete_topology(settings.amqp_url, topology)
        if keep:
            sys.stdout.write(f"data kept in {data_dir}\n")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


@dataclass
class CentralAgencySystem:
    """Văn phòng Chính phủ's document system behind the central hub: it takes what reached
    it, checks the gateway's signature, and answers each document with status 03."""

    hub_url: str
    secret: str
    answered: list[str] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)

    async def answer_all(self, session: aiohttp.ClientSession, expected: int,
                         timeout: float = 30.0) -> None:
        client = HubClient(session, self.hub_url, VPCP_SYSTEM, self.secret, timeout=10.0)
        gateway_cert = (PKI / "demo-gateway.pem").read_bytes()
        trust = TrustStore.from_paths(PKI / "demo-ca.pem")
        deadline = time.monotonic() + timeout
        while len(self.answered) < expected and time.monotonic() < deadline:
            for doc in await client.received("edoc"):
                package = await client.get_edoc(doc.doc_id)
                outcome = verify_package(
                    package, sender=doc.sender, policy=SignaturePolicy.REQUIRE, trust=trust,
                    registered={doc.sender: [gateway_cert]}, now=datetime.now(UTC),
                )
                self.signatures.append(outcome.reason.value)
                document = decode_edxml(package)
                await client.update_status(doc.doc_id, "done")
                # As a document system answers over the day: arrived, accepted, assigned.
                for code, by, comment in _VPCP_ANSWERS:
                    status = StatusEnvelope(
                        kind="status",
                        header=Header(sender=VPCP, to=[AgencyAddress(agency=doc.sender)]),
                        body=StatusBody(about=document.header.id or uuid.uuid4(), code=code,
                                        at=datetime.now(UTC), by=by, comment=comment),
                    )
                    await client.send_edoc(encode_edxml(status), message_type="status",
                                           message_id=str(uuid.uuid4()))
                self.answered.append(doc.doc_id)
            await asyncio.sleep(0.3)


#: The status packages the Government Office's system sends back through the hub.
_VPCP_ANSWERS = (
    (StatusCode.RECEIVED, "Văn thư Văn phòng Chính phủ", "Văn bản đã đến"),
    (StatusCode.ACCEPTED, "Văn thư Văn phòng Chính phủ", "Đã tiếp nhận văn bản"),
    (StatusCode.ASSIGNED, "Lãnh đạo Văn phòng", "Phân công Vụ Địa phương xử lý"),
)


async def _consume_amqp(settings: Settings, directory: Directory, topology: topo.Topology,
                        expected: int, timeout: float = 30.0) -> tuple[list[str], str | None]:
    """Sở KH&ĐT's software: its own RabbitMQ user, its own queue, ack after it has each."""
    accounts = AmqpAccounts(RabbitmqCtl(), topology)
    try:
        grant = await accounts.grant(directory.agencies[AMQP_AGENCY])
    except GatewayError as exc:
        return [], f"cannot create the agency's RabbitMQ user: {exc.detail}"
    got: list[str] = []
    try:
        connection = await aio_pika.connect(grant.url(settings.amqp_url))
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(grant.access.queue, passive=True)
            deadline = time.monotonic() + timeout
            while len(got) < expected and time.monotonic() < deadline:
                message = await queue.get(fail=False)
                if message is None:
                    await asyncio.sleep(0.2)
                    continue
                got.append(message.message_id or "")
                await message.ack()
    finally:
        await accounts.revoke(AMQP_AGENCY)
    return got, None


async def _scenario(settings: Settings, directory: Directory, receiver: PushReceiver,
                    vpcp: CentralAgencySystem) -> int:
    districts = [a.code for a in directory.descendants(PROVINCE) if a.level == "district"]
    agencies = sorted({PROVINCE, PUSH_AGENCY, *districts, *demo_dossiers.AGENCIES})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with Store.open(settings.store_url) as store:
        tokens = {code: (await store.issue_credential(code, "demo"))[1] for code in agencies}
    receiver.token = tokens[PUSH_AGENCY]
    started = time.monotonic()
    topology = topo.build(settings, directory)
    app = build_app(settings, directory)
    async with _site(app) as base, aiohttp.ClientSession() as session:
        receiver.gateway_url, receiver.session = base, session
        clients = {code: Client(session, base, code, tokens[code]) for code in agencies}
        province, reporter = clients[PROVINCE], clients[REPORTING_DISTRICT]
        amqp = asyncio.create_task(_consume_amqp(settings, directory, topology, 1))

        directive = await province.send(_document(
            PROVINCE, [{"under": PROVINCE, "level": "district"}, {"agency": PUSH_AGENCY},
                       {"agency": AMQP_AGENCY}],
            number="15", notation="CT-UBND", type_code="CT", type_name="Chỉ thị",
            subject="Về việc tăng cường công tác phòng, chống bão lũ cuối năm 2026",
            signer="Nguyễn Văn Phương", position="Chủ tịch UBND tỉnh",
        ), key="demo-directive-15")
        # Every district reads the directive, then Phong Điền's document system (QLVB&ĐH)
        # sends its report as an edXML package, to the province and to the Government Office
        # through the central hub.
        await asyncio.gather(*(clients[d].read_inbox(1) for d in districts))
        report_env = DocumentEnvelope.model_validate(_document(
            REPORTING_DISTRICT, [{"agency": PROVINCE}, {"agency": VPCP}],
            number="212", notation="BC-UBND", type_code="BC", type_name="Báo cáo",
            subject="Báo cáo tình hình triển khai phòng, chống bão lũ trên địa bàn huyện",
            signer="Lê Văn Hòa", position="Chủ tịch UBND huyện Phong Điền",
        ) | {"kind": "document"})
        package = encode_edxml(report_env.model_copy(update={"body": report_env.body.model_copy(
            update={"document_id": f"{REPORTING_DISTRICT},{date.today():%Y/%m/%d},212/BC-UBND"}
        )}), gateway_extension=False)  # as the district's own software writes it
        report = await reporter.send_edxml(package)
        await vpcp.answer_all(session, expected=1)
        await province.read_inbox(1)
        status = await province.send({
            "kind": "status",
            "header": {"sender": PROVINCE, "to": [{"agency": REPORTING_DISTRICT}]},
            "body": {"about": report["id"], "code": "03", "at": _now_iso(),
                     "by": "Văn thư UBND tỉnh", "comment": "Đã tiếp nhận báo cáo"},
        }, key="demo-status-212")
        # The province's status and the Government Office's three.
        await reporter.read_inbox(1 + len(_VPCP_ANSWERS))
        amqp_got, amqp_problem = await amqp

        sent = [("Chỉ thị 15/CT-UBND", province, directive),
                ("Báo cáo 212/BC-UBND (edXML)", reporter, report),
                ("Trạng thái 03 (đã tiếp nhận)", province, status)]
        views = await _wait_all_done([(client, body["id"]) for _, client, body in sent],
                                     directory)
        from_hub = [i for i in await reporter.inbox_all() if i["envelope"]["header"]["sender"]
                    == VPCP]
        await asyncio.gather(*receiver.tasks, return_exceptions=True)

        now = datetime.now(UTC)
        outcomes = await demo_dossiers.run(clients, now, f"{now:%y%m%d}")  # type: ignore[arg-type]
        stats_report, verification = await _statistics(app, datetime.now(UTC))
    elapsed = time.monotonic() - started
    rows = [
        (label, client.agency, r["agency"], directory.agencies[r["agency"]].mode.value,
         r["state"], _ms(view["accepted_at"], r.get("delivered_at")),
         _ms(view["accepted_at"], r.get("read_at")))
        for (label, client, _), view in zip(sent, views, strict=True)
        for r in view["recipients"]
    ]
    _print_table(rows, directory)
    messages_ok = all(row[4] == _goal(directory, row[2]) for row in rows)
    answered_codes = sorted(i["envelope"]["body"]["code"] for i in from_hub)
    report_view = views[1]
    furthest = {r["agency"]: r.get("status", {}).get("code") for r in report_view["recipients"]}
    hub_ok = (answered_codes == sorted(c.value for c, _, _ in _VPCP_ANSWERS)
              and furthest.get(VPCP) == StatusCode.ASSIGNED.value
              and vpcp.signatures == ["valid"])
    amqp_ok = amqp_problem is None and amqp_got == [directive["id"]]
    sys.stdout.write(
        f"\n{len(sent)} messages, {len(rows)} deliveries: "
        f"{sum(r[4] in ('delivered', 'read') for r in rows)} delivered, "
        f"{sum(r[4] == 'read' for r in rows)} read; push endpoint absorbed "
        f"{receiver.repeats} repeat(s)\n"
        f"central hub: Văn phòng Chính phủ got the edXML report (gateway signature: "
        f"{', '.join(vpcp.signatures) or 'none'}) and its statuses "
        f"{', '.join(answered_codes) or 'none'} came back to Phong Điền; the report now shows "
        f"{furthest.get(VPCP) or 'no status'} for the Government Office\n"
        f"AMQP: Sở KH&ĐT consumed {len(amqp_got)} message(s) from its own queue as its own "
        f"RabbitMQ user{'' if amqp_problem is None else ': ' + amqp_problem}\n\n"
    )
    _print_dossiers(outcomes)
    _print_stats(stats_report, directory)
    dossiers_ok = all(o.ok for o in outcomes)
    sys.stdout.write(
        f"stats verify: {verification}\n{elapsed:.1f} s\n"
    )
    checks = {"messages": messages_ok, "hub": hub_ok, "amqp": amqp_ok,
              "dossiers": dossiers_ok, "statistics": verification.startswith("OK")}
    failed = [name for name, ok in checks.items() if not ok]
    sys.stdout.write("OK: every message delivered and read, every dossier where it should be\n"
                     if not failed else f"NOT OK: {', '.join(failed)}\n")
    return 0 if not failed else 1


def _goal(directory: Directory, agency: str) -> str:
    """Agencies that acknowledge through the API end ``read``; the hub and AMQP agencies end
    ``delivered`` (they acknowledge to the hub or to RabbitMQ)."""
    mode = directory.agencies[agency].mode
    return "delivered" if mode in {DeliveryMode.HUB, DeliveryMode.AMQP} else "read"


async def _statistics(app: web.Application, now: datetime) -> tuple[Any, str]:
    # Vietnam dates, up to and including today: on the 1st (or just after midnight in Hà Nội
    # while UTC is still on the day before) the demo's own dossiers are in today's month.
    today = stats.local_day(now)
    window = stats.window("month", today - timedelta(days=31), today + timedelta(days=1))
    calendar = app[CALENDAR]
    report = await stats_rows.served(app[STORE], window, calendar, now)
    check = await stats_rows.verify(app[STORE], window, calendar, now)
    return report, "\n".join(check.summary())


def _print_dossiers(outcomes: Sequence[demo_dossiers.Outcome]) -> None:
    header = ("dossier", "story", "phase", "timeliness", "held by (working days)")
    shown = [
        (o.code, o.story, o.view.get("phase", "?"), o.view.get("timeliness", "?"),
         " > ".join(f"{h['agency'][4:9]}({h['working_days']})" for h in o.view.get("holds", [])))
        for o in outcomes
    ]
    _table(header, shown)
    sys.stdout.write("\n")


def _print_stats(report: Any, directory: Directory) -> None:
    header = ("agency", "period", "recv", "sent", "acc", "ret", "early", "ontime", "late",
              "wdrawn", "prog", "overdue", "apology", "days/step")
    shown = [
        (f"{r['agency']} {directory.agencies[r['agency']].name[:22]}", r["period"],
         *(str(r[k]) for k in ("received", "handed_over", "accepted", "returned",
                               "completed_early", "completed_on_time", "completed_late",
                               "withdrawn", "in_progress_on_time", "in_progress_overdue",
                               "apologies")),
         "-" if r["avg_working_days_per_step"] is None else str(r["avg_working_days_per_step"]))
        for r in report.rows(None)
        if any(r[k] for k in ("received", "handed_over", "accepted", "returned",
                              "in_progress_on_time", "in_progress_overdue",
                              "completed_early", "completed_on_time", "completed_late",
                              "withdrawn"))
    ]
    sys.stdout.write("Thống kê hồ sơ (statistics, from the events):\n")
    _table(header, shown)


def _table(header: Sequence[str], shown: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *shown, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    sys.stdout.write(line.format(*header) + "\n")
    sys.stdout.write("  ".join("-" * w for w in widths) + "\n")
    for row in shown:
        sys.stdout.write(line.format(*row) + "\n")


async def _wait_all_done(
    pending: list[tuple[Client, str]], directory: Directory, timeout: float = 30.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        views = [await client.message(message_id) for client, message_id in pending]
        done = all(r["state"] == _goal(directory, r["agency"])
                   for v in views for r in v["recipients"])
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
    _table(header, shown)
