"""Opaque keyset cursors: (created_at, id) of the last row, URL-safe base64.

Keyset pagination (not OFFSET) stays correct while new rows arrive: newer rows sort
before the cursor and never shift the pages a client is walking.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from shared import errors


def encode(created_at: dt.datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str | None) -> tuple[dt.datetime | None, uuid.UUID | None]:
    if not cursor:
        return None, None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, row_id = raw.partition("|")
        return dt.datetime.fromisoformat(at), uuid.UUID(row_id)
    except (ValueError, UnicodeDecodeError):
        raise errors.ValidationFailed("cursor is not valid", fields={"cursor": ["is not valid"]}) from None


def split_page(rows: Sequence[Any], limit: int) -> tuple[list[Any], str | None]:
    """Rows fetched with `LIMIT limit + 1` -> (the page, the cursor of the next one or None)."""
    page = list(rows[:limit])
    return page, encode(page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None


def parse_limit(raw: str | None, *, default: int = 50, maximum: int = 200) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= maximum:
        raise errors.ValidationFailed(
            f"limit must be between 1 and {maximum}", fields={"limit": [f"must be between 1 and {maximum}"]}
        )
    return value


def parse_uuid(raw: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise errors.ValidationFailed(f"{field} is not a valid id", fields={field: ["is not a valid id"]}) from None


# A position before every real row (created_at < infinity; the greatest id): the first page's
# "cursor" for statements whose keyset condition must never be NULL, so that it stays an index
# condition in a generic plan too (an `$n IS NULL OR ...` cannot be one).
TOP_AT = dt.datetime.max.replace(tzinfo=dt.UTC)
TOP_ID = uuid.UUID(int=(1 << 128) - 1)


def decode_from_top(cursor: str | None) -> tuple[dt.datetime, uuid.UUID]:
    """`decode`, with TOP_AT/TOP_ID for no cursor (the first page)."""
    at, row_id = decode(cursor)
    if at is None or row_id is None:
        return TOP_AT, TOP_ID
    return at, row_id
