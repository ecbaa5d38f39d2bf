"""``lienthong hub agencies`` as a user runs it, against the hub peer run as its own process
(``python -m deploy.peers.central_hub``), as docs/central-hub.md starts it; and the peer's
``--fail`` and ``--control`` options."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from adapters.central_hub import HubClient, HubTransport, signed_headers
from gateway.blobs import BlobStore, spool_package
from gateway.codecs import decode
from gateway.codecs.edxml import STREAM_LIMITS
from gateway.delivery import Delivery
from gateway.directory import Directory
from gateway.envelope import DocumentEnvelope
from gateway.settings import DEFAULT_DIRECTORY
from tests.conftest import HUE, document
from tests.e2e.test_cli import lienthong, one_error_line

GATEWAY, VPCP, BNV = "lienthong-h57", "vpcp", "bnv"
SECRETS = {GATEWAY: "gw-secret-7f3a9c", VPCP: "vpcp-secret-1b2c", BNV: "bnv-secret-9d8e"}
ROUTED = ["000.00.00.G22", "000.00.00.G04", "000.00.00.G05", "000.00.00.G07", "000.00.00.G13"]
STRANGER = "000.00.00.G99"  # at the hub, not in the directory

HubFactory = Callable[..., str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the hub peer exited at start-up"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the hub peer did not listen on {port}")


@pytest.fixture
def start_hub(tmp_path: Path) -> Iterator[HubFactory]:
    """Start ``python -m deploy.peers.central_hub`` serving these agencies (code -> system),
    with our system serving the directory; its URL. Stopped (terminate, by pid) at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(agencies: dict[str, str], *extra: str) -> str:
        port = free_port()
        args = [sys.executable, "-m", "deploy.peers.central_hub", "--port", str(port),
                "--serve-directory", f"{DEFAULT_DIRECTORY}={GATEWAY}", *extra]
        for system, secret in SECRETS.items():
            args += ["--system", f"{system}={secret}"]
        for code, system in agencies.items():
            args += ["--agency", f"{code}={system}"]
        with (tmp_path / f"hub-{port}.log").open("wb") as log:  # the child keeps its own fd
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        started.append(process)
        wait_listening(port, process)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def hub_agencies(url: str, data: Path, *args: str, secret: str = SECRETS[GATEWAY]
                 ) -> subprocess.CompletedProcess[str]:
    return lienthong("hub", "agencies", *args, data=data, LIENTHONG_HUB_URL=url,
                     LIENTHONG_HUB_SYSTEM_ID=GATEWAY, LIENTHONG_HUB_SECRET=secret)


def table(stdout: str) -> dict[str, list[str]]:
    """code -> the row's columns (directory mode, hub system, note...)."""
    rows = [line.split("  ") for line in stdout.splitlines()[1:]]
    return {row[0]: [c.strip() for c in row[1:] if c.strip()] for row in rows}


def test_every_routed_agency_known_to_the_hub_passes_the_check(
    start_hub: HubFactory, tmp_path: Path
) -> None:
    url = start_hub({**dict.fromkeys(ROUTED[:1], VPCP), **dict.fromkeys(ROUTED[1:], BNV),
                     STRANGER: BNV})
    result = hub_agencies(url, tmp_path, "--check")
    assert result.returncode == 0, result.stderr
    rows = table(result.stdout)
    assert set(rows) == {*ROUTED, STRANGER}  # ours (served by our system) are not listed
    assert rows["000.00.00.G22"][:3] == ["hub", VPCP, "ok"]
    assert all(rows[code][2] == "ok" for code in ROUTED)
    assert rows[STRANGER][:3] == ["-", BNV, "not in the directory"]
    assert "all known to the hub" in result.stderr
    assert f"not in the directory: {STRANGER}" in result.stderr


def test_check_names_the_agencies_the_hub_does_not_know(
    start_hub: HubFactory, tmp_path: Path
) -> None:
    url = start_hub({"000.00.00.G22": VPCP, "000.00.00.G04": BNV, "000.00.00.G13": BNV,
                     STRANGER: BNV})
    checked = hub_agencies(url, tmp_path, "--check")
    assert checked.returncode == 1
    line = one_error_line(checked)
    assert "does not know 2 agency(ies) the directory routes through it: " \
        "000.00.00.G05, 000.00.00.G07" in line
    assert f"at the hub, not in the directory: {STRANGER}" in line
    rows = table(checked.stdout)
    assert rows["000.00.00.G05"][:3] == ["hub", "-", "MISSING AT THE HUB"]
    assert rows["000.00.00.G04"][2] == "ok"

    # Without --check it is a report: the same table, exit 0.
    listed = hub_agencies(url, tmp_path)
    assert listed.returncode == 0
    assert listed.stdout == checked.stdout


def test_hub_errors_are_one_line_without_the_secret(
    start_hub: HubFactory, tmp_path: Path
) -> None:
    url = start_hub({code: BNV for code in ROUTED}, "--fail", "503x1@/getAgenciesList")
    # The hub was started failing: its first answer is a 503, then it is fine.
    busy = hub_agencies(url, tmp_path, "--check")
    assert busy.returncode == 2
    assert "hub /getAgenciesList answered HTTP 503" in one_error_line(busy)
    assert hub_agencies(url, tmp_path, "--check").returncode == 0

    wrong = hub_agencies(url, tmp_path, "--check", secret="a-wrong-secret-4411")
    assert wrong.returncode == 2
    assert "HTTP 401: bad signature" in one_error_line(wrong)
    assert "a-wrong-secret-4411" not in wrong.stderr + wrong.stdout
    assert "Traceback" not in wrong.stderr

    closed = f"http://127.0.0.1:{free_port()}"
    away = hub_agencies(closed, tmp_path)
    assert away.returncode == 2
    assert "hub /getAgenciesList" in one_error_line(away)
    assert SECRETS[GATEWAY] not in away.stderr

    unset = lienthong("hub", "agencies", data=tmp_path)
    assert unset.returncode == 2
    assert "LIENTHONG_HUB_URL is not set" in one_error_line(unset)


async def _signed(session: aiohttp.ClientSession, url: str, system: str, method: str,
                  path: str, body: bytes = b"") -> tuple[int, Any]:
    headers = signed_headers(system, SECRETS[system], method, path, body, time.time())
    async with session.request(method, url + path, data=body or None,
                               headers=headers) as response:
        return response.status, await response.json()


def test_the_standalone_hub_takes_failures_from_its_controller(
    start_hub: HubFactory, tmp_path: Path
) -> None:
    url = start_hub({code: BNV for code in ROUTED}, "--control", VPCP, "--fail", "reset",
                    "--fail", "502x2@/getEdoc")

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            status, state = await _signed(session, url, VPCP, "GET", "/_peer/state")
            assert status == 200
            assert state["script"] == [{"answer": "reset", "endpoint": None},
                                       {"answer": 502, "endpoint": "/getEdoc"},
                                       {"answer": 502, "endpoint": "/getEdoc"}]
            assert (await _signed(session, url, BNV, "GET", "/_peer/state"))[0] == 403
            order = b'{"answer": 503, "count": 1, "endpoint": "/getAgenciesList"}'
            status, state = await _signed(session, url, VPCP, "POST", "/_peer/fail", order)
            assert status == 200 and len(state["script"]) == 4
            status, state = await _signed(session, url, VPCP, "POST", "/_peer/fail",
                                          b'{"clear": true}')
            assert (status, state["script"]) == (200, [])

    asyncio.run(scenario())
    assert hub_agencies(url, tmp_path, "--check").returncode == 0


def test_the_hub_peer_refuses_a_malformed_failure_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "deploy.peers.central_hub", "--fail", "200x2"],
        capture_output=True, text=True, timeout=30, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")},
    )
    assert result.returncode == 2
    assert "an HTTP status 400..599, reset or slow" in result.stderr


async def test_a_large_file_goes_to_the_hub_streamed_from_the_store(
    start_hub: HubFactory, tmp_path: Path, sample_directory: Directory
) -> None:
    """Unsigned, a package whose 20 MiB file is in the blob store goes to the hub (run as its
    own process, so only our side's memory is traced) without being held: the request's
    digest and length come from a first pass over the store, the body from a second."""
    url = start_hub({code: VPCP for code in ROUTED})
    blobs = BlobStore(tmp_path / "blobs")
    data = os.urandom(20 * 1024 * 1024)
    digest = blobs.put(data)
    size = len(data)
    del data
    body = document(HUE, [{"agency": ROUTED[0]}])["body"] | {"attachments": [{
        "name": "Hồ sơ thiết kế.pdf", "media_type": "application/pdf", "size": size,
        "sha256": digest}]}
    message_id = str(uuid.uuid4())
    canonical = orjson.dumps(document(HUE, [{"agency": ROUTED[0]}]) | {"body": body})
    assert isinstance(decode(canonical), DocumentEnvelope)
    async with aiohttp.ClientSession() as session:
        ours = HubClient(session, url, GATEWAY, SECRETS[GATEWAY], timeout=120)
        transport = HubTransport(ours, blobs=blobs)
        tracemalloc.start()
        try:
            await transport.send(sample_directory.agencies[ROUTED[0]],
                                 Delivery(message_id, HUE, 1, canonical))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        ministry = HubClient(session, url, VPCP, SECRETS[VPCP], timeout=120)
        [doc] = await ministry.received()
        package = await ministry.get_edoc(doc.doc_id)
    assert peak < 4 * 1024 * 1024, f"{peak} bytes traced for a {size}-byte file"
    assert doc.message_id == message_id
    # What the ministry got is the package with the file in it, whole.
    theirs = BlobStore(tmp_path / "ministry")
    spooled, _ = spool_package(theirs, io.BytesIO(package), STREAM_LIMITS)
    assert [(a.sha256, theirs.size(a.sha256)) for a in spooled.attachments] == [(digest, size)]
