"""The CI-sized chaos run (issue 5, item 6), through the same code as ``lienthong chaos``.

A private RabbitMQ node, a fresh PostgreSQL database, three gateway processes, push endpoints
failing 30% of requests; 1500 messages while the broker is killed once and gateway processes
four times; then the reconciliation from what the receivers got. The figures are printed (see
them with ``pytest -s`` or in the failure message); the seed in them replays the same schedule.
"""

from __future__ import annotations

import os

import pytest

from gateway.chaos import ChaosOptions, run_chaos

pytestmark = pytest.mark.chaos

MESSAGES = 1500
BROKER_KILLS = 1
WORKER_KILLS = 3
API_KILLS = 1


@pytest.mark.timeout(420)
async def test_nothing_lost_nothing_twice_under_faults(pg_admin_url: str) -> None:
    progress: list[str] = []
    seed = os.environ.get("CHAOS_SEED")
    report = await run_chaos(ChaosOptions(
        messages=MESSAGES,
        agencies=6,
        broker_kills=BROKER_KILLS,
        worker_kills=WORKER_KILLS,
        api_kills=API_KILLS,
        fail_share=0.3,
        pg_url=pg_admin_url,
        seed=int(seed) if seed else None,
        settle_timeout=150.0,
        progress=progress.append,
    ))
    figures = "\n".join(progress) + "\n" + report.render()
    print(figures)

    assert report.accepted + report.found_by_key > 0, figures
    assert report.accepted + report.found_by_key + report.never_accepted == MESSAGES, figures
    assert report.faults["broker_kill"] >= BROKER_KILLS, figures
    assert report.faults["worker_kill"] >= WORKER_KILLS, figures
    assert report.faults["api_kill"] >= API_KILLS, figures
    assert report.push_faults.get("5xx", 0) and report.push_faults.get("timeout", 0), figures
    # The reconciliation, from what the receivers got.
    assert report.lost == 0, figures
    assert report.duplicate_effects == 0, figures
    assert report.stray_effects == 0, figures
    assert report.left_behind == 0, figures
    assert report.idempotency_mismatches == 0, figures
    assert report.dead_lettered_without_reason == 0, figures  # every dead letter says why
    assert report.delivered + report.dead_lettered == report.deliveries_expected, figures
    assert report.audit_break is None, figures  # the hash chain held through the crashes
    # Every process came back by itself after each fault, and none died on its own.
    assert report.unrecovered == 0, figures
    assert report.process_crashes == 0, figures
    assert report.ok, figures
