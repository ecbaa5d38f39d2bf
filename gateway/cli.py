"""``lienthong``: the command line. Errors end with one readable line and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import logging as gw_logging
from gateway import topology as topo
from gateway.directory import load_directory
from gateway.envelope import AGENCY_CODE_RE, json_schema
from gateway.errors import GatewayError
from gateway.settings import REPO_ROOT, Settings, parse_duration

if TYPE_CHECKING:
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
    document = topo.definitions(topo.build(settings), vhost=args.vhost)
    _write(args.output, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return 0


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


def cmd_directory_check(settings: Settings, args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else settings.directory_path
    directory = load_directory(path, allow_insecure_push=settings.allow_insecure_push)
    by_level: dict[str, int] = {}
    for agency in directory.agencies.values():
        by_level[agency.level] = by_level.get(agency.level, 0) + 1
    summary = ", ".join(f"{n} {level}" for level, n in by_level.items())
    sys.stdout.write(f"{path}: {len(directory)} agencies ({summary})\n")
    return 0


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

    directory = sub.add_parser("directory", help="the agency directory")
    directory_sub = directory.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = add("check", cmd_directory_check, "load and check a directory file", directory_sub)
    check.add_argument("path", nargs="?", help="default: LIENTHONG_DIRECTORY")
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
