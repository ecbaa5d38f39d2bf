"""``lienthong``: the command line. Errors end with one readable line and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import logging as gw_logging
from gateway import topology as topo
from gateway.directory import load_directory
from gateway.envelope import AGENCY_CODE_RE, json_schema
from gateway.errors import GatewayError
from gateway.settings import REPO_ROOT, Settings, parse_duration

if TYPE_CHECKING:
    from datetime import datetime

    from adapters.amqp_native import AmqpAccounts
    from gateway.directory import Directory
    from gateway.stats import Report
    from gateway.store.store import DeadLetterFilter

SCHEMA_PATH = REPO_ROOT / "schemas" / "envelope.schema.json"


def _agency(text: str) -> str:
    if not AGENCY_CODE_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an agency code like 000.00.00.H57")
    return text


class UsageError(GatewayError):
    """A command line that names no valid target."""


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _write(path: str | None, text: str) -> None:
    if path in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


# -- commands ---------------------------------------------------------------------------------
def cmd_serve(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.service import serve

    serve(settings)
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    if "LIENTHONG_LOG_LEVEL" not in os.environ:  # the demo's tables, not every log line
        gw_logging.configure(level="warning", fmt=settings.log_format)

    return _run(run_demo(settings, keep=args.keep))


def cmd_credentials_issue(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store.store import Store

    label = args.label
    if args.operator:
        who = f"operator {args.operator}"
    else:
        if args.code is None:
            raise UsageError("give an agency CODE, or --operator NAME")
        directory = load_directory(settings.directory_path,
                                   allow_insecure_push=settings.allow_insecure_push)
        agency = directory.get(args.code)
        who = f"{agency.code} ({agency.name})"

    async def go() -> int:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        async with Store.open(settings.store_url) as store:
            if args.operator:
                cred_id, token = await store.issue_operator_credential(args.operator)
            else:
                cred_id, token = await store.issue_credential(args.code, label)
        sys.stderr.write(f"credential {cred_id} for {who}; the token is shown once:\n")
        sys.stdout.write(token + "\n")
        return 0

    return _run(go())


def cmd_credentials_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store.store import Store

    if (args.code is None) == (args.operator is None):
        raise UsageError("give an agency CODE or --operator NAME")

    async def go() -> int:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        async with Store.open(settings.store_url) as store:
            if args.operator:
                count = await store.revoke_operator_credentials(args.operator)
            else:
                count = await store.revoke_credentials(args.code, args.credential)
        whose = args.code or f"operator {args.operator}"
        if count == 0:
            sys.stderr.write(f"lienthong: no active credential of {whose} to revoke\n")
            return 1
        sys.stdout.write(f"revoked {count} credential(s) of {whose}\n")
        return 0

    return _run(go())


def _dead_filter(args: argparse.Namespace) -> DeadLetterFilter:
    from datetime import timedelta

    from gateway.store.store import DeadLetterFilter, utcnow

    older = utcnow() - timedelta(seconds=args.older_than) if args.older_than else None
    return DeadLetterFilter(ids=args.ids or None, agency=args.agency, reason=args.reason,
                            older_than=older)


def cmd_dlq_ls(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store.store import Store

    async def go() -> int:
        async with Store.open(settings.store_url) as store:
            rows = await store.dead_letters(_dead_filter(args), limit=args.limit)
        sys.stdout.write(f"{'id':>6}  {'dead at (UTC)':19}  {'recipient':13}  {'reason':14}  "
                         f"{'tries':>5}  message / error\n")
        for d in rows:
            sys.stdout.write(
                f"{d.id:>6}  {d.dead_at:%Y-%m-%d %H:%M:%S}  {d.recipient:13}  {d.reason:14}  "
                f"{d.attempts:>5}  {d.message_id}  {(d.error or '')[:60]}\n"
            )
        sys.stderr.write(f"{len(rows)} dead letter(s)\n")
        return 0

    return _run(go())


def cmd_dlq_show(settings: Settings, args: argparse.Namespace) -> int:
    import dataclasses

    from gateway.store.store import Store

    async def go() -> int:
        async with Store.open(settings.store_url) as store:
            dead = await store.dead_letter(args.id)
        for key, value in dataclasses.asdict(dead).items():
            sys.stdout.write(f"{key:17} {'' if value is None else value}\n")
        return 0

    return _run(go())


def _dlq_action(settings: Settings, args: argparse.Namespace, action: str) -> int:
    from gateway.store.store import Store

    where = _dead_filter(args)
    if not (where.ids or where.agency or where.reason or where.older_than or args.all):
        raise UsageError("choose dead letters: IDs, --agency, --reason, --older-than or --all")
    by = args.by or getpass.getuser()

    async def go() -> int:
        async with Store.open(settings.store_url) as store:
            if action == "replay":
                count = len(await store.replay_dead_letters(where, by=by, comment=args.comment))
            else:
                count = len(await store.discard_dead_letters(where, by=by, comment=args.comment))
        done = "replayed (the running gateway's relay publishes them)" if action == "replay" \
            else "discarded"
        sys.stdout.write(f"{count} dead letter(s) {done}\n")
        return 0 if count else 1

    return _run(go())


def cmd_dlq_replay(settings: Settings, args: argparse.Namespace) -> int:
    return _dlq_action(settings, args, "replay")


def cmd_dlq_discard(settings: Settings, args: argparse.Namespace) -> int:
    return _dlq_action(settings, args, "discard")


def cmd_topology_export(settings: Settings, args: argparse.Namespace) -> int:
    directory = load_directory(settings.directory_path,
                               allow_insecure_push=settings.allow_insecure_push)
    document = topo.definitions(topo.build(settings, directory), vhost=args.vhost)
    _write(args.output, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return 0


# AMQP-native agencies: their RabbitMQ users (adapters/amqp_native.py, docs/amqp-agencies.md).
def _amqp_accounts(settings: Settings, args: argparse.Namespace
                   ) -> tuple[Directory, AmqpAccounts]:
    import shlex

    from adapters.amqp_native import AmqpAccounts, RabbitmqCtl, vhost_of

    command = shlex.split(args.rabbitmqctl)
    if not command:
        raise UsageError("--rabbitmqctl names no command")
    directory = load_directory(settings.directory_path,
                               allow_insecure_push=settings.allow_insecure_push)
    accounts = AmqpAccounts(RabbitmqCtl(command, node=args.node),
                            topo.build(settings, directory), vhost=vhost_of(settings.amqp_url))
    return directory, accounts


def cmd_amqp_grant(settings: Settings, args: argparse.Namespace) -> int:
    from urllib.parse import urlsplit

    public = args.public_url or settings.amqp_url
    if urlsplit(public).scheme not in {"amqp", "amqps"} or not urlsplit(public).hostname:
        raise UsageError(f"--public-url {public!r} is not an amqp:// or amqps:// URL")
    directory, accounts = _amqp_accounts(settings, args)
    agency = directory.get(args.code)
    accounts.check_agency(agency)  # before anything runs

    async def go() -> int:
        grant = await accounts.grant(agency)
        done = "created" if grant.created else \
            "given a new password (its open connections were closed)"
        sys.stderr.write(
            f"AMQP user {grant.access.user} {done} for {agency.code} ({agency.name}); "
            "its URL with the password (shown once), then its queue:\n"
        )
        sys.stdout.write(f"{grant.url(public)}\n{grant.access.queue}\n")
        return 0

    return _run(go())


def cmd_amqp_revoke(settings: Settings, args: argparse.Namespace) -> int:
    _directory, accounts = _amqp_accounts(settings, args)

    async def go() -> int:
        user = accounts.access(args.code).user
        if not await accounts.revoke(args.code):
            sys.stderr.write(f"lienthong: {args.code} has no AMQP user ({user}) to revoke\n")
            return 1
        sys.stdout.write(f"deleted AMQP user {user}; its connections were closed\n")
        return 0

    return _run(go())


def cmd_amqp_ls(settings: Settings, args: argparse.Namespace) -> int:
    from adapters.amqp_native import queue_depths

    directory, accounts = _amqp_accounts(settings, args)

    async def go() -> int:
        rows = await accounts.accounts(directory)
        try:
            depths = await queue_depths(settings.amqp_url, [r.access.queue for r in rows])
        except GatewayError as exc:
            sys.stderr.write(f"lienthong: queue depths unknown: {exc.detail}\n")
            depths = {}
        sys.stdout.write(f"{'agency':13}  {'state':18}  {'messages':>8}  {'consumers':>9}  "
                         "user / queue\n")
        for r in rows:
            messages, consumers = (str(n) for n in depths.get(r.access.queue, ("-", "-")))
            sys.stdout.write(f"{r.code:13}  {r.state:18}  {messages:>8}  {consumers:>9}  "
                             f"{r.access.user} / {r.access.queue}\n")
        sys.stderr.write(f"{len(rows)} AMQP agencies and users\n")
        return 0

    return _run(go())


def cmd_schema_export(_settings: Settings, args: argparse.Namespace) -> int:
    _write(args.output, json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n")
    return 0


def cmd_db_upgrade(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.store import migrate
    from gateway.store.store import Store

    async def go() -> int:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        async with Store.open(settings.store_url, migrate_schema=True) as store:
            revision = await migrate.current_revision(store._engine)
        sys.stdout.write(f"database at revision {revision}\n")
        return 0

    return _run(go())


def cmd_audit_verify(settings: Settings, _args: argparse.Namespace) -> int:
    from gateway.store.store import Store

    async def go() -> int:
        async with Store.open(settings.store_url) as store:
            checked, broken = await store.verify_audit()
        if broken is not None:
            sys.stderr.write(
                f"lienthong: audit chain broken at event {broken.event_id} ({broken.event}): "
                f"{broken.reason}; {checked} events read\n"
            )
            return 1
        sys.stdout.write(f"audit chain intact: {checked} events\n")
        return 0

    return _run(go())


def cmd_blobs_gc(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.blobs import UPLOAD_VALID, BlobStore
    from gateway.store.store import Store

    async def go() -> int:
        blobs = BlobStore(settings.blob_dir)
        # Candidates first, references second: a file claimed while the references are read
        # is newer than the grace by then, and collect() checks its age again.
        candidates = dict(blobs.stored(args.older_than))
        nameable = datetime.now(UTC) - UPLOAD_VALID  # uploads a message may still name
        async with Store.open(settings.store_url) as store:
            referenced = await store.referenced_blobs(uploads_since=nameable)
            forgotten = 0 if args.dry_run else await store.forget_uploads(nameable)
        unreferenced = [d for d in candidates if d not in referenced]
        if args.dry_run:
            removed = unreferenced
        else:
            removed = blobs.collect(candidates, referenced, args.older_than)
        swept = 0 if args.dry_run else blobs.sweep(args.older_than)
        freed = sum(candidates[d] for d in removed)
        verb = "would remove" if args.dry_run else "removed"
        sys.stdout.write(
            f"{verb} {len(removed)} unreferenced files ({freed} bytes); "
            f"kept {len(candidates) - len(removed)} older files that messages or recent "
            f"uploads name; {swept} unfinished writes swept; {forgotten} expired uploads "
            "forgotten\n"
        )
        return 0

    return _run(go())


def cmd_directory_check(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else settings.directory_path
    directory = load_directory(path, allow_insecure_push=settings.allow_insecure_push)
    by_level: dict[str, int] = {}
    for agency in directory.agencies.values():
        by_level[agency.level] = by_level.get(agency.level, 0) + 1
    summary = ", ".join(f"{n} {level}" for level, n in by_level.items())
    sys.stdout.write(f"{path}: {len(directory)} agencies ({summary})\n")
    return 0


def _aware_instant(text: str) -> datetime:
    from datetime import datetime

    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date-time like 2026-02-13T15:00+07:00") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone: add one, e.g. {text}+07:00")
    return value


def cmd_calendar_due(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.calendar import WEEKDAY_NAMES, load_calendar

    calendar = load_calendar(Path(args.file) if args.file else settings.calendar_path)
    received = args.start
    try:
        due = calendar.add_working_days(received, args.days)
    except ValueError as exc:
        raise UsageError(f"--days: {exc}") from None
    start = calendar.counting_start(received)
    local = received.astimezone(calendar.tz)

    def day(d: datetime) -> str:
        return f"{d.isoformat()}  {WEEKDAY_NAMES[d.weekday()]}"

    out = [f"received  {day(local)}", f"counted   from {day(start)}"
           + ("" if start.date() == local.date() else
              f" (received after {calendar.hours.cutoff:%H:%M} or on a day off)"),
           f"due       {day(due)}  ({args.days:g} working days)"]
    for d, why in calendar.days_off(local.date(), due.date()):
        weekday = WEEKDAY_NAMES[d.weekday()]
        out.append(f"skipped   {d.isoformat()}  {weekday}" + ("" if why == weekday else f": {why}"))
    sys.stdout.write("\n".join(out) + "\n")
    for note in calendar.notes(local.date(), due.date()):
        sys.stderr.write(f"lienthong: note: {note}\n")
    return 0


def cmd_calendar_check(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import date, timedelta

    from gateway.calendar import load_calendar

    path = Path(args.path) if args.path else settings.calendar_path
    calendar = load_calendar(path)
    counts = {kind: sum(o.kind == kind for o in calendar.overrides)
              for kind in ("days_off", "working_days", "corrections")}
    h = calendar.hours
    years = ", ".join(str(y) for y in sorted(calendar.declared_years)) or "none"
    sys.stdout.write(
        f"{path}: ok; years declared: {years} ({counts['days_off']} days off, "
        f"{counts['working_days']} working days, {counts['corrections']} corrections); "
        f"holidays: {calendar.country or 'none'}; office hours {h.morning_start:%H:%M}-"
        f"{h.morning_end:%H:%M}, {h.afternoon_start:%H:%M}-{h.afternoon_end:%H:%M}, "
        f"cut-off {h.cutoff:%H:%M}\n")
    today = date.today()
    for note in calendar.notes(today, today + timedelta(days=365)):
        sys.stderr.write(f"lienthong: note: {note}\n")
    return 0


# The central document hub (adapters/central_hub.py, docs/central-hub.md): its agency list
# against the directory's hub-mode agencies, which it must know or their messages dead-letter.
def cmd_hub_agencies(settings: Settings, args: argparse.Namespace) -> int:
    import aiohttp

    from adapters.central_hub import HubClient
    from gateway.directory import DeliveryMode

    if not settings.hub_url:
        raise UsageError("LIENTHONG_HUB_URL is not set: there is no hub to ask")
    directory = load_directory(settings.directory_path,
                               allow_insecure_push=settings.allow_insecure_push)

    async def go() -> int:
        async with aiohttp.ClientSession() as session:
            # Errors (unreachable, 401...) are GatewayErrors: one line, never the secret.
            listed = await HubClient.from_settings(settings, session).agencies()
        at_hub = {a.code: a for a in listed}
        ours = {a.code: a for a in directory.agencies.values() if a.mode is DeliveryMode.HUB}
        # The hub's other systems' agencies; those our own system serves are ours.
        theirs = {c: a for c, a in at_hub.items() if a.system != settings.hub_system_id}
        missing = sorted(c for c in ours if c not in at_hub)
        unknown = sorted(c for c in theirs if c not in directory.agencies)
        rows = []
        for code in sorted(ours.keys() | theirs.keys()):
            agency, hub_agency = directory.agencies.get(code), at_hub.get(code)
            mode = agency.mode.value if agency is not None else "-"
            if code in ours:
                note = "ok" if hub_agency is not None else "MISSING AT THE HUB"
            else:
                note = "not in the directory" if agency is None else f"directory: {mode}"
            name = agency.name if agency is not None else hub_agency.name if hub_agency else ""
            rows.append((code, mode, hub_agency.system if hub_agency else "-", note, name))
        sys.stdout.write(f"{'agency':13}  {'directory':9}  {'hub system':16}  {'check':20}  name\n")
        for code, mode, system, note, name in rows:
            sys.stdout.write(f"{code:13}  {mode:9}  {system:16}  {note:20}  {name}\n")
        extra = f"; at the hub, not in the directory: {', '.join(unknown)}" if unknown else ""
        if missing:
            sys.stderr.write(
                f"lienthong: the hub does not know {len(missing)} agency(ies) the directory "
                f"routes through it: {', '.join(missing)}{extra}\n")
            return 1 if args.check else 0
        sys.stderr.write(f"{len(ours)} hub agencies of the directory, all known to the hub "
                         f"({len(listed)} agencies){extra}\n")
        return 0

    return _run(go())


# Dossier statistics (gateway/stats.py): what the API serves, exported, or checked against the
# dossiers' raw steps.
_STATS_HEADINGS = {
    "received": "recv", "handed_over": "sent", "accepted": "acc", "returned": "ret",
    "completed_early": "early", "completed_on_time": "ontime", "completed_late": "late",
    "withdrawn": "wdrawn", "in_progress_on_time": "prog", "in_progress_overdue": "overdue",
    "apologies": "apology",
    "steps_ended": "steps", "avg_working_days_per_step": "days",
}


def _stats(settings: Settings, args: argparse.Namespace, *, check: bool) -> Any:
    """The window the options ask for, then the served report (or, with ``check``, the
    verification) computed on the store."""
    from gateway.calendar import load_calendar
    from gateway.stats import BadWindow, default_range, parse_day, window
    from gateway.store import stats_rows
    from gateway.store.store import Store, utcnow

    now = utcnow()
    try:
        first, until = default_range(now, args.period)
        if args.start is not None:
            first = parse_day("from", args.start)
        if args.end is not None:
            until = parse_day("to", args.end)
        win = window(args.period, first, until)
    except BadWindow as exc:
        raise UsageError(f"--{exc.field}: {exc.detail}") from None
    calendar = load_calendar(settings.calendar_path)

    async def go() -> Any:
        async with Store.open(settings.store_url) as store:
            if check:
                return await stats_rows.verify(store, win, calendar, now)
            return await stats_rows.served(store, win, calendar, now, args.agency)

    return asyncio.run(go())


def cmd_stats_show(settings: Settings, args: argparse.Namespace) -> int:
    report: Report = _stats(settings, args, check=False)
    rows = report.rows(None if args.agency is None else [args.agency])
    widths = {name: max(len(short), 5) for name, short in _STATS_HEADINGS.items()}
    out = [f"{'agency':13}  {'period':10}  "
           + "  ".join(f"{short:>{widths[n]}}" for n, short in _STATS_HEADINGS.items())]
    for row in rows:
        out.append(f"{row['agency']:13}  {row['period']:10}  " + "  ".join(
            f"{'-' if row[n] is None else row[n]:>{widths[n]}}" for n in _STATS_HEADINGS))
    sys.stdout.write("\n".join(out) + "\n")
    w = report.window
    sys.stderr.write(
        f"{len(rows)} row(s): {w.period}s from {w.start.date()} to {w.end.date()} (Vietnam "
        "time); recv received, sent handed over, acc accepted, ret returned (trả lại), "
        "early/ontime/late completed, prog/overdue in progress at the period's end, steps "
        "ended and their mean working days\n")
    return 0


def cmd_stats_export(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from gateway.stats import csv_text

    report: Report = _stats(settings, args, check=False)
    agencies = None if args.agency is None else [args.agency]
    if args.format == "csv":
        _write(args.output, csv_text(report.rows(agencies)))
    else:
        _write(args.output, orjson.dumps(report.document(agencies),
                                         option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def cmd_stats_verify(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.stats import Verification

    found: Verification = _stats(settings, args, check=True)
    lines = found.summary()
    (sys.stdout if found.ok else sys.stderr).write("\n".join(lines) + "\n")
    return 0 if found.ok else 1


Command = Callable[[Settings, argparse.Namespace], int]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lienthong",
        description="Lienthong gateway: documents and dossiers between the four levels. "
        "Settings come from LIENTHONG_* environment variables (see README).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help_: str, parent: Any = sub) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    add("serve", cmd_serve, "run the API, the outbox relay and the delivery workers")
    demo = add("demo", cmd_demo, "run the gateway on the sample directory and play a scenario")
    demo.add_argument("--keep", action="store_true", help="keep the demo's data folder")

    creds = sub.add_parser("credentials", help="issue or revoke an agency's bearer tokens")
    creds_sub = creds.add_subparsers(dest="action", required=True, metavar="ACTION")
    issue = add("issue", cmd_credentials_issue,
                "print a new bearer token for an agency (or an operator)", creds_sub)
    issue.add_argument("code", type=_agency, nargs="?", help="agency code, e.g. 000.00.00.H57")
    issue.add_argument("--operator", metavar="NAME", help="a token for the operator API instead")
    issue.add_argument("--label", help="what the token is for (kept with its hash)")
    revoke = add("revoke", cmd_credentials_revoke, "end an agency's (or operator's) tokens",
                 creds_sub)
    revoke.add_argument("code", type=_agency, nargs="?")
    revoke.add_argument("--operator", metavar="NAME")
    revoke.add_argument("--credential", help="only this credential id (default: all)")

    dlq = sub.add_parser("dlq", help="dead letters: list, show, replay, discard")
    dlq_sub = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")

    def filters(sp: argparse.ArgumentParser, ids: bool) -> None:
        if ids:
            sp.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letter ids")
        sp.add_argument("--agency", type=_agency, help="only those for this recipient")
        sp.add_argument("--reason", help="permanent, max_attempts, max_age, delivery_limit...")
        sp.add_argument("--older-than", type=_duration, metavar="AGE",
                        help="only those dead for longer than AGE (e.g. 2h)")

    ls = add("ls", cmd_dlq_ls, "list open dead letters", dlq_sub)
    filters(ls, ids=False)
    ls.set_defaults(ids=None)
    ls.add_argument("--limit", type=int, default=100)
    show = add("show", cmd_dlq_show, "show one dead letter", dlq_sub)
    show.add_argument("id", type=int)
    for name, func, help_ in (
        ("replay", cmd_dlq_replay, "send dead letters again (same message ids)"),
        ("discard", cmd_dlq_discard, "give dead letters up, with a comment"),
    ):
        sp = add(name, func, help_, dlq_sub)
        filters(sp, ids=True)
        sp.add_argument("--all", action="store_true", help="every open dead letter")
        sp.add_argument("--comment", required=True, help="why (kept in the audit trail)")
        sp.add_argument("--by", help="who (default: your user name)")

    topology = sub.add_parser("topology", help="the RabbitMQ topology")
    topology_sub = topology.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = add("export", cmd_topology_export, "write a RabbitMQ definitions file",
                 topology_sub)
    export.add_argument("-o", "--output", help="file to write (default: stdout)")
    export.add_argument("--vhost", default="/")

    schema = sub.add_parser("schema", help="the Envelope's JSON Schema")
    schema_sub = schema.add_subparsers(dest="action", required=True, metavar="ACTION")
    sexport = add("export", cmd_schema_export, "write the Envelope JSON Schema", schema_sub)
    sexport.add_argument("-o", "--output", help=f"file to write (default: stdout; {SCHEMA_PATH})")

    db = sub.add_parser("db", help="the store")
    db_sub = db.add_subparsers(dest="action", required=True, metavar="ACTION")
    add("upgrade", cmd_db_upgrade, "apply the Alembic migrations", db_sub)

    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    add("verify", cmd_audit_verify, "check the audit hash chain; name the first broken event",
        audit_sub)

    # Listed for the help text only: main() hands "chaos ..." to gateway.chaos untouched.
    sub.add_parser("chaos", add_help=False, help="kill the broker and the gateway under load; "
                   "prove nothing is lost or delivered twice (lienthong chaos --help)")

    amqp = sub.add_parser("amqp", help="RabbitMQ users of AMQP-native agencies")
    amqp_sub = amqp.add_subparsers(dest="action", required=True, metavar="ACTION")
    amqp_grant = add("grant", cmd_amqp_grant, "create an agency's RabbitMQ user or give it a "
                     "new password; print its AMQP URL (once) and its queue", amqp_sub)
    amqp_grant.add_argument("code", type=_agency, help="an agency with delivery: {mode: amqp}")
    amqp_grant.add_argument("--public-url", metavar="URL",
                            help="amqp(s)://host:port the agency connects to "
                            "(default: LIENTHONG_AMQP_URL's)")
    amqp_revoke = add("revoke", cmd_amqp_revoke,
                      "delete an agency's RabbitMQ user (its connections close)", amqp_sub)
    amqp_revoke.add_argument("code", type=_agency)
    amqp_ls = add("ls", cmd_amqp_ls, "AMQP agencies and users: state, messages waiting, "
                  "consumers", amqp_sub)
    for sp in (amqp_grant, amqp_revoke, amqp_ls):
        sp.add_argument("--rabbitmqctl", default="rabbitmqctl", metavar="COMMAND",
                        help="how to run rabbitmqctl, e.g. 'sudo -u rabbitmq rabbitmqctl' or "
                        "'docker exec rmq rabbitmqctl' (default: rabbitmqctl)")
        sp.add_argument("--node", help="the RabbitMQ node (rabbitmqctl --node)")

    blobs = sub.add_parser("blobs", help="the blob store of large files (claim checks)")
    blobs_sub = blobs.add_subparsers(dest="action", required=True, metavar="ACTION")
    gc = add("gc", cmd_blobs_gc, "remove stored files no message names (those of refused "
             "packages) once older than a grace period", blobs_sub)
    gc.add_argument("--older-than", type=_duration, default=3600.0, metavar="DURATION",
                    help="grace period since a file was written or last claimed, e.g. 30m, "
                    "2h (default: 1h); keep it far above the longest upload")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be removed")

    directory = sub.add_parser("directory", help="the agency directory")
    directory_sub = directory.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = add("check", cmd_directory_check, "load and check a directory file", directory_sub)
    check.add_argument("path", nargs="?", help="default: LIENTHONG_DIRECTORY")

    stats = sub.add_parser("stats", help="dossier statistics (thống kê hồ sơ) per agency and "
                           "period")
    stats_sub = stats.add_subparsers(dest="action", required=True, metavar="ACTION")
    stats_show = add("show", cmd_stats_show, "print the figures the API serves", stats_sub)
    stats_export = add("export", cmd_stats_export, "write the figures as CSV or JSON",
                       stats_sub)
    stats_export.add_argument("--format", choices=("csv", "json"), default="csv")
    stats_export.add_argument("-o", "--output", help="file to write (default: stdout)")
    stats_verify = add("verify", cmd_stats_verify, "recompute the figures from every dossier's "
                       "raw steps and compare; name the first differences", stats_sub)
    for sp in (stats_show, stats_export, stats_verify):
        sp.add_argument("--period", choices=("day", "month", "quarter", "year"),
                        default="month")
        sp.add_argument("--from", dest="start", metavar="DATE",
                        help="first day, e.g. 2026-01-01 (default: 1 January this year)")
        sp.add_argument("--to", dest="end", metavar="DATE",
                        help="day after the last, e.g. 2027-01-01 (default: the end of the "
                        "current period)")
    for sp in (stats_show, stats_export):
        sp.add_argument("--agency", type=_agency, help="only this agency")

    hub = sub.add_parser("hub", help="the central document hub (Trục liên thông văn bản quốc gia)")
    hub_sub = hub.add_subparsers(dest="action", required=True, metavar="ACTION")
    hub_agencies = add("agencies", cmd_hub_agencies, "the hub's agency list beside the "
                       "directory's hub-mode agencies (LIENTHONG_HUB_URL, _SYSTEM_ID, _SECRET)",
                       hub_sub)
    hub_agencies.add_argument("--check", action="store_true",
                              help="exit 1 if the hub does not know an agency the directory "
                              "routes through it")

    calendar = sub.add_parser("calendar", help="working days (lịch ngày làm việc) for deadlines")
    calendar_sub = calendar.add_subparsers(dest="action", required=True, metavar="ACTION")
    due = add("due", cmd_calendar_due, "the due instant of N working days from a receipt, and "
              "the days off skipped", calendar_sub)
    due.add_argument("--from", dest="start", type=_aware_instant, required=True,
                     metavar="INSTANT", help="when the dossier was received, with its time zone "
                     "(e.g. 2026-02-13T15:00+07:00)")
    due.add_argument("--days", type=float, required=True, help="working days (halves allowed)")
    due.add_argument("--file", help="calendar file (default: LIENTHONG_CALENDAR_PATH)")
    ccheck = add("check", cmd_calendar_check, "load and check a calendar file", calendar_sub)
    ccheck.add_argument("path", nargs="?", help="default: LIENTHONG_CALENDAR_PATH")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chaos"]:
        # The chaos run has options of its own: hand them over untouched.
        from gateway.chaos import main as chaos_main

        return chaos_main(argv[1:])
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        gw_logging.configure(level=settings.log_level, fmt=settings.log_format)
        code: int = args.func(settings, args)
    except GatewayError as exc:
        sys.stderr.write(f"lienthong: {exc.detail}\n")
        return 2
    except OSError as exc:  # a file the command was told to read or write
        sys.stderr.write(f"lienthong: {exc.strerror}: {exc.filename}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
