"""Orgs and their API keys (used by the CLI, `tidings dev` and tests)."""

from __future__ import annotations

import uuid

import asyncpg

from shared import keys
from shared.sql import Q


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


async def create_key(conn: asyncpg.Connection | asyncpg.Pool, org_id: uuid.UUID, scopes: list[str]) -> str:
    """Create a key and return it: the only time it is ever visible."""
    key = keys.generate()
    await conn.execute(Q.insert_api_key, uuid.uuid4(), org_id, keys.hash_key(key), keys.display_prefix(key), scopes)
    return key
