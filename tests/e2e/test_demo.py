"""``lienthong demo`` is the README's first command: it must keep working, end to end (the
central hub peer, an AMQP consumer with its own RabbitMQ user, edXML, dossiers, statistics)."""

from __future__ import annotations

import pytest

from gateway.demo import run_demo
from gateway.settings import Settings


async def test_demo_runs_and_every_check_passes(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_demo(settings)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "OK: every message delivered and read, every dossier where it should be" in out
    assert "gateway signature: valid" in out
    assert "statuses 01, 03, 04 came back" in out and "shows 04 for the Government" in out
    assert "consumed 1 message(s) from its own queue" in out
    assert "stats verify: OK" in out
    assert out.count("completed") >= 5 and "late" in out
