"""Transactionals API subscribers (contacts with names, confirmation and redaction state),
GDPR redaction, and the suppression list."""

from __future__ import annotations

from aiohttp import web

from api.jsonio import json_response
from api.routing import Call, route
from api.transactionals import schemas
from shared import cursors, subscribers, suppressions, transactionals
from shared.field_errors import FieldErrors

TAG = "transactionals"


@route(
    "POST",
    "/api/v1/subscribers.json",
    summary="Create a subscriber (unconfirmed and subscribed unless told otherwise)",
    scope="write",
    tag=TAG,
    body=schemas.SubscriberCreate,
    response=schemas.SubscriberOut,
    status=201,
)
async def create_subscriber(call: Call[schemas.SubscriberCreate]) -> web.Response:
    body = call.body
    problems = FieldErrors()
    email = problems.email("email", body.email, required=True)
    first_name = problems.text("first_name", body.first_name, maximum=transactionals.MAX_NAME, header=True)
    last_name = problems.text("last_name", body.last_name, maximum=transactionals.MAX_NAME, header=True)
    problems.raise_if_any()
    assert email is not None
    row = await subscribers.create(
        call.state.pool,
        call.org_id,
        email=email,
        first_name=first_name.strip() if first_name else None,
        last_name=last_name.strip() if last_name else None,
        confirmed=bool(body.confirmed),
        unsubscribed=bool(body.unsubscribed),
    )
    return json_response(subscribers.subscriber_json(row), status=201)


@route(
    "GET",
    "/api/v1/subscribers/{id}.json",
    summary="One subscriber",
    scope="read",
    tag=TAG,
    response=schemas.SubscriberOut,
)
async def get_subscriber(call: Call[None]) -> web.Response:
    row = await subscribers.get(call.state.pool, call.org_id, call.path_uuid("id"))
    return json_response(subscribers.subscriber_json(row))


@route(
    "POST",
    "/api/v1/subscribers/{id}/redact.json",
    summary="Redact a subscriber (GDPR erasure); its addresses stay blocked by hash",
    scope="write",
    tag=TAG,
    response=schemas.SubscriberOut,
)
async def redact_subscriber(call: Call[None]) -> web.Response:
    row = await subscribers.redact(call.state.pool, call.org_id, call.path_uuid("id"))
    return json_response(subscribers.subscriber_json(row))


@route(
    "POST",
    "/api/v1/suppressions.json",
    summary="Add an address to the suppression list (201; 200 with the entry if it was there)",
    scope="write",
    tag=TAG,
    body=schemas.SuppressionCreate,
    response=schemas.SuppressionOut,
    status=201,
    also=(200,),
)
async def add_suppression(call: Call[schemas.SuppressionCreate]) -> web.Response:
    body = call.body
    problems = FieldErrors()
    email = problems.email("email", body.email, required=True)
    reason = body.reason if body.reason is not None and body.reason.strip() else suppressions.Reason.manual
    if reason not in suppressions.Reason.__members__:
        problems.add("reason", "is not included in the list")
    problems.raise_if_any()
    assert email is not None
    row, created = await suppressions.add(call.state.pool, call.org_id, email, reason)
    return json_response(suppressions.entry_json(row), status=201 if created else 200)


@route(
    "DELETE",
    "/api/v1/suppressions/{email}.json",
    summary="Take an address off the suppression list (the address URL-encoded)",
    scope="write",
    tag=TAG,
    status=204,
)
async def remove_suppression(call: Call[None]) -> web.Response:
    # The path arrives decoded (`%40` is `@`).
    await suppressions.remove(call.state.pool, call.org_id, call.path_text("email"))
    return web.Response(status=204)


@route(
    "GET",
    "/api/v1/suppressions.json",
    summary="The suppression list, newest first (filter ?reason=)",
    scope="read",
    tag=TAG,
    response=schemas.SuppressionList,
    query=("reason", "limit", "cursor"),
)
async def list_suppressions(call: Call[None]) -> web.Response:
    q = call.request.query
    reason = q.get("reason") or None
    if reason is not None and reason not in suppressions.Reason.__members__:
        problems = FieldErrors()
        problems.add("reason", "is not included in the list")
        problems.raise_if_any()
    rows, next_cursor = await suppressions.page(
        call.state.pool, call.org_id, reason=reason, cursor=q.get("cursor"), limit=cursors.parse_limit(q.get("limit"))
    )
    return json_response({"data": [suppressions.entry_json(r) for r in rows], "next_cursor": next_cursor})
