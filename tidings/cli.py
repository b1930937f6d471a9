"""The `tidings` operator CLI.

Ids and keys that a script needs go alone on the last line of stdout; everything else
(logs, hints) goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from shared import logs
from shared.config import Settings
from tidings import preflight

T = TypeVar("T")


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


def _with_pool(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run `fn(pool)` against a small pool made for one command; a domain error (no such org,
    no such key) ends the command with its message, never a traceback."""
    from shared import db, errors

    async def go() -> T:
        pool = await db.create_pool(settings.database_url, min_size=1, max_size=2)
        try:
            return await fn(pool)
        finally:
            await pool.close()

    try:
        result: T = _run(go())
    except errors.TidingsError as exc:
        sys.exit(exc.message)
    return result


def _org_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        sys.exit(f"--org takes an org id (a UUID), not {raw!r}")


def cmd_key_create(settings: Settings, args: argparse.Namespace) -> None:
    from shared import keys, orgs
    from shared.domain import KeyMode

    _need_database(settings)
    try:
        scopes = keys.parse_scopes(args.scopes)
    except ValueError as exc:
        sys.exit(str(exc))
    org_id = _org_id(args.org)
    mode = KeyMode.test if args.test else KeyMode.live

    async def go(pool: Any) -> str:
        if not await orgs.exists(pool, org_id):
            sys.exit(f"no org {org_id}")
        return await orgs.create_key(pool, org_id, scopes, name=args.name, mode=mode)

    key = _with_pool(settings, go)
    print("the key is shown once; store it now", file=sys.stderr)
    if mode is KeyMode.test:
        print("a test key: its sends run the whole pipeline but reach no mail server or WhatsApp", file=sys.stderr)
    print(key)


def cmd_key_list(settings: Settings, args: argparse.Namespace) -> None:
    from shared import orgs

    _need_database(settings)
    org_id = _org_id(args.org)

    async def go(pool: Any) -> list[dict[str, Any]]:
        if not await orgs.exists(pool, org_id):
            sys.exit(f"no org {org_id}")
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            page, cursor = await orgs.keys_page(pool, org_id, cursor=cursor, limit=200)
            found.extend(page)
            if cursor is None:
                return found

    # One key a line, tab-separated, newest first; never the key itself (only its hash is kept).
    columns = ("id", "prefix", "mode", "scopes", "name", "created_at", "last_used_at", "revoked_at")
    print("\t".join(columns))
    for key in _with_pool(settings, go):
        cells = {**key, "scopes": ",".join(key["scopes"])}
        print("\t".join("-" if cells[c] is None else str(cells[c]) for c in columns))


def cmd_key_revoke(settings: Settings, args: argparse.Namespace) -> None:
    from shared import orgs

    _need_database(settings)
    org_id = _org_id(args.org)
    try:
        key_id = uuid.UUID(args.key_id)
    except ValueError:
        sys.exit(f"KEY_ID is a key's id (a UUID, see `tidings key list`), not {args.key_id!r}")
    _with_pool(settings, lambda pool: orgs.revoke_key(pool, org_id, key_id))
    print(f"revoked {key_id}; every api process refuses it within KEY_CACHE_TTL_S", file=sys.stderr)


def cmd_org_update(settings: Settings, args: argparse.Namespace) -> None:
    """Each option changes one setting of the org; options not given are left as they are."""
    from shared import addresses, orgs, sending_domains

    _need_database(settings)
    org_id = _org_id(args.org)
    changes: list[Callable[[Any], Awaitable[Any]]] = []
    if args.rate_limit is not None:
        try:
            budget = orgs.parse_rate_limit(args.rate_limit)
        except ValueError as exc:
            sys.exit(str(exc))
        changes.append(lambda pool: orgs.set_rate_limit(pool, org_id, budget))
    if args.retention_days is not None:
        try:
            days = orgs.parse_retention_days(args.retention_days)
        except ValueError as exc:
            sys.exit(str(exc))
        changes.append(lambda pool: orgs.set_retention_days(pool, org_id, days))
    from_email, from_name = args.from_email, args.from_name
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
    sender: list[tuple[str | None, str | None]] = []  # the /api/v1 sender after the change, to print
    if from_email is not None or from_name is not None:

        async def set_sender(pool: Any) -> None:
            row = await sending_domains.set_org_sender(pool, org_id, from_email=from_email, from_name=from_name)
            if row is None:
                sys.exit(f"no org {org_id}")
            sender.append((row["from_email"], row["from_name"]))

        changes.append(set_sender)
    if not changes:
        sys.exit("nothing to change: give at least one option (see `tidings org update --help`)")

    async def go(pool: Any) -> None:
        if not await orgs.exists(pool, org_id):
            sys.exit(f"no org {org_id}")
        for change in changes:
            await change(pool)

    _with_pool(settings, go)
    if sender:
        email, name = sender[0]
        print(
            f"/api/v1 sends of org {org_id} come from {email or settings.default_from_email + ' (DEFAULT_FROM_EMAIL)'}"
            + (f", name {name!r}" if name else ""),
            file=sys.stderr,
        )
    print(f"updated org {org_id}; the api applies it within KEY_CACHE_TTL_S", file=sys.stderr)


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
    # One option per setting; each is optional and only those given change (cmd_org_update).
    org_update = org.add_parser("update", help="change an org's settings (only the options given)")
    org_update.add_argument("--org", required=True)
    org_update.add_argument(
        "--rate-limit",
        metavar="N/SECONDS",
        help="the org's send budget: N requests per SECONDS-second window (`default`: the service-wide one)",
    )
    org_update.add_argument(
        "--retention-days",
        metavar="DAYS",
        help="days the org's message content is kept before the reconciler erases it (`default`: RETENTION_DAYS)",
    )
    org_update.add_argument(
        "--from-email", help="default sender of the org's /api/v1 sends ('' : back to DEFAULT_FROM_EMAIL)"
    )
    org_update.add_argument("--from-name", help="its display name ('' : none)")
    org_update.set_defaults(fn=cmd_org_update)

    key = sub.add_parser("key", help="API keys").add_subparsers(dest="key_command", required=True)
    key_create = key.add_parser("create", help="create a key; prints it once")
    key_create.add_argument("--org", required=True)
    key_create.add_argument("--scopes", default="read,write")
    key_create.add_argument("--name", help="what the key is for, shown in `key list`")
    key_create.add_argument(
        "--test", action="store_true", help="a test key (tdg_test_...): its sends reach no mail server or WhatsApp"
    )
    key_create.set_defaults(fn=cmd_key_create)
    key_list = key.add_parser("list", help="list an org's keys (prefix, mode, last use; never the key)")
    key_list.add_argument("--org", required=True)
    key_list.set_defaults(fn=cmd_key_list)
    key_revoke = key.add_parser("revoke", help="revoke a key: refused within KEY_CACHE_TTL_S")
    key_revoke.add_argument("--org", required=True)
    key_revoke.add_argument("key_id", metavar="KEY_ID")
    key_revoke.set_defaults(fn=cmd_key_revoke)

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
