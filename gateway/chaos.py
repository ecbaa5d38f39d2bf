"""``lienthong chaos``: prove, under faults, that nothing accepted is lost or takes effect twice.

The run, start to end (everything it starts, it stops; everything it creates, it removes):

1. its own RabbitMQ node beside any other: its own node name, AMQP and distribution ports and
   data folder, run as the ``rabbitmq`` user when started as root; it is killed with SIGKILL and
   restarted on the same data, so confirmed messages must survive in the quorum queues;
2. a fresh PostgreSQL database (``chaos_<random>``, dropped at the end), migrated once, shared by
   every gateway process (or, with ``--store sqlite``, one SQLite file);
3. the gateway as separate ``python -m gateway.cli serve`` processes, each with API, relay and
   workers: the API processes take the traffic, the worker processes only consume; a derived
   copy of the sample directory makes a few agencies push agencies whose endpoints are served by
   ``python -m gateway.chaos_peer``, which fails a share of requests (5xx, resets, answers too
   late to count although the document took effect) and slows others down;
4. N messages from several agencies at once over HTTP, each with its own Idempotency-Key; a
   request that fails (connection refused or reset because its API process was killed, a 5xx, a
   timeout) is sent again, same key and same bytes, to another API process until it gets 202;
   a share of accepted requests is sent again on purpose and must get the same id back;
5. meanwhile, on a schedule spread over the traffic: SIGKILL the broker and start it again,
   SIGKILL worker processes and API processes (each restarted, as a supervisor would); after
   each fault the run waits until every process answers ``/health/ready`` and every shard
   queue has its consumers back (a process that does not recover is a finding);
6. quiescence: no recipient ``pending`` in the store and nothing left in the delivery and retry
   queues, bounded by ``--settle-timeout``;
7. the reconciliation, from what the receivers actually got: the pull agencies' inboxes read
   through the API (paged), the push endpoints' ``/stats``. Receivers are keyed by message id
   *and* by the request's Idempotency-Key (carried in ``body.extra.chaos_key``), so two
   messages made from one request show as a duplicate effect even though their ids differ.

Every accepted message must have taken effect exactly once at each of its recipients, or be
``failed`` with a reason (dead-lettered); nothing may reach an agency it was not sent to; a
request that never got its 202 is either found by its Idempotency-Key (then it counts as
accepted) or left nothing behind anywhere. Exit 0 only when all of that holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import aio_pika
import aiohttp
import orjson
import sqlalchemy as sa
import yaml
from sqlalchemy.ext.asyncio import create_async_engine

from gateway import topology as topo
from gateway.directory import Directory, load_directory
from gateway.errors import GatewayError
from gateway.readiness import amqp_ready
from gateway.settings import DEFAULT_DIRECTORY, REPO_ROOT, Settings
from gateway.store import tables
from gateway.store.store import State, Store
from gateway.store.tables import messages, recipients

DEFAULT_PG_URL = os.environ.get(
    "LIENTHONG_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
NAMESPACE = "chaos"
PUSH_PREFERENCE = (  # provincial departments that become push agencies, in this order
    "000.00.12.H57", "000.00.10.H57", "000.00.09.H57", "000.00.08.H57", "000.00.06.H57",
    "000.00.05.H57", "000.00.04.H57", "000.00.03.H57",
)
SENDER_PREFERENCE = (  # the province, its districts, then departments and communes
    "000.00.00.H57", "000.00.31.H57", "000.00.32.H57", "000.00.33.H57", "000.00.34.H57",
    "000.00.35.H57", "000.00.01.H57", "000.00.02.H57", "000.21.31.H57", "000.21.35.H57",
    "000.00.00.G22", "000.00.00.G04",
)
MERGED = "000.25.34.H57"  # xã Phú Mỹ, merged: messages to it go to its successor
RABBITMQ_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")  # not the /usr/sbin wrapper

Progress = Callable[[str], None]


class ChaosError(RuntimeError):
    """The run could not be set up or carried out (not a finding about the gateway)."""


# -- options and report -----------------------------------------------------------------------
@dataclass
class ChaosOptions:
    messages: int = 20000
    agencies: int = 8  # sending agencies
    push_agencies: int = 3
    broker_kills: int = 3
    worker_kills: int = 10
    api_kills: int = 2
    api_processes: int = 2
    worker_processes: int = 1
    fail_share: float = 0.3  # push requests that fail (5xx, reset, late answer)
    slow_share: float = 0.05  # push requests answered slowly but in time
    reject_share: float = 0.001  # messages a push endpoint refuses for good (422)
    replay_share: float = 0.01  # accepted requests sent again on purpose
    two_recipient_share: float = 0.15
    push_share: float = 0.35  # deliveries that go to push agencies
    concurrency: int = 16  # requests in flight
    seed: int | None = None
    keep: bool = False
    store: str = "postgresql"  # or "sqlite"
    pg_url: str = DEFAULT_PG_URL
    request_deadline: float = 300.0  # per request: give up retrying after this
    settle_timeout: float = 600.0
    recover_timeout: float = 30.0  # a process must be ready again within this after a fault
    work_dir: Path | None = None  # parent of the run's folder (default: the system temp dir)
    rabbitmq_server: Path | None = None
    progress: Progress | None = None


@dataclass
class ChaosReport:
    requests: int = 0
    accepted: int = 0  # got a 202
    found_by_key: int = 0  # no 202, but the store has it under its Idempotency-Key
    never_accepted: int = 0
    retried_requests: int = 0  # needed more than one attempt
    replays_checked: int = 0
    deliveries_expected: int = 0
    delivered: int = 0  # effects at the receivers
    repeats_absorbed: int = 0  # by the push endpoints' deduplication
    duplicate_effects: int = 0
    dead_lettered: int = 0  # recipient failed with a reason, nothing took effect
    dead_lettered_without_reason: int = 0
    failed_but_received: int = 0  # the store says failed, the receiver has it (once)
    dead_letter_queue: int = 0  # messages in the DLQ at the end (informational)
    dead_letter_records: int | None = None  # rows of the store's dead_letters table, if any
    audit_events: int = 0  # events checked in the audit hash chain
    audit_break: str | None = None  # where the chain broke, if it did
    lost: int = 0
    stray_effects: int = 0  # effects at an agency the message was not sent to
    left_behind: int = 0  # effects of a request that was never accepted
    idempotency_mismatches: int = 0  # one key answered with two ids
    faults: Counter[str] = field(default_factory=Counter)
    push_faults: dict[str, int] = field(default_factory=dict)
    process_crashes: int = 0  # a gateway process that exited without being killed
    unrecovered: int = 0  # not ready again within recover_timeout after a fault
    wall_time: float = 0.0
    drive_time: float = 0.0
    settle_time: float = 0.0
    seed: int = 0
    findings: list[str] = field(default_factory=list)

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.duplicate_effects == 0
            and self.stray_effects == 0
            and self.left_behind == 0
            and self.dead_lettered_without_reason == 0
            and self.idempotency_mismatches == 0
            and self.audit_break is None
            and self.unrecovered == 0
            and self.process_crashes == 0
            and self.accepted + self.found_by_key > 0
        )

    def render(self) -> str:
        push = ", ".join(f"{k} {v}" for k, v in sorted(self.push_faults.items())) or "none"
        lines = [
            f"requests            {self.requests}",
            f"accepted            {self.accepted + self.found_by_key} ({self.accepted} got 202, "
            f"{self.found_by_key} found by Idempotency-Key; {self.never_accepted} never "
            f"accepted; {self.retried_requests} needed a retry; {self.replays_checked} "
            "replayed on purpose)",
            f"deliveries expected {self.deliveries_expected}",
            f"delivered (effects) {self.delivered}",
            f"repeats absorbed    {self.repeats_absorbed}",
            f"duplicate effects   {self.duplicate_effects}",
            f"dead-lettered       {self.dead_lettered} "
            f"({self.dead_lettered_without_reason} without a reason; "
            f"{self.dead_letter_queue} in the dead-letter queue"
            + ("" if self.dead_letter_records is None
               else f", {self.dead_letter_records} dead-letter records in the store") + ")",
            f"lost                {self.lost}",
            f"stray / left behind {self.stray_effects} / {self.left_behind}",
            f"idempotency errors  {self.idempotency_mismatches}",
            f"audit chain         {self.audit_events} events, "
            + ("intact" if self.audit_break is None else f"BROKEN: {self.audit_break}"),
            f"faults injected     {self.faults_injected} (broker kills "
            f"{self.faults['broker_kill']}, worker kills {self.faults['worker_kill']}, "
            f"API kills {self.faults['api_kill']}); push endpoint faults: {push}",
            f"processes           {self.process_crashes} crashed by themselves, "
            f"{self.unrecovered} did not recover",
            f"wall time           {self.wall_time:.1f} s (sending {self.drive_time:.1f} s, "
            f"settling {self.settle_time:.1f} s)",
        ]
        if self.failed_but_received:
            lines.append(f"failed but received {self.failed_but_received}")
        for finding in self.findings[:40]:
            lines.append(f"  ! {finding}")
        if len(self.findings) > 40:
            lines.append(f"  ! ... and {len(self.findings) - 40} more")
        lines.append(f"result              {'OK' if self.ok else 'FAILED'} (seed {self.seed})")
        return "\n".join(lines) + "\n"


# -- small helpers ----------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _proc_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (command name, parent pid, session id), from /proc."""
    table: dict[int, tuple[str, int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp session ...": comm may contain spaces and parentheses
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(entry)] = (comm, int(fields[1]), int(fields[3]))
    return table


def _session_tree(session: int) -> list[tuple[int, str]]:
    """Every process of a session and all their descendants (erl_child_setup leaves the
    session), as (pid, command name)."""
    table = _proc_table()
    found = {pid for pid, (_, _, sid) in table.items() if sid == session}
    grew = True
    while grew:
        more = {pid for pid, (_, ppid, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return [(pid, table[pid][0]) for pid in sorted(found)]


def _open_log(path: Path) -> BinaryIO:
    return open(path, "ab")


def _kill(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


# -- the private RabbitMQ node ----------------------------------------------------------------
class RabbitNode:
    """A RabbitMQ node of the run's own: killed with SIGKILL, started again on the same data."""

    def __init__(self, folder: Path, script: Path, progress: Progress) -> None:
        self.folder = folder
        self.script = script
        self.progress = progress
        self.name = f"chaos{secrets.token_hex(4)}"
        self.node = f"{self.name}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.process: asyncio.subprocess.Process | None = None
        self.log_path = folder / "console.log"
        self._as_rabbitmq = os.geteuid() == 0 and _has_user("rabbitmq")

    def prepare(self) -> None:
        for sub in ("mnesia", "log", "home"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
            "log.file.level = warning\n",
            encoding="utf-8",
        )
        (self.folder / "enabled_plugins").write_text("[].\n", encoding="utf-8")
        (self.folder / "rabbitmq-env.conf").write_text("", encoding="utf-8")  # not /etc's
        if self._as_rabbitmq:
            user = pwd.getpwnam("rabbitmq")
            for root, dirs, files in os.walk(self.folder):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(name, user.pw_uid, user.pw_gid)

    def _env(self) -> dict[str, str]:
        path = os.environ.get("PATH", "")
        return {
            "PATH": f"{path}:/usr/sbin:/usr/bin:/sbin:/bin".lstrip(":"),
            "HOME": str(self.folder / "home"),  # its own Erlang cookie
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq"),
            "RABBITMQ_CONF_ENV_FILE": str(self.folder / "rabbitmq-env.conf"),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.folder / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    async def start(self, timeout: float = 90.0) -> None:
        await self._wait_unregistered()
        prefix: list[str] = []
        if self._as_rabbitmq:
            if shutil.which("setpriv"):
                prefix = ["setpriv", "--reuid=rabbitmq", "--regid=rabbitmq", "--init-groups",
                          "--"]
            elif shutil.which("runuser"):
                prefix = ["runuser", "-u", "rabbitmq", "--"]
        with _open_log(self.log_path) as log:
            self.process = await asyncio.create_subprocess_exec(
                *prefix, str(self.script), env=self._env(), cwd=self.folder,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            reason = await amqp_ready(self.url)
            if reason is None:
                return
            if self.process.returncode is not None or time.monotonic() > deadline:
                logs = _tail(self.log_path) or _tail(self.folder / "log" / f"{self.node}.log")
                raise ChaosError(f"RabbitMQ node {self.node} did not start: {reason}\n{logs}")
            await asyncio.sleep(0.5)

    async def kill(self) -> None:
        """SIGKILL the VM (the fault); its start script then ends by itself, having reaped
        it; then SIGKILL whatever of the node is left (erl_child_setup and its ports)."""
        process = self.process
        if process is None:
            return
        tree = _session_tree(process.pid)
        for pid, name in tree:
            if name == "beam.smp":
                _kill(pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 5)
        for pid, _ in tree:
            _kill(pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            self.progress(f"warning: the node's start script {process.pid} did not exit")
        self.process = None

    async def _wait_unregistered(self, timeout: float = 15.0) -> None:
        """A killed node's name leaves epmd when its socket closes; wait for that, so that
        the restart is not refused as 'name in use'."""
        epmd = shutil.which("epmd")
        if epmd is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = await asyncio.create_subprocess_exec(
                epmd, "-names", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            out, _ = await proc.communicate()
            if f"name {self.name} at port" not in out.decode(errors="replace"):
                return
            await asyncio.sleep(0.3)

    async def queue_counts(self, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        """name -> (ready messages, consumers), by passive declares."""
        connection = await aio_pika.connect(self.url, timeout=10)
        try:
            channel = await connection.channel()
            result: dict[str, tuple[int, int]] = {}
            for name in names:
                queue = await channel.declare_queue(name, passive=True)
                ok = queue.declaration_result
                result[name] = (int(ok.message_count or 0), int(ok.consumer_count or 0))
            return result
        finally:
            await connection.close()


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


# -- gateway processes ------------------------------------------------------------------------
class GatewayProcess:
    """One ``lienthong serve`` process, restarted whenever it exits (as systemd would)."""

    def __init__(self, name: str, role: str, env: dict[str, str], log_path: Path,
                 progress: Progress) -> None:
        self.name = name
        self.role = role  # "api" (takes traffic) or "worker" (only consumes)
        self.env = env
        self.port = int(env["LIENTHONG_HTTP_PORT"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.progress = progress
        self.process: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.generation = 0
        self.crashes: list[str] = []
        self.failed_starts = 0
        self._kill_delay: float | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self, session: aiohttp.ClientSession) -> None:
        self._task = asyncio.create_task(self._supervise(session), name=f"keep-{self.name}")

    async def _supervise(self, session: aiohttp.ClientSession) -> None:
        while not self._stopping:
            with _open_log(self.log_path) as log:
                log.write(f"--- start {self.generation + 1} at {time.time():.3f}\n".encode())
                log.flush()
                self.process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "gateway.cli", "serve", env=self.env, cwd=REPO_ROOT,
                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                    start_new_session=True,
                )
            self.generation += 1
            watcher = asyncio.create_task(self._until_ready(session))
            code = await self.process.wait()
            was_ready = self.ready.is_set()
            self.ready.clear()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if self._stopping:
                return
            delay, self._kill_delay = self._kill_delay, None
            if delay is not None:  # killed by the run: come back after the outage
                await asyncio.sleep(delay)
                continue
            if was_ready:
                self.crashes.append(
                    f"{self.name} exited with {code} without being killed:\n"
                    f"{_tail(self.log_path, 8)}"
                )
                self.progress(f"! {self.name} exited by itself with {code}")
            else:
                self.failed_starts += 1
            await asyncio.sleep(1.0)

    async def _until_ready(self, session: aiohttp.ClientSession) -> None:
        while True:
            if await self.healthy(session):
                self.ready.set()
                return
            await asyncio.sleep(0.2)

    async def healthy(self, session: aiohttp.ClientSession) -> bool:
        try:
            async with session.get(f"{self.base}/health/ready",
                                   timeout=aiohttp.ClientTimeout(total=5)) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def kill(self, restart_after: float) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        self._kill_delay = restart_after
        self.ready.clear()
        _kill(process.pid)

    async def stop(self) -> None:
        self._stopping = True
        process = self.process
        if process is not None and process.returncode is None:
            _kill(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                _kill(process.pid)
                await process.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- the messages -----------------------------------------------------------------------------
@dataclass
class Sent:
    index: int
    key: str
    sender: str
    addressed: tuple[str, ...]
    body: bytes
    message_id: str | None = None
    recipients: tuple[str, ...] = ()
    attempts: int = 0
    errors: list[str] = field(default_factory=list)


def _plan_messages(rng: random.Random, options: ChaosOptions, run: str, senders: Sequence[str],
                   push: Sequence[str], pull: Sequence[str]) -> list[Sent]:
    planned: list[Sent] = []
    for index in range(options.messages):
        sender = senders[index % len(senders)]
        count = 2 if rng.random() < options.two_recipient_share else 1
        chosen: list[str] = []
        while len(chosen) < count:
            pool = push if rng.random() < options.push_share else pull
            candidate = rng.choice(pool)
            if rng.random() < 0.01:
                candidate = MERGED  # addressed to a merged commune: goes to its successor
            if candidate != sender and candidate not in chosen:
                chosen.append(candidate)
        key = f"chaos-{run}-{index:06d}"
        envelope = {
            "kind": "document",
            "header": {"sender": sender, "to": [{"agency": a} for a in chosen],
                       "priority": rng.choice(("normal", "normal", "urgent"))},
            "body": {
                "number": str(index + 1),
                "notation": "CV-CHAOS",
                "type": {"code": "CV", "name": "Công văn"},
                "subject": f"Công văn kiểm thử độ tin cậy số {index + 1}",
                "promulgation": {"place": "Thừa Thiên Huế", "date": "2026-11-20"},
                "signer": {"name": "Nguyễn Văn A", "position": "Chánh Văn phòng"},
                "extra": {"chaos_key": key, "chaos_run": run},
            },
        }
        planned.append(Sent(index, key, sender, tuple(chosen), orjson.dumps(envelope)))
    return planned


def _derive_directory(folder: Path, push: Sequence[str], peer_base: str) -> Path:
    data = yaml.safe_load(DEFAULT_DIRECTORY.read_text(encoding="utf-8"))
    for entry in data["agencies"]:
        signature = entry.get("signature") or {}
        if signature.get("certificates"):  # relative to the sample's folder, not the copy's
            signature["certificates"] = [
                str(DEFAULT_DIRECTORY.parent / c) for c in signature["certificates"]
            ]
        if entry["code"] in push:
            entry["delivery"] = {"mode": "push", "endpoint": f"{peer_base}/receive/{entry['code']}"}
        elif entry.get("delivery", {}).get("mode") in {"push", "hub", "amqp", "portal"}:
            # The chaos run plays push endpoints only; every other kind of agency reads its
            # inbox, so that its messages are checked rather than dead-lettered for want of
            # a hub, an AMQP consumer or a portal.
            entry["delivery"] = {"mode": "pull"}
    path = folder / "directory.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


# -- the run ----------------------------------------------------------------------------------
class ChaosRun:
    def __init__(self, options: ChaosOptions) -> None:
        self.options = options
        self.progress: Progress = options.progress or _stderr_progress
        seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, no secret
        self.run_id = secrets.token_hex(3)
        self.report = ChaosReport(seed=seed)
        self.folder = Path(tempfile.mkdtemp(prefix="lienthong-chaos-", dir=options.work_dir))
        self.folder.chmod(0o755)  # the node's folder inside is the rabbitmq user's
        self.node: RabbitNode | None = None
        self.db_name: str | None = None
        self.db_url = ""
        self.peer: asyncio.subprocess.Process | None = None
        self.peer_base = ""
        self.processes: list[GatewayProcess] = []
        self.settings: Settings | None = None
        self.directory: Directory | None = None
        self.tokens: dict[str, str] = {}
        self.sent: list[Sent] = []
        self.accepted_count = 0
        self.started_count = 0  # requests taken up by the senders
        self.finished_count = 0  # requests accepted or given up
        self.next_fault_at = float("inf")  # the traffic waits for the fault planned here
        self.drive_done = asyncio.Event()
        self.faults_done = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None

    # -- set-up -------------------------------------------------------------------------------
    async def setup(self) -> None:
        opts = self.options
        self.progress(f"chaos run {self.run_id} (seed {self.seed}) in {self.folder}")
        script = opts.rabbitmq_server or _find_rabbitmq_script()
        self.node = RabbitNode(self.folder / "rabbitmq", script, self.progress)
        self.node.prepare()
        started = time.monotonic()
        await self.node.start()
        self.progress(f"RabbitMQ node {self.node.node} on port {self.node.port} "
                      f"({time.monotonic() - started:.1f} s)")
        await self._create_database()

        peer_port = _free_port()
        self.peer_base = f"http://127.0.0.1:{peer_port}"
        base = load_directory(DEFAULT_DIRECTORY, allow_insecure_push=True)
        active = [a.code for a in base.agencies.values() if a.active]
        push = [c for c in PUSH_PREFERENCE if c in active][: opts.push_agencies]
        senders = [c for c in SENDER_PREFERENCE if c in active and c not in push]
        senders += [c for c in active if c not in senders and c not in push]
        senders = senders[: opts.agencies]
        if not push or len(senders) < 1:
            raise ChaosError("need at least one push agency and one sending agency")
        directory_path = _derive_directory(self.folder, push, self.peer_base)
        self.directory = load_directory(directory_path, allow_insecure_push=True)
        pull = [c for c in active if c not in push]
        self.sent = _plan_messages(self.rng, opts, self.run_id, senders, push, pull)

        await self._start_peer(peer_port)
        env = self._gateway_env(directory_path)
        self.settings = Settings.from_env(env)  # fails here, with the variable, if wrong
        async with Store.open(self.db_url, migrate_schema=True) as store:
            for code in active:
                self.tokens[code] = (await store.issue_credential(code, "chaos"))[1]
        self.session = aiohttp.ClientSession()
        roles = ["api"] * opts.api_processes + ["worker"] * opts.worker_processes
        counts: Counter[str] = Counter()
        for role in roles:
            name = f"{role}{counts[role]}"
            counts[role] += 1
            penv = env | {
                "LIENTHONG_HTTP_PORT": str(_free_port()),
                "LIENTHONG_DATA_DIR": str(self.folder / f"data-{name}"),
            }
            self.processes.append(
                GatewayProcess(name, role, penv, self.folder / f"{name}.log", self.progress)
            )
        for proc in self.processes:
            proc.start(self.session)
        await self._all_ready("start-up")
        self.progress(
            f"{len(self.processes)} gateway processes ({opts.api_processes} API, "
            f"{opts.worker_processes} worker), push agencies {', '.join(push)} at "
            f"{self.peer_base}, {len(senders)} senders, store {opts.store}"
        )

    async def _create_database(self) -> None:
        if self.options.store == "sqlite":
            self.db_url = f"sqlite+aiosqlite:///{self.folder / 'store.db'}"
            return
        admin = self.options.pg_url
        name = f"chaos_{secrets.token_hex(5)}"
        engine = create_async_engine(admin, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            raise ChaosError(f"cannot create a database at {admin.split('@')[-1]}: {exc}"
                             ) from exc
        finally:
            await engine.dispose()
        self.db_name = name
        self.db_url = admin.rsplit("/", 1)[0] + f"/{name}"

    async def _drop_database(self) -> None:
        if self.db_name is None:
            return
        engine = create_async_engine(self.options.pg_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.db_name}" '
                                           "WITH (FORCE)"))
        finally:
            await engine.dispose()

    async def _start_peer(self, port: int) -> None:
        opts = self.options
        with _open_log(self.folder / "peer.log") as log:
            self.peer = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.chaos_peer", "--port", str(port),
                "--fail-share", str(opts.fail_share), "--slow-share", str(opts.slow_share),
                "--reject-share", str(opts.reject_share), "--late-seconds", "2.0",
                "--slow-seconds", "0.4", "--seed", str(self.seed),
                cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.peer_base}/stats") as response:
                        if response.status == 200:
                            return
                if self.peer.returncode is not None:
                    break
                await asyncio.sleep(0.1)
        raise ChaosError(f"the push endpoint did not start:\n{_tail(self.folder / 'peer.log')}")

    def _gateway_env(self, directory_path: Path) -> dict[str, str]:
        assert self.node is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")}
        values = {
            "AMQP_URL": self.node.url,
            "DATABASE_URL": self.db_url,
            "DATA_DIR": str(self.folder / "data"),
            "DIRECTORY": str(directory_path),
            "HTTP_PORT": "0",
            "NAMESPACE": NAMESPACE,
            "ALLOW_INSECURE_PUSH": "true",
            "SHARDS": "4",
            "PREFETCH": "4",  # per shard consumer: 16 deliveries in flight per process
            "RETRY_DELAYS": "0.5s,1s,2s",
            "MAX_ATTEMPTS": "12",  # a 30% failing endpoint fails 12 times in 5e-7 of cases
            "PUSH_TIMEOUT": "1s",
            "RELAY_INTERVAL": "1s",
            "RELAY_GRACE": "2s",
            "DRAIN_TIMEOUT": "5s",
            "LOG_LEVEL": "warning",
            "LOG_FORMAT": "json",
            "MIGRATE_ON_START": "false",  # migrated once by the run, before any process
            # A breaker that opens after a few failures in a row would hold a 30% failing
            # endpoint shut for most of the run; make it short, as the run is short.
            "BREAKER_FAILURES": "8",
            "BREAKER_COOLDOWN": "1s",
            "BREAKER_MAX_COOLDOWN": "4s",
        }
        known = {f.name.upper() for f in dataclasses.fields(Settings)} | {"DIRECTORY"}
        for name, value in values.items():
            if name in known:  # settings this version of the gateway does not have: skip
                env[f"LIENTHONG_{name}"] = value
        return env

    async def _all_ready(self, why: str) -> None:
        """Every process answers /health/ready and every shard queue has all its consumers;
        a process that does not get there in time is a finding, and is restarted."""
        assert self.session is not None
        deadline = time.monotonic() + self.options.recover_timeout
        good = 0
        while True:
            waiting, problem = await self._readiness_problem()
            good = 0 if problem else good + 1
            if good >= 2:  # twice, a second apart: not a passing glimpse
                return
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        self.report.unrecovered += 1
        self.report.findings.append(
            f"after {why}: {problem} {self.options.recover_timeout:.0f} s later"
        )
        self.progress(f"! after {why}: {problem}; restarting them")
        names = set(waiting) or {p.name for p in self.processes}
        for proc in self.processes:
            if proc.name in names:
                proc.kill(restart_after=0.5)
        await asyncio.sleep(1.0)
        deadline = time.monotonic() + self.options.recover_timeout
        while time.monotonic() < deadline:
            _, problem = await self._readiness_problem()
            if not problem:
                return
            await asyncio.sleep(0.5)
        raise ChaosError(f"gateway processes did not come back after {why}: {problem}")

    async def _readiness_problem(self) -> tuple[list[str], str]:
        """(processes not ready, what is wrong), or ([], "") when all is well."""
        assert self.session is not None and self.node is not None and self.settings is not None
        waiting = [p.name for p in self.processes if not await p.healthy(self.session)]
        if waiting:
            return waiting, f"not ready: {', '.join(waiting)}"
        shard_queues = [topo.build(self.settings).shard_queue(k)
                        for k in range(self.settings.shards)]
        try:
            counts = await self.node.queue_counts(shard_queues)
        except Exception as exc:  # the node is still starting, say
            return [], f"queues not readable: {exc.__class__.__name__}: {exc}"
        short = {q: c for q, (_, c) in counts.items() if c < len(self.processes)}
        if short:
            return [], (f"shard queues without their {len(self.processes)} consumers "
                        f"(consumers: {short})")
        return [], ""

    # -- traffic ------------------------------------------------------------------------------
    async def drive(self) -> None:
        queue: asyncio.Queue[Sent] = asyncio.Queue()
        for item in self.sent:
            queue.put_nowait(item)
        apis = [p for p in self.processes if p.role == "api"] or self.processes
        connector = aiohttp.TCPConnector(limit=self.options.concurrency * 2)
        async with aiohttp.ClientSession(connector=connector) as session:
            lead = max(4 * self.options.concurrency, int(0.03 * len(self.sent)))

            async def sender() -> None:
                while not queue.empty():
                    # The traffic does not run away from the fault plan: it may get a little
                    # past the place of the next fault, then waits for that fault to start.
                    if self.started_count >= self.next_fault_at + lead:
                        await asyncio.sleep(0.05)
                        continue
                    item = queue.get_nowait()
                    self.started_count += 1
                    try:
                        await self._send(session, apis, item)
                    finally:
                        self.finished_count += 1

            ticker = asyncio.create_task(self._ticker())
            try:
                await asyncio.gather(*(sender() for _ in range(self.options.concurrency)))
            finally:
                ticker.cancel()
        self.drive_done.set()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(15)
            self.progress(f"  sent: {self.accepted_count}/{len(self.sent)} accepted")

    async def _send(self, session: aiohttp.ClientSession, apis: list[GatewayProcess],
                    item: Sent) -> None:
        deadline = time.monotonic() + self.options.request_deadline
        headers = {"Authorization": f"Bearer {self.tokens[item.sender]}",
                   "Idempotency-Key": item.key, "Content-Type": "application/json"}
        target = item.index % len(apis)
        backoff = 0.2
        while time.monotonic() < deadline:
            item.attempts += 1
            api = apis[target]
            status, body = await _post(session, f"{api.base}/api/v1/messages", item.body,
                                       headers)
            if status == 202 and isinstance(body, dict):
                item.message_id = str(body["id"])
                item.recipients = tuple(sorted(body["recipients"]))
                self.accepted_count += 1
                if self.rng.random() < self.options.replay_share:
                    await self._replay(session, apis[(target + 1) % len(apis)], item, headers)
                return
            item.errors.append(f"{api.name}: {status} {str(body)[:200]}")
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                self.report.findings.append(
                    f"request {item.key} refused with {status}: {str(body)[:300]}"
                )
                return  # a refusal is an answer: sending it again would not change it
            target = (target + 1) % len(apis)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _replay(self, session: aiohttp.ClientSession, api: GatewayProcess, item: Sent,
                      headers: dict[str, str]) -> None:
        """The same request again (a client that lost the answer): the same id must come back.
        Retried, like any request, while its API process is down."""
        for _ in range(60):
            status, body = await _post(session, f"{api.base}/api/v1/messages", item.body,
                                       headers)
            if status == 202 and isinstance(body, dict):
                self.report.replays_checked += 1
                if str(body["id"]) != item.message_id:
                    self.report.idempotency_mismatches += 1
                    self.report.findings.append(
                        f"{item.key} answered {item.message_id} first and {body['id']} again"
                    )
                return
            if status is not None and 400 <= status < 500:
                self.report.idempotency_mismatches += 1
                self.report.findings.append(f"replay of {item.key} refused: {status} {body}")
                return
            await asyncio.sleep(0.5)

    # -- faults -------------------------------------------------------------------------------
    def fault_plan(self) -> list[tuple[float, str]]:
        plan: list[tuple[float, str]] = []
        for kind, count in (("broker_kill", self.options.broker_kills),
                            ("worker_kill", self.options.worker_kills),
                            ("api_kill", self.options.api_kills)):
            for j in range(count):
                at = 0.05 + 0.8 * (j + self.rng.uniform(0.2, 0.8)) / count
                plan.append((at, kind))
        return sorted(plan)

    async def inject_faults(self) -> None:
        try:
            plan = self.fault_plan()
            thresholds = [at * len(self.sent) for at, _ in plan] + [float("inf")]
            self.next_fault_at = thresholds[0]
            for index, (_, kind) in enumerate(plan):
                while True:
                    if self.drive_done.is_set() or self.finished_count >= thresholds[index]:
                        break
                    await asyncio.sleep(0.1)
                # Traffic goes on during this fault, up to a little past the next one's place.
                self.next_fault_at = thresholds[index + 1]
                if self.drive_done.is_set():
                    await asyncio.sleep(1.0)  # the rest of the plan, during the deliveries
                await self._inject(kind)
        finally:
            self.next_fault_at = float("inf")
            self.faults_done.set()

    async def _inject(self, kind: str) -> None:
        assert self.node is not None
        started = time.monotonic()
        if kind == "broker_kill":
            await self.node.kill()
            self.report.faults[kind] += 1
            await asyncio.sleep(self.rng.uniform(1.0, 3.0))
            await self.node.start()
        else:
            role = "api" if kind == "api_kill" else "worker"
            candidates = [p for p in self.processes if p.role == role] or self.processes
            victim = candidates[self.report.faults[kind] % len(candidates)]
            victim.kill(restart_after=self.rng.uniform(0.3, 2.0))
            self.report.faults[kind] += 1
        await self._all_ready(kind.replace("_", " "))
        self.progress(f"  {kind.replace('_', ' ')} #{self.report.faults[kind]} at "
                      f"{self.accepted_count} accepted; back in "
                      f"{time.monotonic() - started:.1f} s")

    # -- quiescence ---------------------------------------------------------------------------
    async def settle(self) -> None:
        assert self.settings is not None and self.node is not None
        deadline = time.monotonic() + self.options.settle_timeout
        last_report = 0.0
        async with Store.open(self.db_url, migrate_schema=False) as store:
            while True:
                counts = await store.counts()
                pending = counts.get(State.PENDING, 0)
                if pending == 0:
                    break
                if time.monotonic() > deadline:
                    self.report.findings.append(
                        f"still {pending} recipients pending after "
                        f"{self.options.settle_timeout:.0f} s of settling"
                    )
                    return
                if time.monotonic() - last_report > 15:
                    last_report = time.monotonic()
                    self.progress(f"  settling: {dict(sorted(counts.items()))}")
                await asyncio.sleep(1.0)
        # Nothing left in the delivery and retry queues: repeats still in flight arrive now.
        topology = topo.build(self.settings)
        moving = [q.name for q in topology.queues
                  if q.name not in (topology.dead_queue, topology.parking_queue)]
        calm = 0
        while calm < 3 and time.monotonic() < deadline:
            try:
                counts2 = await self.node.queue_counts(moving)
            except Exception:  # a passive declare can fail while the node settles
                counts2 = {"?": (1, 0)}
            calm = calm + 1 if all(n == 0 for n, _ in counts2.values()) else 0
            await asyncio.sleep(1.0)
        with contextlib.suppress(Exception):
            dead = await self.node.queue_counts([topology.dead_queue])
            self.report.dead_letter_queue = dead[topology.dead_queue][0]

    # -- reconciliation -----------------------------------------------------------------------
    async def reconcile(self) -> None:
        assert self.session is not None and self.directory is not None
        report = self.report
        # What the receivers got: (agency, chaos key) -> message id -> times.
        effects: dict[tuple[str, str | None], Counter[str]] = {}
        async with self.session.get(f"{self.peer_base}/stats") as response:
            stats: dict[str, Any] = orjson.loads(await response.read())
        report.repeats_absorbed = int(stats["repeats"])
        report.push_faults = {str(k): int(v) for k, v in stats["injected"].items()}
        for agency, got in stats["effects"].items():
            for message_id, key in got.items():
                effects.setdefault((agency, key), Counter())[message_id] += 1
        apis = [p for p in self.processes if p.role == "api"] or self.processes
        pull = [a.code for a in self.directory.agencies.values()
                if a.active and a.mode.value == "pull"]
        for agency in pull:
            for message_id, key in await self._inbox(apis[0], agency):
                effects.setdefault((agency, key), Counter())[message_id] += 1

        # What the store says.
        by_key: dict[tuple[str, str], str] = {}
        states: dict[tuple[str, str], tuple[str, str | None]] = {}
        rcpts: dict[str, list[str]] = {}
        async with Store.open(self.db_url, migrate_schema=False) as store:
            report.audit_events, broken = await store.verify_audit()
            if broken is not None:
                report.audit_break = (f"event {broken.event_id} ({broken.event}): "
                                      f"{broken.reason}")
        async with Store.open(self.db_url, migrate_schema=False) as store, store.read() as conn:
            for row in await conn.execute(
                sa.select(messages.c.id, messages.c.sender, messages.c.idempotency_key)
            ):
                by_key[(row.sender, row.idempotency_key or "")] = row.id
            for row in await conn.execute(
                sa.select(recipients.c.message_id, recipients.c.agency, recipients.c.state,
                          recipients.c.last_error)
            ):
                states[(row.message_id, row.agency)] = (row.state, row.last_error)
                rcpts.setdefault(row.message_id, []).append(row.agency)
            kept = getattr(tables, "dead_letters", None)  # the keeper's table, when there is one
            if isinstance(kept, sa.Table):
                report.dead_letter_records = int(
                    (await conn.execute(sa.select(sa.func.count()).select_from(kept))).scalar_one()
                )

        report.requests = len(self.sent)
        expected: set[tuple[str, str]] = set()  # (agency, key)
        known_keys = {item.key for item in self.sent}
        for item in self.sent:
            if item.attempts > 1:
                report.retried_requests += 1
            stored = by_key.get((item.sender, item.key))
            if item.message_id is not None:
                report.accepted += 1
                if stored != item.message_id:
                    report.idempotency_mismatches += 1
                    report.findings.append(
                        f"{item.key}: 202 said {item.message_id}, the store has {stored}"
                    )
            elif stored is not None:
                report.found_by_key += 1
                item.message_id = stored
            else:
                report.never_accepted += 1
                for (_, key), ids in effects.items():
                    if key == item.key:
                        report.left_behind += sum(ids.values())
                        report.findings.append(f"{item.key} never accepted, yet delivered")
                continue
            message_id = item.message_id
            agencies = sorted(rcpts.get(message_id, []))
            if item.recipients and tuple(agencies) != item.recipients:
                report.findings.append(
                    f"{item.key}: 202 named {item.recipients}, the store has {agencies}"
                )
            for agency in agencies:
                expected.add((agency, item.key))
                report.deliveries_expected += 1
                got = effects.get((agency, item.key), Counter())
                total = sum(got.values())
                state, error = states[(message_id, agency)]
                if got.get(message_id, 0) >= 1:
                    report.delivered += 1
                    if state == State.FAILED:
                        report.failed_but_received += 1
                    elif state == State.PENDING:
                        report.findings.append(
                            f"{message_id} reached {agency} but the store still says pending"
                        )
                if total > 1:
                    report.duplicate_effects += total - 1
                    report.findings.append(
                        f"{item.key} took effect {total} times at {agency}: {dict(got)}"
                    )
                if got.get(message_id, 0) == 0:
                    if state == State.FAILED:
                        report.dead_lettered += 1
                        if not error:
                            report.dead_lettered_without_reason += 1
                            report.findings.append(
                                f"{message_id} failed for {agency} without a reason")
                    else:
                        report.lost += 1
                        report.findings.append(
                            f"lost: {message_id} ({item.key}) for {agency}: the store says "
                            f"{state}, the receiver has nothing"
                            + (f" (attempts: {item.errors[-1:]})" if item.errors else "")
                        )
        sender_of = {item.key: item.sender for item in self.sent}
        for (agency, key), ids in effects.items():
            if (agency, key) not in expected and key in known_keys:
                if by_key.get((sender_of[key], key)) is None:
                    continue  # counted as left behind above
                report.stray_effects += sum(ids.values())
                report.findings.append(f"{key} reached {agency}, which it was not sent to")
            elif key not in known_keys:
                report.stray_effects += sum(ids.values())
                report.findings.append(f"unknown message(s) {dict(ids)} reached {agency}")
        ours = {(i.sender, i.key) for i in self.sent}
        extra = [k for k in by_key if k not in ours]
        if extra:
            report.findings.append(f"{len(extra)} messages in the store no request made")
            report.stray_effects += len(extra)

    async def _inbox(self, api: GatewayProcess, agency: str) -> list[tuple[str, str | None]]:
        assert self.session is not None
        found: list[tuple[str, str | None]] = []
        after = 0
        headers = {"Authorization": f"Bearer {self.tokens[agency]}"}
        while True:
            async with self.session.get(
                f"{api.base}/api/v1/inbox", params={"after": str(after), "limit": "500"},
                headers=headers,
            ) as response:
                if response.status != 200:
                    raise ChaosError(f"inbox of {agency}: HTTP {response.status}")
                page: dict[str, Any] = orjson.loads(await response.read())
            for entry in page["items"]:
                extra = entry["envelope"].get("body", {}).get("extra", {})
                key = extra.get("chaos_key")
                found.append((str(entry["message_id"]), key if isinstance(key, str) else None))
            if page["next_after"] is None:
                return found
            after = int(page["next_after"])

    # -- tear-down ----------------------------------------------------------------------------
    async def teardown(self) -> None:
        for proc in self.processes:
            try:
                await proc.stop()
            except Exception as exc:  # cleanup goes on whatever happened
                self.progress(f"warning: stopping {proc.name}: {exc!r}")
        for proc in self.processes:
            self.report.process_crashes += len(proc.crashes)
            self.report.findings.extend(proc.crashes)
        if self.peer is not None and self.peer.returncode is None:
            _kill(self.peer.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.peer.wait(), 10)
            except TimeoutError:
                _kill(self.peer.pid)
                await self.peer.wait()
        if self.session is not None:
            await self.session.close()
        if self.node is not None:
            try:
                await self.node.kill()
            except Exception as exc:
                self.progress(f"warning: stopping the RabbitMQ node: {exc!r}")
        try:
            await self._drop_database()
        except Exception as exc:
            self.progress(f"warning: dropping database {self.db_name}: {exc!r}")
        if self.options.keep:
            self.progress(f"kept {self.folder}" + (
                "" if self.db_name is None else " (the database was dropped)"))
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


async def _post(session: aiohttp.ClientSession, url: str, body: bytes,
                headers: dict[str, str]) -> tuple[int | None, Any]:
    """(status, decoded body) or (None, the error) for a request that got no answer."""
    try:
        async with session.post(url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=45)) as response:
            raw = await response.read()
            try:
                return response.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return response.status, raw[:200].decode(errors="replace")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return None, f"{exc.__class__.__name__}: {exc}"


def _find_rabbitmq_script() -> Path:
    if RABBITMQ_SCRIPT.exists():
        return RABBITMQ_SCRIPT
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise ChaosError("rabbitmq-server is not installed (scripts/test installs it as root)")
    return Path(found)


def _stderr_progress(line: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {line}\n")
    sys.stderr.flush()


async def run_chaos(options: ChaosOptions) -> ChaosReport:
    """The whole run; returns the figures (``report.ok`` says whether the promise held)."""
    for name in ("aiormq", "aio_pika"):  # their reconnect warnings are what we cause
        logging.getLogger(name).setLevel(logging.CRITICAL)
    run = ChaosRun(options)
    started = time.monotonic()
    try:
        await run.setup()
        started_drive = time.monotonic()
        faults = asyncio.create_task(run.inject_faults())
        try:
            await run.drive()
            run.report.drive_time = time.monotonic() - started_drive
            run.progress(f"sent: {run.accepted_count}/{len(run.sent)} accepted in "
                         f"{run.report.drive_time:.1f} s; faults so far "
                         f"{dict(run.report.faults)}")
            await faults
        finally:
            if not faults.done():
                faults.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await faults
        started_settle = time.monotonic()
        await run.settle()
        run.report.settle_time = time.monotonic() - started_settle
        run.progress(f"settled in {run.report.settle_time:.1f} s; reconciling")
        await run.reconcile()
    finally:
        await run.teardown()
        run.report.wall_time = time.monotonic() - started
    return run.report


def parser() -> argparse.ArgumentParser:
    defaults = ChaosOptions()
    p = argparse.ArgumentParser(
        prog="lienthong chaos",
        description="Start a private RabbitMQ node, a fresh database and the gateway as "
        "separate processes; send messages while killing the broker and the gateway "
        "processes and failing push endpoints; reconcile what the receivers got. "
        "Exit 0 only if nothing was lost and nothing took effect twice.",
    )
    p.add_argument("--messages", type=int, default=defaults.messages)
    p.add_argument("--agencies", type=int, default=defaults.agencies,
                   help="sending agencies")
    p.add_argument("--push-agencies", type=int, default=defaults.push_agencies)
    p.add_argument("--broker-kills", type=int, default=defaults.broker_kills)
    p.add_argument("--worker-kills", type=int, default=defaults.worker_kills)
    p.add_argument("--api-kills", type=int, default=defaults.api_kills)
    p.add_argument("--api-processes", type=int, default=defaults.api_processes)
    p.add_argument("--worker-processes", type=int, default=defaults.worker_processes)
    p.add_argument("--fail-share", type=float, default=defaults.fail_share,
                   help="share of push requests that fail (5xx, reset, late answer)")
    p.add_argument("--slow-share", type=float, default=defaults.slow_share)
    p.add_argument("--reject-share", type=float, default=defaults.reject_share,
                   help="share of messages a push endpoint refuses for good (422)")
    p.add_argument("--concurrency", type=int, default=defaults.concurrency)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--store", choices=["postgresql", "sqlite"], default=defaults.store)
    p.add_argument("--pg-url", default=defaults.pg_url,
                   help="an admin URL of the PostgreSQL that gets the run's own database")
    p.add_argument("--settle-timeout", type=float, default=defaults.settle_timeout)
    p.add_argument("--keep", action="store_true", help="keep the run's folder (logs, data)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.api_processes < 1 or args.messages < 1 or args.agencies < 1:
        sys.stderr.write("lienthong chaos: --messages, --agencies and --api-processes "
                         "must be at least 1\n")
        return 2
    if not 0 <= args.fail_share + args.slow_share <= 1 or not 0 <= args.reject_share <= 1:
        sys.stderr.write("lienthong chaos: --fail-share and --slow-share (together), and "
                         "--reject-share, are shares from 0 to 1\n")
        return 2
    options = ChaosOptions(
        messages=args.messages, agencies=args.agencies, push_agencies=args.push_agencies,
        broker_kills=args.broker_kills, worker_kills=args.worker_kills,
        api_kills=args.api_kills, api_processes=args.api_processes,
        worker_processes=args.worker_processes, fail_share=args.fail_share,
        slow_share=args.slow_share, reject_share=args.reject_share,
        concurrency=args.concurrency, seed=args.seed, store=args.store, pg_url=args.pg_url,
        settle_timeout=args.settle_timeout, keep=args.keep,
    )
    out: TextIO = sys.stdout
    try:
        report = asyncio.run(run_chaos(options))
    except ChaosError as exc:
        sys.stderr.write(f"lienthong chaos: {exc}\n")
        return 2
    except GatewayError as exc:  # e.g. a setting the gateway refused
        sys.stderr.write(f"lienthong chaos: {exc.detail}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    out.write(report.render())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
