"""Start-up checks: every misconfiguration is one line naming the variable, and a non-zero exit.

An operator who forgets REDIS_URL or points DATABASE_URL at the wrong host should read what
to fix, not a 40-line traceback from inside a connection pool. `tidings api`, `worker`,
`send` and `migrate` call `require` before they build anything: it checks the URLs' shapes,
then connects once to Postgres (bounded, so a host that drops packets cannot hang the start),
and exits with one line on the first problem. Redis is only warned about when unreachable:
api and worker are built to run through a Redis outage (delivery is driven from Postgres),
so a restart during one must not fail. Secrets in a URL (its password) never appear.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import urllib.parse
from typing import NoReturn

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, RedisError

from shared.config import Settings

# Long enough for a server across a network, short enough that a wrong host is told at once.
CONNECT_TIMEOUT_S = 5.0

_POSTGRES_SCHEMES = ("postgres", "postgresql")
_REDIS_SCHEMES = ("redis", "rediss", "unix")


def fail(message: str) -> NoReturn:
    sys.exit(f"configuration error: {message}")


def require(settings: Settings, *, database: bool = True, redis: bool = True) -> None:
    """Exit with one line if the command's services are not configured or not reachable."""
    problems = (check_database_url(settings.database_url) if database else []) + (
        check_redis_url(settings.redis_url) if redis else []
    )
    if problems:
        fail(problems[0])
    try:
        problems, warnings = asyncio.run(_reach(settings, database=database, redis=redis))
    except KeyboardInterrupt:
        sys.exit(130)
    for warning in warnings:
        print(f"configuration warning: {warning}", file=sys.stderr)
    if problems:
        fail(problems[0])


async def _reach(settings: Settings, *, database: bool, redis: bool) -> tuple[list[str], list[str]]:
    problems = await _reach_database(settings.database_url) if database else []
    warnings = []
    if redis and not problems:
        warnings = [w + " (starting anyway: Redis is waited for)" for w in await _reach_redis(settings.redis_url)]
    return problems, warnings


def check_database_url(url: str) -> list[str]:
    if not url:
        return ["DATABASE_URL is not set (only `tidings dev` starts an embedded Postgres)"]
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _POSTGRES_SCHEMES:
        return [f"DATABASE_URL must start with postgresql:// (not {scheme + '://' if scheme else 'no scheme'})"]
    return []


def check_redis_url(url: str) -> list[str]:
    if not url:
        return ["REDIS_URL is not set (only `tidings dev` starts an embedded Redis)"]
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in _REDIS_SCHEMES:
        given = f"{scheme}://" if scheme else "no scheme"
        return [f"REDIS_URL must start with redis://, rediss:// or unix:// (not {given})"]
    return []


def where(url: str) -> str:
    """host:port/path of a URL, without its user or password."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "localhost"
    return f"{host}:{port}{parts.path}" if port else f"{host}{parts.path}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT_S:g} s"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text


async def _reach_database(url: str) -> list[str]:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S), CONNECT_TIMEOUT_S + 1)
    except asyncpg.InvalidPasswordError:
        return [f"DATABASE_URL: Postgres at {where(url)} refused the user or password"]
    except asyncpg.InvalidCatalogNameError:
        return [f"DATABASE_URL: Postgres at {where(url)} has no such database"]
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        return [f"DATABASE_URL: cannot connect to Postgres at {where(url)}: {_reason(exc)}"]
    await conn.close()
    return []


async def _reach_redis(url: str) -> list[str]:
    try:
        client: Redis = Redis.from_url(url, socket_timeout=CONNECT_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S)
    except ValueError as exc:
        return [f"REDIS_URL is not a valid Redis URL: {_reason(exc)}"]
    try:
        await asyncio.wait_for(client.ping(), CONNECT_TIMEOUT_S + 1)
    except AuthenticationError:
        return [f"REDIS_URL: Redis at {where(url)} refused the password"]
    except (OSError, TimeoutError, RedisError, ValueError) as exc:
        return [f"REDIS_URL: cannot connect to Redis at {where(url)}: {_reason(exc.__cause__ or exc)}"]
    finally:
        await client.aclose()
    return []


def require_secret_key(settings: Settings) -> None:
    """`tidings api` and `worker`, after `require`: once sending domains exist, their DKIM keys
    are stored under SECRET_KEY, so a missing or wrong one is a start-up error (one line), not
    failed sends later. Nothing is checked while no domain is registered."""
    from shared import sending_domains

    async def check() -> str | None:
        conn = await asyncio.wait_for(
            asyncpg.connect(settings.database_url, timeout=CONNECT_TIMEOUT_S), CONNECT_TIMEOUT_S + 1
        )
        try:
            return await sending_domains.secret_key_problem(conn, settings.secret_key)
        finally:
            await conn.close()

    try:
        problem = asyncio.run(check())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # Postgres went away since `require`: say so in one line too
        fail(f"DATABASE_URL: cannot check the stored DKIM keys at {where(settings.database_url)}: {_reason(exc)}")
    if problem:
        fail(problem)
