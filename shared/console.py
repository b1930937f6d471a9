"""The console's data layer (api/console): its sessions, and the reads its pages need that no
API has yet (contacts listed, messages counted over time; messages are searched through
`shared.messages.search`, as the API searches them).
Every rule the console applies to what it changes lives in the aggregate modules the APIs call
(`shared.broadcasts`, `shared.suppressions`, `shared.accept`, ...); this module only reads,
and keeps sessions."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Sequence

import asyncpg

from shared import cursors, db
from shared.sql import Q


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    org_id: uuid.UUID
    key_id: uuid.UUID
    key_hash: bytes
    csrf_token: str
    expires_at: dt.datetime


def token_hash(token: str) -> bytes:
    # The cookie's token carries 256 random bits: a fast hash is enough (as for API keys).
    return hashlib.sha256(token.encode()).digest()


@db.translated
async def open_session(
    pool: asyncpg.Pool, org_id: uuid.UUID, key_id: uuid.UUID, key_hash: bytes, lifetime_s: float
) -> str:
    """A new session for a signed-in key; returns the cookie's token (stored only as a hash)."""
    token = secrets.token_urlsafe(32)
    await pool.execute(Q.delete_expired_console_sessions)
    await pool.execute(
        Q.insert_console_session, token_hash(token), org_id, key_id, key_hash, secrets.token_urlsafe(32), lifetime_s
    )
    return token


@db.translated
async def find_session(pool: asyncpg.Pool, token: str) -> Session | None:
    row = await pool.fetchrow(Q.select_console_session, token_hash(token))
    if row is None:
        return None
    return Session(row["org_id"], row["key_id"], row["key_hash"], row["csrf_token"], row["expires_at"])


@db.translated
async def close_session(pool: asyncpg.Pool, token: str) -> None:
    await pool.execute(Q.delete_console_session, token_hash(token))


@db.translated
async def counts_over_time(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    broadcast_id: uuid.UUID | None,
    since: dt.datetime,
    bucket_s: int,
    *,
    test: bool,
) -> list[asyncpg.Record]:
    """(bucket start, status, n) for the messages (of one mode) created since `since`, oldest
    bucket first; buckets start at `since` and are `bucket_s` long."""
    rows: list[asyncpg.Record] = await db.fetch_custom_planned(
        pool, Q.message_counts_over_time, org_id, broadcast_id, since, bucket_s, test
    )
    return rows


@db.translated
async def contacts_page(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, address: str | None, cursor: str | None, limit: int
) -> tuple[Sequence[asyncpg.Record], str | None]:
    after_at, after_id = cursors.decode(cursor)
    rows = await pool.fetch(Q.select_contacts_page, org_id, address, after_at, after_id, limit + 1)
    return cursors.split_page(rows, limit)


@db.translated
async def broadcast_names(pool: asyncpg.Pool, org_id: uuid.UUID, limit: int = 200) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(Q.select_broadcast_names, org_id, limit)
    return rows
