"""The `tidings` operator CLI.

Ids and keys that a script needs go alone on the last line of stdout; everything else
(logs, hints) goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any

from shared import logs
from shared.config import Settings
from tidings import preflight


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    import uvloop

    return uvloop.run(coro)


def _need_database(settings: Settings) -> None:
    # One line naming the variable, never a traceback (tidings/preflight.py).
    preflight.require(settings, redis=False)


def _need_services(settings: Settings) -> None:
    preflight.require(settings)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    from shared.migrate import migrate

    _need_database(settings)
    applied = _run(migrate(settings.database_url))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none'}", file=sys.stderr)


def cmd_api(settings: Settings, args: argparse.Namespace) -> None:
    from api.main import run

    _need_services(settings)
    preflight.require_secret_key(settings)
    run(settings, host=args.host, port=args.port, processes=args.processes)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from worker.main import run

    _need_services(settings)
    preflight.require_secret_key(settings)
    run(settings)


def cmd_bounces(settings: Settings, args: argparse.Namespace) -> None:
    from bounces.server import run

    _need_database(settings)
    if not settings.bounce_domain:
        sys.exit("`tidings bounces` needs BOUNCE_DOMAIN (and BOUNCE_SECRET): the domain whose MX points at it")
    run(settings, host=args.host, port=args.port)


def cmd_org_create(settings: Settings, args: argparse.Namespace) -> None:
    from shared import db, orgs

    _need_database(settings)

    async def go() -> uuid.UUID:
        pool = await db.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            return await orgs.create_org(pool, args.name)
        finally:
            await pool.close()

    print(_run(go()))


def cmd_org_update(settings: Settings, args: argparse.Namespace) -> None:
    from shared import addresses, db, sending_domains

    _need_database(settings)
    try:
        org_id = uuid.UUID(args.org)
    except ValueError:
        sys.exit(f"--org takes an org id (a UUID), not {args.org!r}")
    from_email, from_name = args.from_email, args.from_name
    if from_email is None and from_name is None:
        sys.exit("nothing to change: give --from-email and/or --from-name")
    if from_email:
        try:
            from_email = addresses.normalize_email(from_email)
        except ValueError as exc:
            sys.exit(f"--from-email: {exc}")
        if "{{" in from_email or "{%" in from_email:  # `{` is legal in an address; Liquid markup is not
            sys.exit("--from-email: must be a plain address (no {{ or {%)")
    if from_name and ("{{" in from_name or "{%" in from_name or addresses.has_line_break(from_name)):
        # It is rendered as a template's from_name: no markup, no header injection.
        sys.exit("--from-name: must be plain text (no line break, no {{ or {%)")

    async def go() -> tuple[str | None, str | None]:
        pool = await db.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            row = await sending_domains.set_org_sender(pool, org_id, from_email=from_email, from_name=from_name)
        finally:
            await pool.close()
        if row is None:
            sys.exit(f"no org {org_id}")
        return row["from_email"], row["from_name"]

    email, name = _run(go())
    print(
        f"/api/v1 sends of org {org_id} come from {email or settings.default_from_email + ' (DEFAULT_FROM_EMAIL)'}"
        + (f", name {name!r}" if name else ""),
        file=sys.stderr,
    )


def cmd_key_create(settings: Settings, args: argparse.Namespace) -> None:
    from shared import db, keys, orgs

    _need_database(settings)
    try:
        scopes = keys.parse_scopes(args.scopes)
        org_id = uuid.UUID(args.org)
    except ValueError as exc:
        sys.exit(str(exc))

    async def go() -> str:
        pool = await db.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            if not await orgs.exists(pool, org_id):
                sys.exit(f"no org {org_id}")
            return await orgs.create_key(pool, org_id, scopes)
        finally:
            await pool.close()

    key = _run(go())
    print("the key is shown once; store it now", file=sys.stderr)
    print(key)


def cmd_send(settings: Settings, args: argparse.Namespace) -> None:
    from tidings.send import manual_send

    _need_services(settings)
    variables: dict[str, str] = {}
    for item in args.var or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            sys.exit(f"--var takes name=value, not {item!r}")
        variables[name] = value
    code = _run(
        manual_send(
            settings,
            org=args.org,
            broadcast=args.broadcast,
            email=args.email,
            phone=args.phone,
            contact_id=args.contact_id,
            contact_channel_id=args.contact_channel_id,
            name=args.name,
            variables=variables,
            template_ids=args.template_id,
            wait=not args.background,
        )
    )
    sys.exit(code)


def cmd_dev(settings: Settings, args: argparse.Namespace) -> None:
    try:
        from tidings.dev.stack import run_dev
    except ImportError as exc:  # the embedded servers and the inbox are an extra
        sys.exit(f"`tidings dev` needs the dev-stack extra (pip install 'tidings[dev-stack]'): {exc}")

    sys.exit(_run(run_dev()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tidings", description="transactional email and WhatsApp, tracked")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply the SQL migrations").set_defaults(fn=cmd_migrate)
    api = sub.add_parser("api", help="run the API (one process, or --processes N sharing the port)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--processes", type=int, help="processes sharing the port (default API_PROCESSES)")
    api.set_defaults(fn=cmd_api)
    sub.add_parser("worker", help="run one worker process").set_defaults(fn=cmd_worker)
    sub.add_parser("dev", help="the whole stack on this machine").set_defaults(fn=cmd_dev)
    bounce = sub.add_parser("bounces", help="run the SMTP server that reads bounces and complaints back")
    bounce.add_argument("--host", help="default BOUNCE_HOST")
    bounce.add_argument("--port", type=int, help="default BOUNCE_PORT")
    bounce.set_defaults(fn=cmd_bounces)

    org = sub.add_parser("org", help="orgs").add_subparsers(dest="org_command", required=True)
    org_create = org.add_parser("create", help="create an org; prints its id")
    org_create.add_argument("name")
    org_create.set_defaults(fn=cmd_org_create)
    org_update = org.add_parser("update", help="change an org's settings")
    org_update.add_argument("--org", required=True)
    org_update.add_argument(
        "--from-email", help="default sender of the org's /api/v1 sends ('' : back to DEFAULT_FROM_EMAIL)"
    )
    org_update.add_argument("--from-name", help="its display name ('' : none)")
    org_update.set_defaults(fn=cmd_org_update)

    key = sub.add_parser("key", help="API keys").add_subparsers(dest="key_command", required=True)
    key_create = key.add_parser("create", help="create a key; prints it once")
    key_create.add_argument("--org", required=True)
    key_create.add_argument("--scopes", default="read,write")
    key_create.set_defaults(fn=cmd_key_create)

    send = sub.add_parser("send", help="trigger a broadcast by hand (source: manual)")
    send.add_argument("--org", required=True)
    send.add_argument("--broadcast", required=True)
    send.add_argument("--email")
    send.add_argument("--phone")
    send.add_argument("--contact-id")
    send.add_argument("--contact-channel-id")
    send.add_argument("--name")
    send.add_argument("--var", action="append", metavar="NAME=VALUE")
    send.add_argument("--template-id", action="append")
    send.add_argument(
        "--background", action="store_true", help="return once the send is committed, without waiting for its outcome"
    )
    send.set_defaults(fn=cmd_send)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        sys.exit(f"configuration error: {exc}")
    logs.configure(settings.log_level, settings.log_format)
    try:
        args.fn(settings, args)
    except KeyboardInterrupt:
        # Ctrl-C before a command installed its own signal handling: no traceback.
        sys.exit(130)


if __name__ == "__main__":
    main()
