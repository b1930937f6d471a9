"""Broadcast configuration: create, list, read, update, templates, activate/pause/resume."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from api.broadcasts import schemas
from api.jsonio import json_response, validation_error
from api.routing import Call, route
from shared import broadcasts, cursors

TAG = "broadcasts"


def _variables(given: Any) -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = msgspec.to_builtins(given)
    for v in variables:
        v.setdefault("default", None)
    return variables


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
    full = await broadcasts.create(
        call.state.pool,
        call.org_id,
        name=call.body.name,
        type_=call.body.type,
        variables=_variables(call.body.variables),
    )
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
    page, next_cursor = await broadcasts.page(
        call.state.pool, call.org_id, cursor=call.request.query.get("cursor"), limit=limit
    )
    return json_response({"data": page, "next_cursor": next_cursor})


@route(
    "GET",
    "/orgs/{org_id}/broadcasts/{broadcast_id}",
    summary="One broadcast with readiness and summary",
    scope="read",
    tag=TAG,
    response=schemas.BroadcastOut,
)
async def get_broadcast(call: Call[None]) -> web.Response:
    return json_response(await broadcasts.get(call.state.pool, call.org_id, call.path_uuid("broadcast_id")))


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
    await broadcasts.update(
        call.state.pool,
        call.org_id,
        broadcast_id,
        type_=None if body.type is msgspec.UNSET else body.type,
        name=None if body.name is msgspec.UNSET else body.name,
        variables=None if body.variables is msgspec.UNSET else _variables(body.variables),
    )
    call.state.broadcast_cache.invalidate(call.org_id, broadcast_id)
    return json_response(await broadcasts.get(call.state.pool, call.org_id, broadcast_id))


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
    row = await broadcasts.add_template(call.state.pool, call.org_id, broadcast_id, channel, template_body(call.body))
    call.state.broadcast_cache.invalidate(call.org_id, broadcast_id)
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
    updated = await broadcasts.update_template(
        call.state.pool, call.org_id, broadcast_id, template_id, changes, complete_template
    )
    call.state.broadcast_cache.invalidate(call.org_id, broadcast_id)
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
    await broadcasts.delete_template(call.state.pool, call.org_id, broadcast_id, template_id)
    call.state.broadcast_cache.invalidate(call.org_id, broadcast_id)
    return web.Response(status=204)


async def _set_status(call: Call[None], action: str) -> web.Response:
    broadcast_id = call.path_uuid("broadcast_id")
    await broadcasts.change_status(call.state.pool, call.org_id, broadcast_id, action)
    call.state.broadcast_cache.invalidate(call.org_id, broadcast_id)
    return json_response(await broadcasts.get(call.state.pool, call.org_id, broadcast_id))


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
    return await _set_status(call, "activate")


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
    return await _set_status(call, "pause")


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
    return await _set_status(call, "resume")


def complete_template(merged: dict[str, Any]) -> dict[str, Any]:
    """A stored template body with changes merged in -> validated, defaults filled, as stored."""
    try:
        validated = msgspec.convert(merged, schemas.TemplateIn)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from exc
    return template_body(validated)


def template_body(template: schemas.TemplateIn) -> dict[str, Any]:
    """A validated template as stored (the console stores its forms' templates through this too)."""
    body: dict[str, Any] = msgspec.structs.asdict(template)
    if isinstance(template, schemas.WhatsAppTemplateIn):
        body["button_parameters"] = msgspec.to_builtins(template.button_parameters)  # {index, text} as JSON
    if isinstance(template, schemas.EmailTemplateIn):
        for field in ("from_name", "reply_to", "html_body", "text_body", "preheader"):
            body.setdefault(field, None)
    return body
