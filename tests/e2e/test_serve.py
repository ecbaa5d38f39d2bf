"""``lienthong serve`` as a real process: it serves, and on SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from gateway import topology as topo
from gateway.broker import delete_topology
from gateway.directory import load_directory
from gateway.settings import DEFAULT_DIRECTORY, Settings
from gateway.store.store import Store
from tests.conftest import HUE, PROVINCE, document


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_delivers_and_drains_on_sigterm(tmp_path: Path, amqp_url: str) -> None:
    port = _free_port()
    namespace = f"serve{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIENTHONG_")}
    env |= {
        "LIENTHONG_AMQP_URL": amqp_url,
        "LIENTHONG_DATA_DIR": str(tmp_path),
        "LIENTHONG_HTTP_PORT": str(port),
        "LIENTHONG_NAMESPACE": namespace,
        "LIENTHONG_LOG_FORMAT": "json",
    }
    settings = Settings.from_env(env)
    tmp_path.mkdir(exist_ok=True)
    async with Store.open(settings.store_url) as store:
        token = (await store.issue_credential(HUE))[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"{base}/health/ready") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            async with session.post(
                f"{base}/api/v1/messages", json=document(HUE, [{"agency": PROVINCE}]),
                headers={"Authorization": f"Bearer {token}"},
            ) as response:
                assert response.status == 202
                message_id = (await response.json())["id"]
        async with Store.open(settings.store_url) as store:
            for _ in range(100):
                if await store.recipient_state(message_id, PROVINCE) == "delivered":
                    break
                await asyncio.sleep(0.1)
            assert await store.recipient_state(message_id, PROVINCE) == "delivered"
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == 0, stderr.decode()[-2000:]
        log = stderr.decode()
        assert '"event": "delivery.stopped"' in log
        assert token not in log  # tokens never reach the logs
        # Every line about the message carries its id.
        lines = [line for line in log.splitlines() if message_id in line]
        assert all(f'"message_id": "{message_id}"' in line for line in lines) and lines
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        # serve loads the sample directory: its AMQP-mode agencies' queues go too.
        await delete_topology(amqp_url, topo.build(settings, load_directory(DEFAULT_DIRECTORY)))
