"""Messages as the Broadcasts API shows them: one with its timeline, and a broadcast's
recipients page. The message aggregate's read side; the send path writes messages and the
worker moves them along."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from shared import cursors, db, errors
from shared.sql import Q


def message_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "send_id": row["send_id"],
        "broadcast_id": row["broadcast_id"],
        "template_id": row["template_id"],
        "contact_id": row["contact_id"],
        "contact_channel_id": row["contact_channel_id"],
        "channel": row["channel"],
        "to": row["to_address"],
        "status": row["status"],
        "source": row["source"],
        "external_message_id": row["external_message_id"],
        "error": row["error"],
        "attempts": row["attempts"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "sent_at": row["sent_at"],
        "test": row["test"],
    }


@db.translated
async def get(pool: asyncpg.Pool, org_id: uuid.UUID, message_id: uuid.UUID, *, test: bool = False) -> dict[str, Any]:
    """One message of the org as JSON, with its events oldest first; only a test message for
    `test` (a test key), only a live one otherwise (another mode's is not found)."""
    row = await pool.fetchrow(Q.select_message, message_id, org_id, test)
    if row is None:
        raise errors.NotFound("no such message")
    out = message_json(row)
    out["events"] = timeline(row, await pool.fetch(Q.select_message_events, row["id"], row["created_at"]))
    return out


def timeline(message: Mapping[str, Any], stored: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A message's events as the API shows them. Since 0017 the service accepts a message
    under a v7 id and stores its acceptance event only when it says more than `queued`
    (scheduled, rejected, skipped, or with a detail), stamped with the message's created_at: such
    a message with no event at its created_at was accepted `queued` then, and its timeline
    begins so (one row less written per message: docs/design.md, "Partitioned messages"). A
    message of any other id stored whatever it was accepted with, and is shown as stored."""
    events = [dict(e) for e in stored]
    created_at = message["created_at"]
    if message["id"].version == 7 and not any(e["at"] == created_at for e in events):
        events.insert(0, {"status": "queued", "at": created_at, "detail": None})
    return events


@db.translated
async def recipients_page(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    broadcast_id: uuid.UUID,
    *,
    status: str | None,
    channel: str | None,
    contact_id: uuid.UUID | None,
    cursor: str | None,
    limit: int,
    test: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """A broadcast's messages as JSON, newest first, filtered (None: any), and the next cursor;
    only those of the key's mode (`test`)."""
    after_at, after_id = cursors.decode(cursor)
    rows = await db.fetch_custom_planned(
        pool,
        Q.select_recipients_page,
        broadcast_id,
        org_id,
        status,
        channel,
        contact_id,
        after_at,
        after_id,
        limit + 1,
        test,
    )
    chosen, next_cursor = cursors.split_page(rows, limit)
    return [message_json(r) for r in chosen], next_cursor


# ---- Search across both surfaces, and cancel ----

# No `since`: from the beginning of time (a value, not NULL, like the cursor: see cursors.TOP_AT).
_EARLIEST = dt.datetime.min.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class SearchFilters:
    """What `GET /orgs/{org_id}/messages` filters on; None: any."""

    to: str | None = None
    status: str | None = None
    channel: str | None = None
    broadcast_id: uuid.UUID | None = None
    source: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@db.translated
async def search(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    filters: SearchFilters,
    *,
    test: bool,
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """The org's messages of one mode (test or live) as JSON, newest first, filtered, and the
    next cursor. The most selective filter given picks the statement, so that each walks the
    index made for it (docs/design.md, "Message search")."""
    after_at, after_id = cursors.decode_from_top(cursor)
    f = filters
    args: list[Any] = [
        org_id,
        test,
        after_at,
        after_id,
        f.since or _EARLIEST,
        f.until or cursors.TOP_AT,
        f.status,
        f.channel,
        f.source,
        limit + 1,
        f.broadcast_id,
        f.to,
    ]
    # Every statement takes the same parameters; the most selective filter given picks the one
    # whose index it walks (an address, then a broadcast, then a status, else the timeline).
    if f.to is not None:
        statement = Q.search_messages_by_to
    elif f.broadcast_id is not None:
        statement = Q.search_messages_by_broadcast
    elif f.status is not None:
        statement = Q.search_messages_by_status
    else:
        statement = Q.search_messages
    rows = await db.fetch_custom_planned(pool, statement, *args)
    chosen, next_cursor = cursors.split_page(rows, limit)
    return [message_json(r) for r in chosen], next_cursor


@db.translated
async def cancel(pool: asyncpg.Pool, org_id: uuid.UUID, message_id: uuid.UUID, *, test: bool) -> dict[str, Any]:
    """A scheduled message -> canceled (its JSON); NotFound for another org's or mode's message,
    NotCancelable for any other status. Race-safe against the worker's claim: one conditional
    UPDATE decides (shared/sql/messages.sql, cancel_scheduled_message)."""
    row = await pool.fetchrow(Q.cancel_scheduled_message, message_id, org_id, test)
    if row is not None:
        return message_json(row)
    current = await pool.fetchrow(Q.select_message_of_mode, message_id, org_id, test)
    if current is None:
        raise errors.NotFound("no such message")
    raise errors.NotCancelable(
        f"only a scheduled message can be canceled; this one is {current['status']}",
        extra={"status": current["status"]},
    )
