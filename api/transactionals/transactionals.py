"""The Transactionals API (Broadcast's model): send one email, read it back, list them."""

from __future__ import annotations

from aiohttp import web

from api import idempotency
from api.jsonio import json_response
from api.middleware import REQUEST_ID
from api.routing import Call, attachment_body_limit, route
from api.transactionals import schemas
from shared import cursors, errors, transactionals

TAG = "transactionals"
LIST_MAX_LIMIT = 100


@route(
    "POST",
    "/api/v1/transactionals.json",
    summary="Send a transactional email (inline content or a template; double opt-in; scheduled)",
    scope="write",
    tag=TAG,
    body=schemas.TransactionalCreate,
    response=schemas.TransactionalOut,
    status=201,
    idempotent=True,
    rate_limited=True,
    body_limit=attachment_body_limit,
)
async def create_transactional(call: Call[schemas.TransactionalCreate]) -> web.Response:
    state = call.state
    row = await state.acceptor.transactional(
        call.org_id,
        call.body,
        request_id=call.request[REQUEST_ID],
        claim=idempotency.claim_of(call.request),
        test=call.key is not None and call.key.test,
    )
    return json_response(transactionals.transactional_json(row, state.settings.public_base), status=201)


@route(
    "GET",
    "/api/v1/transactionals/{id}.json",
    summary="One transactional email: what was sent, its status and its timestamps",
    scope="read",
    tag=TAG,
    response=schemas.TransactionalOut,
)
async def get_transactional(call: Call[None]) -> web.Response:
    key = call.key
    assert key is not None
    row = await transactionals.get(call.state.pool, call.org_id, call.path_uuid("id"), test=key.test)
    if row is None:
        raise errors.NotFound("no such transactional email")
    return json_response(transactionals.transactional_json(row, call.state.settings.public_base))


@route(
    "GET",
    "/api/v1/transactionals.json",
    summary="Transactional emails, newest first (cursor-paginated)",
    scope="read",
    tag=TAG,
    response=schemas.TransactionalList,
    query=("limit", "cursor"),
)
async def list_transactionals(call: Call[None]) -> web.Response:
    q = call.request.query
    limit = cursors.parse_limit(q.get("limit"), maximum=LIST_MAX_LIMIT)
    # A key lists only the transactionals of its own mode (test or live).
    rows, next_cursor = await transactionals.page(
        call.state.pool, call.org_id, test=call.key is not None and call.key.test, cursor=q.get("cursor"), limit=limit
    )
    base = call.state.settings.public_base
    return json_response(
        {"data": [transactionals.transactional_json(r, base) for r in rows], "next_cursor": next_cursor}
    )
