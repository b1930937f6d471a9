"""API keys as an API: create (live or test), list (never the key), revoke."""

from __future__ import annotations

from aiohttp import web

from api.broadcasts import schemas
from api.jsonio import json_response
from api.routing import Call, route
from shared import cursors, orgs
from shared.domain import KeyMode

TAG = "keys"


@route(
    "POST",
    "/orgs/{org_id}/keys",
    summary="Create an API key (live or test); the key is in this answer only",
    scope="admin",
    tag=TAG,
    body=schemas.KeyCreate,
    response=schemas.KeyCreated,
    status=201,
)
async def create_key(call: Call[schemas.KeyCreate]) -> web.Response:
    body = call.body
    out = await orgs.create_key_record(
        call.state.pool, call.org_id, list(body.scopes), name=body.name, mode=KeyMode(body.mode)
    )
    return json_response(out, status=201)


@route(
    "GET",
    "/orgs/{org_id}/keys",
    summary="The org's API keys, newest first, revoked ones included (never the key itself)",
    scope="admin",
    tag=TAG,
    response=schemas.KeyList,
    query=("limit", "cursor"),
)
async def list_keys(call: Call[None]) -> web.Response:
    q = call.request.query
    page, next_cursor = await orgs.keys_page(
        call.state.pool, call.org_id, cursor=q.get("cursor"), limit=cursors.parse_limit(q.get("limit"))
    )
    return json_response({"data": page, "next_cursor": next_cursor})


@route(
    "DELETE",
    "/orgs/{org_id}/keys/{key_id}",
    summary="Revoke an API key: refused everywhere within KEY_CACHE_TTL_S (this request completes)",
    scope="admin",
    tag=TAG,
    status=204,
)
async def revoke_key(call: Call[None]) -> web.Response:
    key_id = call.path_uuid("key_id")
    await orgs.revoke_key(call.state.pool, call.org_id, key_id)
    call.state.key_cache.forget(key_id)
    return web.Response(status=204)
