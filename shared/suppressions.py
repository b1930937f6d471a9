"""The suppression list: addresses nothing is sent to, whatever the API or the contact.

Entries are whole addresses, lower-cased, one per org. The worker adds `hard_bounce`
entries itself (an SMTP 5xx on the recipient or the data); the Transactionals API adds
and removes entries by hand and lists them.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

import asyncpg

from shared import db, errors
from shared.sql import Q


class Reason(StrEnum):
    hard_bounce = "hard_bounce"
    complaint = "complaint"
    manual = "manual"


def rejection_error(reason: str) -> str:
    return f"the address is on the suppression list ({reason}); nothing was sent"


def entry_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"email": row["email"], "reason": row["reason"], "detail": row["detail"], "created_at": row["created_at"]}


def key(email: str) -> str:
    """Suppression is by the whole address, lower-cased."""
    return email.strip().lower()


@db.translated
async def reason_for(db: asyncpg.Pool | asyncpg.Connection, org_id: uuid.UUID, email: str) -> str | None:
    reason: str | None = await db.fetchval(Q.select_suppression, org_id, key(email))
    return reason


@db.translated
async def add(pool: asyncpg.Pool, org_id: uuid.UUID, email: str, reason: str) -> tuple[asyncpg.Record, bool]:
    """Suppress an address; returns the entry and whether it is new. Messages to it that have
    not reached a worker yet (scheduled sends above all) are rejected in the same transaction."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(Q.add_suppression, org_id, key(email), reason, "added through the API")
        created = row is not None
        if row is None:
            row = await conn.fetchrow(Q.select_suppression_entry, org_id, key(email))
        assert row is not None
        await conn.fetch(Q.reject_unsent_to_address, org_id, key(email), rejection_error(row["reason"]))
    return row, created


@db.translated
async def remove(pool: asyncpg.Pool, org_id: uuid.UUID, email: str) -> None:
    if await pool.fetchval(Q.remove_suppression, org_id, key(email)) is None:
        raise errors.NotFound("this address is not on the suppression list")


@db.translated
async def page(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, reason: str | None, cursor: str | None, limit: int
) -> tuple[list[asyncpg.Record], str | None]:
    after_at, after_email = decode_cursor(cursor)
    rows = await pool.fetch(Q.select_suppressions_page, org_id, reason, after_at, after_email, limit + 1)
    chosen = list(rows[:limit])
    next_cursor = encode_cursor(chosen[-1]["created_at"], chosen[-1]["email"]) if len(rows) > limit else None
    return chosen, next_cursor


# Keyset cursors on (created_at, email), opaque to clients, like shared.cursors on (created_at, id).
def encode_cursor(created_at: dt.datetime, email: str) -> str:
    raw = f"{created_at.isoformat()}|{email}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[dt.datetime | None, str | None]:
    if not cursor:
        return None, None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, sep, email = raw.partition("|")
        if not sep:
            raise ValueError(cursor)
        return dt.datetime.fromisoformat(at), email
    except (ValueError, UnicodeDecodeError):
        raise errors.ValidationFailed("cursor is not valid", fields={"cursor": ["is invalid"]}) from None
