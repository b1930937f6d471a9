"""Broadcast configuration: create, list, read, update, templates, activate/pause/resume."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from aiohttp import web

from api.broadcasts import schemas
from api.jsonio import json_response, validation_error
from api.routing import Call, route
from shared import broadcasts, cursors, errors
from shared.domain import BroadcastStatus
from shared.sql import Q

TAG = "broadcasts"


async def _one(call: Call[Any], broadcast_id: uuid.UUID) -> web.Response:
    row = await call.state.pool.fetchrow(Q.select_broadcast, broadcast_id, call.org_id)
    if row is None:
        raise errors.NotFound("no such broadcast")
    (full,) = await broadcasts.load_full(call.state.pool, [row])
    return json_response(full)


@route(
    "POST",
    "/orgs/{org_id}/broadcasts",
    summary="Create a broadcast (draft)",
    scope="admin",
    tag=TAG,
    body=schemas.BroadcastCreate,
    response=schemas.BroadcastOut,
    status=201,
)
async def create_broadcast(call: Call[schemas.BroadcastCreate]) -> web.Response:
    variables = msgspec.to_builtins(call.body.variables)
    for v in variables:
        v.setdefault("default", None)
    broadcasts.check_variables(variables)
    row = await call.state.pool.fetchrow(
        Q.insert_broadcast, uuid.uuid4(), call.org_id, call.body.name, call.body.type, variables
    )
    assert row is not None
    (full,) = await broadcasts.load_full(call.state.pool, [row])
    return json_response(full, status=201)


@route(
    "GET",
    "/orgs/{org_id}/broadcasts",
    summary="List broadcasts, newest first",
    scope="read",
    tag=TAG,
    response=schemas.BroadcastList,
    query=("limit", "cursor"),
)
async def list_broadcasts(call: Call[None]) -> web.Response:
    limit = cursors.parse_limit(call.request.query.get("limit"))
    after_at, after_id = cursors.decode(call.request.query.get("cursor"))
    rows = await call.state.pool.fetch(Q.select_broadcasts_page, call.org_id, after_at, after_id, limit + 1)
    page, next_cursor = cursors.split_page(rows, limit)
    return json_response({"data": await broadcasts.load_full(call.state.pool, page), "next_cursor": next_cursor})


@route(
    "GET",
    "/orgs/{org_id}/broadcasts/{broadcast_id}",
    summary="One broadcast with readiness and summary",
    scope="read",
    tag=TAG,
    response=schemas.BroadcastOut,
)
async def get_broadcast(call: Call[None]) -> web.Response:
    return await _one(call, call.path_uuid("broadcast_id"))


@route(
    "PATCH",
    "/orgs/{org_id}/broadcasts/{broadcast_id}",
    summary="Change name and variables",
    scope="admin",
    tag=TAG,
    body=schemas.BroadcastUpdate,
    response=schemas.BroadcastOut,
)
async def update_broadcast(call: Call[schemas.BroadcastUpdate]) -> web.Response:
    broadcast_id = call.path_uuid("broadcast_id")
    body = call.body
    async with call.state.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(Q.select_broadcast_for_update, broadcast_id, call.org_id)
        if row is None:
            raise errors.NotFound("no such broadcast")
        if body.type is not msgspec.UNSET and body.type != row["type"]:
            raise errors.TypeImmutable(fields={"type": ["cannot change after creation"]})
        variables = None
        if body.variables is not msgspec.UNSET:
            variables = msgspec.to_builtins(body.variables)
            for v in variables:
                v.setdefault("default", None)
            broadcasts.check_variables(variables)
        name = None if body.name is msgspec.UNSET else body.name
        await conn.execute(Q.update_broadcast, broadcast_id, call.org_id, name, variables)
    call.state.broadcast_cache.invalidate(call.org_id, broadcast_id)
    return await _one(call, broadcast_id)


@route(
    "POST",
    "/orgs/{org_id}/broadcasts/{broadcast_id}/templates",
    summary="Add a channel template",
    scope="admin",
    tag=TAG,
    body=schemas.TemplateIn,
    response=schemas.TemplateOut,
    status=201,
)
async def create_template(call: Call[schemas.TemplateIn]) -> web.Response:
    broadcast_id = call.path_uuid("broadcast_id")
    channel = "email" if isinstance(call.body, schemas.EmailTemplateIn) else "whatsapp"
    body = _template_body(call.body)
    await broadcasts.check_template(channel, body)
    async with call.state.pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(Q.select_broadcast_for_update, broadcast_id, call.org_id) is None:
            raise errors.NotFound("no such broadcast")
        row = await conn.fetchrow(Q.insert_template, uuid.uuid4(), broadcast_id, call.org_id, channel, body)
        await conn.execute(Q.touch_broadcast, broadcast_id)
    call.state.broadcast_cache.invalidate(call.org_id, broadcast_id)
    assert row is not None
    return json_response(broadcasts.template_json(row), status=201)


@route(
    "PATCH",
    "/orgs/{org_id}/broadcasts/{broadcast_id}/templates/{template_id}",
    summary="Edit a template",
    scope="admin",
    tag=TAG,
    body=schemas.TemplatePatch,
    response=schemas.TemplateOut,
)
async def update_template(call: Call[schemas.TemplatePatch]) -> web.Response:
    broadcast_id, template_id = call.path_uuid("broadcast_id"), call.path_uuid("template_id")
    changes = {
        k: msgspec.to_builtins(v) for k, v in msgspec.structs.asdict(call.body).items() if v is not msgspec.UNSET
    }
    async with call.state.pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(Q.select_broadcast_for_update, broadcast_id, call.org_id) is None:
            raise errors.NotFound("no such broadcast")
        row = await conn.fetchrow(Q.select_template, template_id, broadcast_id, call.org_id)
        if row is None:
            raise errors.NotFound("no such template")
        if changes.get("channel", row["channel"]) != row["channel"]:
            raise errors.ValidationFailed(
                "a template's channel cannot change; add a new template", fields={"channel": ["cannot change"]}
            )
        merged = {**row["body"], **changes, "channel": row["channel"]}
        try:
            validated = msgspec.convert(merged, schemas.TemplateIn)
        except msgspec.ValidationError as exc:
            raise validation_error(str(exc)) from exc
        body = _template_body(validated)
        await broadcasts.check_template(row["channel"], body)
        updated = await conn.fetchrow(Q.update_template, template_id, broadcast_id, call.org_id, body)
        await conn.execute(Q.touch_broadcast, broadcast_id)
    call.state.broadcast_cache.invalidate(call.org_id, broadcast_id)
    assert updated is not None
    return json_response(broadcasts.template_json(updated))


@route(
    "DELETE",
    "/orgs/{org_id}/broadcasts/{broadcast_id}/templates/{template_id}",
    summary="Remove a template",
    scope="admin",
    tag=TAG,
    status=204,
)
async def delete_template(call: Call[None]) -> web.Response:
    broadcast_id, template_id = call.path_uuid("broadcast_id"), call.path_uuid("template_id")
    async with call.state.pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(Q.select_broadcast_for_update, broadcast_id, call.org_id) is None:
            raise errors.NotFound("no such broadcast")
        if await conn.fetchval(Q.delete_template, template_id, broadcast_id, call.org_id) is None:
            raise errors.NotFound("no such template")
        await conn.execute(Q.touch_broadcast, broadcast_id)
    call.state.broadcast_cache.invalidate(call.org_id, broadcast_id)
    return web.Response(status=204)


async def _set_status(call: Call[None], allowed_from: set[str], to: BroadcastStatus) -> web.Response:
    broadcast_id = call.path_uuid("broadcast_id")
    async with call.state.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(Q.select_broadcast_for_update, broadcast_id, call.org_id)
        if row is None:
            raise errors.NotFound("no such broadcast")
        if row["status"] not in allowed_from:
            raise errors.Conflict(f"a {row['status']} broadcast cannot become {to}", extra={"status": row["status"]})
        if to == BroadcastStatus.active:
            templates = await conn.fetch(Q.select_templates, [broadcast_id])
            ready = broadcasts.readiness(row["variables"], templates)
            if not ready["ready"]:
                raise errors.NotReady(extra={"missing": ready["missing"]}, fields={"readiness": ready["missing"]})
        await conn.execute(Q.update_broadcast_status, broadcast_id, call.org_id, to.value)
    call.state.broadcast_cache.invalidate(call.org_id, broadcast_id)
    return await _one(call, broadcast_id)


@route(
    "POST",
    "/orgs/{org_id}/broadcasts/{broadcast_id}/activate",
    summary="Open the send endpoint",
    scope="admin",
    tag=TAG,
    response=schemas.BroadcastOut,
    error_statuses=(409, 422),
)
async def activate(call: Call[None]) -> web.Response:
    return await _set_status(call, {BroadcastStatus.draft, BroadcastStatus.active}, BroadcastStatus.active)


@route(
    "POST",
    "/orgs/{org_id}/broadcasts/{broadcast_id}/pause",
    summary="Stop accepting triggers",
    scope="admin",
    tag=TAG,
    response=schemas.BroadcastOut,
    error_statuses=(409,),
)
async def pause(call: Call[None]) -> web.Response:
    return await _set_status(call, {BroadcastStatus.active, BroadcastStatus.paused}, BroadcastStatus.paused)


@route(
    "POST",
    "/orgs/{org_id}/broadcasts/{broadcast_id}/resume",
    summary="Accept triggers again",
    scope="admin",
    tag=TAG,
    response=schemas.BroadcastOut,
    error_statuses=(409,),
)
async def resume(call: Call[None]) -> web.Response:
    return await _set_status(call, {BroadcastStatus.paused, BroadcastStatus.active}, BroadcastStatus.active)


def _template_body(template: schemas.TemplateIn) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.structs.asdict(template)
    if isinstance(template, schemas.WhatsAppTemplateIn):
        body["button_parameters"] = msgspec.to_builtins(template.button_parameters)  # {index, text} as JSON
    if isinstance(template, schemas.EmailTemplateIn):
        for field in ("from_name", "reply_to", "html_body", "text_body", "preheader"):
            body.setdefault(field, None)
    return body
