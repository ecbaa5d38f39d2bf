"""The dossier scheduler: overdue alerts (cảnh báo quá hạn) and transfers to successors.

Every ``LIENTHONG_SCHEDULER_INTERVAL`` each gateway process:

1. moves the open dossiers of every dissolved or merged agency (one with a successor in the
   directory) to that successor, with their due times (a ``transfer`` step);
2. finds the open dossiers whose running step falls due within ``LIENTHONG_ALERT_WARNING_DAYS``
   working days (``due_soon``) or is past due (``overdue``) and sends a ``dossier_status``
   alert to the agency responsible for it and to the dossier's receiving agency, once per
   level and step.

Both are dossier steps, written like any other: folded on the dossier's history, numbered,
and stored with their message in one transaction. Several processes may run the scheduler at
once: two that decide the same step on the same history write the same step number, the
store's unique key lets one of them in, and the other's transaction (its message included)
is rolled back. A process that then reads the history sees the alert already raised. So no
alert is sent twice, and none is lost while any process runs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from aiohttp import web

from gateway.api.keys import BROKER, CALENDAR, DIRECTORY, RELAY, SETTINGS, STORE
from gateway.codecs import encode
from gateway.dossiers import DossierState, Event, IllegalStep, Step, apply, fold
from gateway.envelope import (
    AgencyAddress,
    AlertLevel,
    DossierAction,
    DossierStatusBody,
    DossierStatusEnvelope,
    Header,
)
from gateway.errors import Conflict, GatewayError, Unavailable
from gateway.store.dossier_rows import DossierWrite
from gateway.store.store import Store, utcnow

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Emitted:
    code: str
    step: str
    level: str | None
    message_id: str


async def emit_step(
    app: web.Application,
    code: str,
    state: DossierState,
    *,
    step: Step,
    actor: str,
    recipients: Sequence[str],
    now: datetime,
    to: str | None = None,
    alert: AlertLevel | None = None,
    about: str | None = None,
) -> Emitted | None:
    """Write one of the gateway's own steps with its message and publish it; None when the
    history moved on meanwhile (another process wrote a step first) or forbids it now."""
    store: Store = app[STORE]
    system = app[SETTINGS].system_code
    message_id = uuid.uuid4()
    event = Event(seq=state.seq + 1, step=step, actor=actor, at=now,
                  message_id=str(message_id), to=to, about=about, due_at=state.due_at,
                  alert=alert.value if alert else None)
    try:
        new = apply(state, event, code)
    except (IllegalStep, GatewayError):
        return None
    envelope = DossierStatusEnvelope(
        kind="dossier_status",
        header=Header(id=message_id, sender=system, created=now,
                      to=[AgencyAddress(agency=a) for a in recipients]),
        body=DossierStatusBody(
            dossier=code, action=DossierAction(step.value), at=now, alert=alert,
            due_at=state.due_at if alert else None,
            reason=f"{actor} -> {to}" if step is Step.TRANSFER else None,
        ),
    )
    body = encode(envelope)
    try:
        accepted = await store.accept(
            message_id=str(message_id), kind="dossier_status", sender=system, about=None,
            created_at=now, envelope=body, recipients_=tuple(sorted(set(recipients))),
            redirects={}, idempotency_key=None, request_hash=str(message_id),
            dossier=DossierWrite(event, new, None),
        )
    except Conflict:  # another process wrote this step number first
        return None
    if BROKER in app:
        try:
            await app[RELAY].publish(accepted.outbox)
        except Unavailable as exc:
            log.warning("scheduler.publish_deferred", message_id=str(message_id),
                        error=exc.detail)
    log.info("scheduler.step", dossier=code, step=step.value,
             level=alert.value if alert else None, message_id=str(message_id))
    return Emitted(code, step.value, alert.value if alert else None, str(message_id))


async def run_once(app: web.Application, now: datetime | None = None, *, page: int = 1000
                   ) -> list[Emitted]:
    """One pass: transfers first (an alert then goes to the successor), then alerts, at most
    ``page`` dossiers of each; what is left waits for the next pass."""
    now = now or utcnow()
    store: Store = app[STORE]
    directory = app[DIRECTORY]
    emitted: list[Emitted] = []
    dissolved = [a.code for a in directory.agencies.values() if a.successor is not None]
    for code in await store.open_dossiers(responsible=dissolved, limit=page):
        state = fold(code, await store.dossier_events(code))
        if state is None or state.responsible is None:
            continue
        successor = directory.current(state.responsible)
        done = await emit_step(
            app, code, state, step=Step.TRANSFER, actor=state.responsible, to=successor,
            recipients=sorted({successor, state.receiving_agency} - {state.responsible}
                              or {successor}),
            now=now,
        )
        if done:
            emitted.append(done)
    calendar = app.get(CALENDAR)
    warning = app[SETTINGS].alert_warning_days
    horizon = calendar.add_working_days(now, warning) if calendar and warning else now
    for code in await store.open_dossiers(due_before=horizon, to_alert_at=now, limit=page):
        state = fold(code, await store.dossier_events(code))
        if state is None or state.due_at is None or state.responsible is None:
            continue
        level = AlertLevel.OVERDUE if now >= state.due_at else AlertLevel.DUE_SOON
        key = state.step_key or ""
        if (level.value, key) in state.alerts:
            continue
        done = await emit_step(
            app, code, state, step=Step.ALERT, actor=app[SETTINGS].system_code,
            recipients=sorted({state.responsible, state.receiving_agency}), now=now,
            alert=level, about=key,
        )
        if done:
            emitted.append(done)
    return emitted


async def run(app: web.Application) -> None:
    """Run passes until cancelled, the first one interval after start (a restart storm does
    not scan at once); a failed pass (store away, or a bug) is logged and retried: the
    scheduler never dies quietly while the process goes on serving."""
    interval = app[SETTINGS].scheduler_interval
    while True:
        await asyncio.sleep(interval)
        try:
            await run_once(app)
        except GatewayError as exc:
            log.warning("scheduler.pass_failed", error=exc.detail)
        except Exception:  # anything else is a bug: say so loudly, keep going
            log.exception("scheduler.pass_crashed")
