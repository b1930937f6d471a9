"""Orgs and their API keys: created by the CLI, `tidings dev`, tests and the keys API; a key
is looked up by its hash on every request the api authenticates (`api.auth`)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from shared import cursors, db, errors, keys
from shared.domain import KeyMode
from shared.sql import Q


@db.translated
async def create_org(
    conn: asyncpg.Connection | asyncpg.Pool,
    name: str,
    *,
    rate_limit_requests: int | None = None,
    rate_limit_window_s: int | None = None,
) -> uuid.UUID:
    row = await conn.fetchrow(Q.insert_org, uuid.uuid4(), name, rate_limit_requests, rate_limit_window_s)
    assert row is not None
    org_id: uuid.UUID = row["id"]
    return org_id


@db.translated
async def create_key(
    conn: asyncpg.Connection | asyncpg.Pool,
    org_id: uuid.UUID,
    scopes: list[str],
    *,
    name: str | None = None,
    mode: KeyMode = KeyMode.live,
) -> str:
    """Create a key and return it: the only time it is ever visible."""
    return str((await create_key_record(conn, org_id, scopes, name=name, mode=mode))["key"])


@db.translated
async def create_key_record(
    conn: asyncpg.Connection | asyncpg.Pool,
    org_id: uuid.UUID,
    scopes: list[str],
    *,
    name: str | None = None,
    mode: KeyMode = KeyMode.live,
) -> dict[str, Any]:
    """Create a key; its listing fields with `key`, the key itself (shown this once)."""
    key = keys.generate(mode)
    row = await conn.fetchrow(
        Q.insert_api_key,
        uuid.uuid4(),
        org_id,
        keys.hash_key(key),
        keys.display_prefix(key),
        sorted(set(scopes)),
        name,
        str(mode),
    )
    assert row is not None
    out = key_json(row)
    del out["last_used_at"], out["revoked_at"]
    out["key"] = key
    return out


def key_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A key as listed: never the key itself (only its hash is stored)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "scopes": list(row["scopes"]),
        "mode": row["mode"],
        "prefix": row["prefix"],
        "created_at": row["created_at"],
        "last_used_at": row.get("last_used_at"),
        "revoked_at": row.get("revoked_at"),
    }


@db.translated
async def keys_page(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The org's keys newest first, revoked ones too, and the next page's cursor."""
    after_at, after_id = cursors.decode(cursor)
    rows = await pool.fetch(Q.select_keys_page, org_id, after_at, after_id, limit + 1)
    page, next_cursor = cursors.split_page(rows, limit)
    return [key_json(dict(r)) for r in page], next_cursor


@db.translated
async def revoke_key(pool: asyncpg.Pool, org_id: uuid.UUID, key_id: uuid.UUID) -> None:
    """Revoke a key of the org (revoking it again is no error); NotFound for another org's or
    an unknown key. Every api process refuses it once its cached entry expires (`api.auth`)."""
    if await pool.fetchrow(Q.revoke_api_key, key_id, org_id) is None:
        raise errors.NotFound("no such API key")


@db.translated
async def touch_keys(pool: asyncpg.Pool, used: Mapping[uuid.UUID, dt.datetime]) -> None:
    """Record the keys' last use (key id -> when), all in one statement."""
    if used:
        await pool.execute(Q.touch_api_keys, list(used), list(used.values()))


@db.translated
async def exists(conn: asyncpg.Connection | asyncpg.Pool, org_id: uuid.UUID) -> bool:
    return await conn.fetchrow(Q.select_org, org_id) is not None


@db.translated
async def find_key(conn: asyncpg.Connection | asyncpg.Pool, key_hash: bytes) -> asyncpg.Record | None:
    """A live key by its hash, with its org's rate limit; None for an unknown or revoked key."""
    row: asyncpg.Record | None = await conn.fetchrow(Q.select_key_by_hash, key_hash)
    return row


@db.translated
async def set_rate_limit(
    conn: asyncpg.Connection | asyncpg.Pool, org_id: uuid.UUID, budget: tuple[int, int] | None
) -> asyncpg.Record:
    """Set the org's send budget, (requests, window in seconds); None: back to the
    service-wide default. The api applies it within KEY_CACHE_TTL_S (it is cached with the key)."""
    requests, window_s = budget if budget is not None else (None, None)
    row: asyncpg.Record | None = await conn.fetchrow(Q.update_org_rate_limit, org_id, requests, window_s)
    if row is None:
        raise errors.NotFound(f"no org {org_id}")
    return row


def parse_rate_limit(text: str) -> tuple[int, int] | None:
    """`N/SECONDS` (N requests per SECONDS-second window) -> (N, SECONDS); `default` -> None."""
    if text.strip().lower() == "default":
        return None
    requests, sep, window = text.partition("/")
    try:
        n, seconds = int(requests), int(window)
    except ValueError:
        n = seconds = 0
    # Postgres integer columns: a budget past 2^31 is refused here, not by the database.
    if not sep or not 0 < n < 2**31 or not 0 < seconds < 2**31:
        raise ValueError(f"--rate-limit takes N/SECONDS with positive whole numbers, e.g. 1000/60 (got {text!r})")
    return n, seconds


@db.translated
async def set_retention_days(conn: asyncpg.Connection | asyncpg.Pool, org_id: uuid.UUID, days: int | None) -> None:
    """How many days the org's message content is kept (None: RETENTION_DAYS). The operator's
    setting, not the tenant's: no API route changes it."""
    if days is not None and days < 1:
        raise errors.ValidationFailed("retention days must be at least 1", fields={"retention_days": ["must be >= 1"]})
    if await conn.fetchrow(Q.update_org_retention_days, org_id, days) is None:
        raise errors.NotFound("no such org")


def parse_retention_days(text: str) -> int | None:
    """`DAYS` (a whole number, at least 1) -> DAYS; `default` -> None (RETENTION_DAYS)."""
    if text.strip().lower() == "default":
        return None
    try:
        days = int(text)
    except ValueError:
        days = 0
    # A Postgres integer column: a number past 2^31 is refused here, not by the database.
    if not 0 < days < 2**31:
        raise ValueError(f"--retention-days takes a whole number of days, at least 1, or default (got {text!r})")
    return days
