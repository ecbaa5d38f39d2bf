"""``lienthong``: the command line. Errors end with one readable line and a non-zero exit."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway import logging as gw_logging
from gateway import topology as topo
from gateway.directory import load_directory
from gateway.envelope import AGENCY_CODE_RE, json_schema
from gateway.errors import GatewayError
from gateway.settings import REPO_ROOT, Settings

SCHEMA_PATH = REPO_ROOT / "schemas" / "envelope.schema.json"


def _agency(text: str) -> str:
    if not AGENCY_CODE_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an agency code like 000.00.00.H57")
    return text


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

    directory = load_directory(settings.directory_path,
                               allow_insecure_push=settings.allow_insecure_push)
    agency = directory.get(args.code)

    async def go() -> int:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        async with Store.open(settings.store_url) as store:
            cred_id, token = await store.issue_credential(agency.code, args.label)
        sys.stderr.write(f"credential {cred_id} for {agency.code} ({agency.name}); "
                         "the token is shown once:\n")
        sys.stdout.write(token + "\n")
        return 0

    return _run(go())


def cmd_credentials_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store.store import Store

    async def go() -> int:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        async with Store.open(settings.store_url) as store:
            count = await store.revoke_credentials(args.code, args.credential)
        if count == 0:
            sys.stderr.write(f"lienthong: no active credential of {args.code} to revoke\n")
            return 1
        sys.stdout.write(f"revoked {count} credential(s) of {args.code}\n")
        return 0

    return _run(go())


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
    issue = add("issue", cmd_credentials_issue, "print a new bearer token for an agency",
                creds_sub)
    issue.add_argument("code", type=_agency, help="agency code, e.g. 000.00.00.H57")
    issue.add_argument("--label", help="what the token is for (kept with its hash)")
    revoke = add("revoke", cmd_credentials_revoke, "end an agency's tokens", creds_sub)
    revoke.add_argument("code", type=_agency)
    revoke.add_argument("--credential", help="only this credential id (default: all)")

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

    directory = sub.add_parser("directory", help="the agency directory")
    directory_sub = directory.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = add("check", cmd_directory_check, "load and check a directory file", directory_sub)
    check.add_argument("path", nargs="?", help="default: LIENTHONG_DIRECTORY")
    return p


def main(argv: Sequence[str] | None = None) -> int:
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
