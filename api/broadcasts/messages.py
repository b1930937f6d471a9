"""Monitoring: one message with its timeline, and a broadcast's recipients."""

from __future__ import annotations

from aiohttp import web

from api.broadcasts import schemas
from api.jsonio import json_response
from api.routing import Call, route
from shared import broadcasts, cursors, errors, messages
from shared.domain import Channel, MessageStatus

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
