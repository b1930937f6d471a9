"""Monitoring: one message with its timeline, a broadcast's recipients, search across both
surfaces, and canceling a scheduled message."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from api.broadcasts import schemas
from api.jsonio import json_response
from api.routing import Call, route
from shared import broadcasts, cursors, errors, messages
from shared.domain import Channel, MessageSource, MessageStatus

TAG = "monitoring"


@route(
    "GET",
    "/orgs/{org_id}/messages/{message_id}",
    summary="One message with its event timeline",
    scope="read",
    tag=TAG,
    response=schemas.MessageOut,
)
async def get_message(call: Call[None]) -> web.Response:
    key = call.key
    assert key is not None
    return json_response(await messages.get(call.state.pool, call.org_id, call.path_uuid("message_id"), test=key.test))


def _enum_filter(raw: str | None, allowed: type[MessageStatus] | type[Channel], field: str) -> str | None:
    if raw is None or raw == "":
        return None
    if raw not in allowed.__members__:
        choices = ", ".join(allowed.__members__)
        raise errors.ValidationFailed(
            f"{field} must be one of {choices}", fields={field: [f"must be one of {choices}"]}
        )
    return raw


@route(
    "GET",
    "/orgs/{org_id}/broadcasts/{broadcast_id}/recipients",
    summary="Every triggered message of a broadcast, newest first",
    scope="read",
    tag=TAG,
    response=schemas.MessageList,
    query=("status", "channel", "contact_id", "limit", "cursor"),
)
async def list_recipients(call: Call[None]) -> web.Response:
    q = call.request.query
    broadcast_id = call.path_uuid("broadcast_id")
    pool = call.state.pool
    # A missing broadcast is answered before any filter is judged.
    await broadcasts.ensure_exists(pool, call.org_id, broadcast_id)
    status = _enum_filter(q.get("status"), MessageStatus, "status")
    channel = _enum_filter(q.get("channel"), Channel, "channel")
    contact_id = None
    if q.get("contact_id"):
        contact_id = cursors.parse_uuid(q["contact_id"], "contact_id")
    limit = cursors.parse_limit(q.get("limit"))
    page, next_cursor = await messages.recipients_page(
        pool,
        call.org_id,
        broadcast_id,
        status=status,
        channel=channel,
        contact_id=contact_id,
        cursor=q.get("cursor"),
        limit=limit,
        test=call.key is not None and call.key.test,
    )
    return json_response({"data": page, "next_cursor": next_cursor})


# ---- Search across both surfaces, and cancel ----

SEARCH_MAX_LIMIT = 100
# Longer than any email address (RFC 5321: 254) or phone number, with room to spare.
MAX_TO_CHARS = 512


def _text_filter(raw: str | None, field: str) -> str | None:
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip()
    # A NUL or a lone surrogate (bytes that were not UTF-8) cannot be stored, so matches nothing
    # stored either: refuse it clearly rather than let the driver fail.
    if len(value) > MAX_TO_CHARS or not value.isprintable():
        raise errors.ValidationFailed(
            f"{field} must be an address of at most {MAX_TO_CHARS} printable characters",
            fields={field: [f"must be an address of at most {MAX_TO_CHARS} printable characters"]},
        )
    return value


def _time_filter(raw: str | None, field: str) -> dt.datetime | None:
    """An RFC 3339 time (a time without an offset is taken as UTC)."""
    if raw is None or raw == "":
        return None
    try:
        value = dt.datetime.fromisoformat(raw.strip())
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        raise errors.ValidationFailed(
            f"{field} must be an RFC 3339 time, like 2026-01-31T09:00:00Z",
            fields={field: ["must be an RFC 3339 time, like 2026-01-31T09:00:00Z"]},
        ) from None


@route(
    "GET",
    "/orgs/{org_id}/messages",
    summary="Search every message of the org, both surfaces, newest first",
    scope="read",
    tag=TAG,
    response=schemas.MessageList,
    query=("to", "status", "channel", "broadcast_id", "source", "since", "until", "limit", "cursor"),
)
async def search_messages(call: Call[None]) -> web.Response:
    q = call.request.query
    broadcast_id = None
    if q.get("broadcast_id"):
        broadcast_id = cursors.parse_uuid(q["broadcast_id"], "broadcast_id")
    source = q.get("source") or None
    if source is not None and source not in MessageSource.__members__:
        choices = ", ".join(MessageSource.__members__)
        raise errors.ValidationFailed(
            f"source must be one of {choices}", fields={"source": [f"must be one of {choices}"]}
        )
    filters = messages.SearchFilters(
        to=_text_filter(q.get("to"), "to"),
        status=_enum_filter(q.get("status"), MessageStatus, "status"),
        channel=_enum_filter(q.get("channel"), Channel, "channel"),
        broadcast_id=broadcast_id,
        source=source,
        since=_time_filter(q.get("since"), "since"),
        until=_time_filter(q.get("until"), "until"),
    )
    limit = cursors.parse_limit(q.get("limit"), maximum=SEARCH_MAX_LIMIT)
    # A key finds only the messages of its own mode (test or live).
    page, next_cursor = await messages.search(
        call.state.pool,
        call.org_id,
        filters,
        test=call.key is not None and call.key.test,
        cursor=q.get("cursor"),
        limit=limit,
    )
    return json_response({"data": page, "next_cursor": next_cursor})


@route(
    "POST",
    "/orgs/{org_id}/messages/{message_id}/cancel",
    summary="Cancel a scheduled message (409 not_cancelable for any other status)",
    scope="write",
    tag=TAG,
    response=schemas.MessageOut,
    error_statuses=(409,),
)
async def cancel_message(call: Call[None]) -> web.Response:
    # A key cancels only messages of its own mode; another mode's is not found (404).
    row = await messages.cancel(
        call.state.pool, call.org_id, call.path_uuid("message_id"), test=call.key is not None and call.key.test
    )
    return json_response(row)
