"""Monitoring: one message with its timeline, and a broadcast's recipients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from api.broadcasts import schemas
from api.jsonio import json_response
from api.routing import Call, route
from shared import cursors, errors
from shared.domain import Channel, MessageStatus
from shared.sql import Q

TAG = "monitoring"


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
    }


@route(
    "GET",
    "/orgs/{org_id}/messages/{message_id}",
    summary="One message with its event timeline",
    scope="read",
    tag=TAG,
    response=schemas.MessageOut,
)
async def get_message(call: Call[None]) -> web.Response:
    pool = call.state.pool
    row = await pool.fetchrow(Q.select_message, call.path_uuid("message_id"), call.org_id)
    if row is None:
        raise errors.NotFound("no such message")
    out = message_json(row)
    out["events"] = [dict(e) for e in await pool.fetch(Q.select_message_events, row["id"])]
    return json_response(out)


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
    if await pool.fetchrow(Q.select_broadcast, broadcast_id, call.org_id) is None:
        raise errors.NotFound("no such broadcast")
    status = _enum_filter(q.get("status"), MessageStatus, "status")
    channel = _enum_filter(q.get("channel"), Channel, "channel")
    contact_id = None
    if q.get("contact_id"):
        contact_id = cursors.parse_uuid(q["contact_id"], "contact_id")
    limit = cursors.parse_limit(q.get("limit"))
    after_at, after_id = cursors.decode(q.get("cursor"))
    rows = await pool.fetch(
        Q.select_recipients_page, broadcast_id, call.org_id, status, channel, contact_id, after_at, after_id, limit + 1
    )
    page, next_cursor = cursors.split_page(rows, limit)
    return json_response({"data": [message_json(r) for r in page], "next_cursor": next_cursor})
