"""The store on SQLite and PostgreSQL: migrations in step with the code, tokens, timestamps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.errors import Conflict
from gateway.store import migrate
from gateway.store.store import IdempotencyKeyReused, Store, hash_token
from gateway.store.tables import audit_events, credentials
from tests.conftest import HUE, PROVINCE


@pytest.fixture
async def store(db_url: str) -> Store:
    async with Store.open(db_url) as opened:
        yield opened


async def test_migrations_match_the_tables_in_code(store: Store) -> None:
    assert await migrate.current_revision(store._engine) == migrate.head_revision()
    assert await migrate.drift(store._engine) == []


async def test_migrating_twice_is_harmless(db_url: str) -> None:
    async with Store.open(db_url):
        pass
    async with Store.open(db_url) as store:
        assert await migrate.current_revision(store._engine) == migrate.head_revision()


async def test_upgrade_chains_the_events_written_before_the_chain(db_url: str) -> None:
    engine = create_async_engine(db_url)
    try:
        await migrate.upgrade(engine, "0001")
        async with engine.begin() as conn:
            await conn.execute(audit_events.insert(), [
                {"at": datetime.now(UTC), "event": "accepted", "message_id": "m1", "agency": HUE},
                {"at": datetime.now(UTC), "event": "read", "message_id": "m1", "agency": PROVINCE},
            ])
    finally:
        await engine.dispose()
    async with Store.open(db_url) as store:  # upgrades to head: 0002 backfills the chain
        await store.issue_credential(HUE)  # and new events follow on
        assert await store.verify_audit() == (3, None)


async def test_upgrade_records_the_alerts_already_raised(db_url: str) -> None:
    """0006 backfills which alert each open dossier's running step has had, from the raw
    steps, so that the scheduler's new query does not alert those dossiers a second time."""
    at = datetime(2026, 3, 2, 2, tzinfo=UTC)
    code = "000.21.35.H57-260302-0001"
    engine = create_async_engine(db_url)
    try:
        await migrate.upgrade(engine, "0005")
        dossiers = sa.table("dossiers", *(sa.column(c) for c in (
            "code", "receiving_agency", "procedure_code", "received_at", "appointment_at",
            "phase", "holder", "responsible", "due_at", "handovers", "returns", "apologies",
            "seq", "updated_at")))
        events = sa.table("dossier_events", *(sa.column(c) for c in (
            "dossier_code", "seq", "step", "actor", "to_agency", "at", "message_id", "about",
            "alert")))
        async with engine.begin() as conn:
            await conn.execute(dossiers.insert().values(
                code=code, receiving_agency="000.21.35.H57", procedure_code="1.0", received_at=at,
                appointment_at=at, phase="held", holder=PROVINCE, responsible=PROVINCE, due_at=at,
                handovers=2, returns=0, apologies=0, seq=5, updated_at=at))
            await conn.execute(events.insert(), [
                {"dossier_code": code, "seq": n, "step": step, "actor": "000.21.35.H57",
                 "to_agency": None, "at": at, "message_id": f"m{n}", "about": about,
                 "alert": alert}
                for n, step, about, alert in (
                    (1, "handover", None, None), (2, "alert", "m1", "overdue"),
                    (3, "accept", "m1", None), (4, "handover", None, None),
                    (5, "alert", "m4", "due_soon"))
            ])
    finally:
        await engine.dispose()
    async with Store.open(db_url) as store:
        async with store.read() as conn:
            alerted = (await conn.execute(sa.text(
                "SELECT alerted FROM dossiers WHERE code = :code"), {"code": code})).scalar()
        assert alerted == "due_soon"  # the running step's (m4), not the earlier step's


async def test_only_the_token_hash_is_stored(store: Store) -> None:
    cred_id, token = await store.issue_credential(HUE, "qlvb")
    async with store.read() as conn:
        row = (await conn.execute(credentials.select())).one()
    assert row.id == cred_id
    assert row.token_hash == hash_token(token)
    assert token not in str(tuple(row))
    principal = await store.authenticate(token)
    assert principal is not None and (principal.role, principal.agency) == ("agency", HUE)
    assert await store.authenticate(token + "x") is None


async def test_revoke_one_credential_keeps_the_others(store: Store) -> None:
    first_id, first = await store.issue_credential(HUE)
    _, second = await store.issue_credential(HUE)
    assert await store.revoke_credentials(HUE, first_id) == 1
    assert await store.authenticate(first) is None
    assert (await store.authenticate(second)).agency == HUE  # type: ignore[union-attr]
    assert await store.revoke_credentials(HUE, first_id) == 0


async def _accept(store: Store, message_id: str, key: str | None,
                  request_hash: str = "a" * 64) -> object:
    return await store.accept(
        message_id=message_id, kind="document", sender=HUE, about=None,
        created_at=datetime(2026, 11, 25, 9, 0, tzinfo=timezone(timedelta(hours=7))),
        envelope=b"{}", recipients_=[PROVINCE], redirects={}, idempotency_key=key,
        request_hash=request_hash,
    )


async def test_timestamps_come_back_aware_and_in_utc(store: Store) -> None:
    await _accept(store, "00000000-0000-4000-8000-000000000001", None)
    row = await store.message("00000000-0000-4000-8000-000000000001")
    assert row.accepted_at.tzinfo is not None
    assert row.accepted_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - row.accepted_at) < timedelta(minutes=1)


async def test_idempotency_race_yields_the_first_answer(store: Store) -> None:
    results = await asyncio.gather(*(
        _accept(store, f"00000000-0000-4000-8000-00000000000{n}", "same-key") for n in range(5)
    ))
    ids = {r.message_id for r in results}  # type: ignore[attr-defined]
    assert len(ids) == 1
    assert sum(r.created for r in results) == 1  # type: ignore[attr-defined]


async def test_a_reused_message_id_is_a_conflict(store: Store) -> None:
    await _accept(store, "00000000-0000-4000-8000-000000000009", None)
    with pytest.raises(Conflict):
        await _accept(store, "00000000-0000-4000-8000-000000000009", None, "b" * 64)
    # The same request again (a package resent while the first was being stored) replays.
    again = await _accept(store, "00000000-0000-4000-8000-000000000009", None)
    assert again.created is False  # type: ignore[attr-defined]


async def test_delivery_is_recorded_once(store: Store) -> None:
    message_id = "00000000-0000-4000-8000-000000000010"
    await _accept(store, message_id, None)
    first = await store.record_delivery(message_id, PROVINCE, mode="pull", attempt=1)
    again = await store.record_delivery(message_id, PROVINCE, mode="pull", attempt=2)
    assert (first, again) == (True, False)
    page = await store.inbox_page(PROVINCE)
    assert [e.message_id for e in page] == [message_id]


async def test_a_raced_key_with_another_body_is_refused(store: Store) -> None:
    await _accept(store, "00000000-0000-4000-8000-000000000020", "k")
    with pytest.raises(IdempotencyKeyReused):
        await store.accept(
            message_id="00000000-0000-4000-8000-000000000021", kind="document", sender=HUE,
            about=None, created_at=datetime.now(UTC), envelope=b"{}", recipients_=[PROVINCE],
            redirects={}, idempotency_key="k", request_hash="b" * 64,
        )
