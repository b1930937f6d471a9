"""Orgs and their API keys: created by the CLI, `tidings dev` and tests; a key is looked up by
its hash on every request the api authenticates (`api.auth`)."""

from __future__ import annotations

import uuid

import asyncpg

from shared import db, keys
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
async def create_key(conn: asyncpg.Connection | asyncpg.Pool, org_id: uuid.UUID, scopes: list[str]) -> str:
    """Create a key and return it: the only time it is ever visible."""
    key = keys.generate()
    await conn.execute(Q.insert_api_key, uuid.uuid4(), org_id, keys.hash_key(key), keys.display_prefix(key), scopes)
    return key


@db.translated
async def exists(conn: asyncpg.Connection | asyncpg.Pool, org_id: uuid.UUID) -> bool:
    return await conn.fetchrow(Q.select_org, org_id) is not None


@db.translated
async def find_key(conn: asyncpg.Connection | asyncpg.Pool, key_hash: bytes) -> asyncpg.Record | None:
    """A live key by its hash, with its org's rate limit; None for an unknown or revoked key."""
    row: asyncpg.Record | None = await conn.fetchrow(Q.select_key_by_hash, key_hash)
    return row
