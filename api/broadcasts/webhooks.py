"""Outbound webhook endpoints (Standard Webhooks): manage them (scope admin), read them and
their delivery logs (scope read). The data layer is shared/webhook_endpoints.py; delivery is
the worker's (worker/webhooks.py)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from api.broadcasts import webhook_schemas as ws
from api.jsonio import json_response
from api.routing import Call, route
from shared import cursors, webhook_endpoints

TAG = "webhooks"
ONE = "/orgs/{org_id}/webhooks/{webhook_id}"


@route(
    "POST",
    "/orgs/{org_id}/webhooks",
    summary="Register a webhook endpoint (answers its signing secret, once)",
    scope="admin",
    tag=TAG,
    body=ws.WebhookCreate,
    response=ws.WebhookCreated,
    status=201,
)
async def create_webhook(call: Call[ws.WebhookCreate]) -> web.Response:
    body = call.body
    url, events = await webhook_endpoints.check_fields(call.state.settings, url=body.url, events=body.events)
    assert url is not None and events is not None
    out = await webhook_endpoints.create(
        call.state.pool, call.org_id, url=url, events=events, description=body.description
    )
    return json_response(out, status=201)


@route(
    "GET",
    "/orgs/{org_id}/webhooks",
    summary="The org's webhook endpoints, newest first",
    scope="read",
    tag=TAG,
    response=ws.WebhookList,
    query=("limit", "cursor"),
)
async def list_webhooks(call: Call[None]) -> web.Response:
    q = call.request.query
    limit = cursors.parse_limit(q.get("limit"))
    page, next_cursor = await webhook_endpoints.page(call.state.pool, call.org_id, cursor=q.get("cursor"), limit=limit)
    return json_response({"data": page, "next_cursor": next_cursor})


@route("GET", ONE, summary="One webhook endpoint (without its secret)", scope="read", tag=TAG, response=ws.WebhookOut)
async def get_webhook(call: Call[None]) -> web.Response:
    return json_response(await webhook_endpoints.get(call.state.pool, call.org_id, call.path_uuid("webhook_id")))


@route(
    "PATCH",
    ONE,
    summary="Change a webhook endpoint's url, events, description or enabled",
    scope="admin",
    tag=TAG,
    body=ws.WebhookUpdate,
    response=ws.WebhookOut,
)
async def update_webhook(call: Call[ws.WebhookUpdate]) -> web.Response:
    body = call.body
    endpoint_id = call.path_uuid("webhook_id")
    url, events = await webhook_endpoints.check_fields(
        call.state.settings,
        url=None if body.url is msgspec.UNSET else body.url,
        events=None if body.events is msgspec.UNSET else body.events,
    )
    out = await webhook_endpoints.update(
        call.state.pool,
        call.org_id,
        endpoint_id,
        url=url,
        events=events,
        description=None if body.description is msgspec.UNSET else body.description,
        description_given=body.description is not msgspec.UNSET,
        enabled=None if body.enabled is msgspec.UNSET else body.enabled,
    )
    return json_response(out)


@route("DELETE", ONE, summary="Remove a webhook endpoint", scope="admin", tag=TAG, status=204)
async def delete_webhook(call: Call[None]) -> web.Response:
    await webhook_endpoints.delete(call.state.pool, call.org_id, call.path_uuid("webhook_id"))
    return web.Response(status=204)


@route(
    "POST",
    ONE + "/rotate-secret",
    summary="A new signing secret; the previous one keeps signing beside it for WEBHOOK_SECRET_OVERLAP_S",
    scope="admin",
    tag=TAG,
    response=ws.WebhookSecret,
)
async def rotate_webhook_secret(call: Call[None]) -> web.Response:
    secret = await webhook_endpoints.rotate_secret(
        call.state.pool, call.org_id, call.path_uuid("webhook_id"), call.state.settings.webhook_secret_overlap_s
    )
    return json_response({"secret": secret})


@route(
    "POST",
    ONE + "/test",
    summary="Queue a webhook.test event for this endpoint only",
    scope="admin",
    tag=TAG,
    response=ws.WebhookTestQueued,
    status=202,
)
async def test_webhook(call: Call[None]) -> web.Response:
    event_id = await webhook_endpoints.send_test(call.state.pool, call.org_id, call.path_uuid("webhook_id"))
    return json_response({"event_id": event_id}, status=202)


@route(
    "GET",
    ONE + "/deliveries",
    summary="The endpoint's delivery log, newest first",
    scope="read",
    tag=TAG,
    response=ws.DeliveryList,
    query=("status", "limit", "cursor"),
)
async def list_deliveries(call: Call[None]) -> web.Response:
    q = call.request.query
    endpoint_id = call.path_uuid("webhook_id")
    # A missing endpoint is answered before any filter is judged.
    await webhook_endpoints.get(call.state.pool, call.org_id, endpoint_id)
    status = webhook_endpoints.status_filter(q.get("status"))
    limit = cursors.parse_limit(q.get("limit"))
    page, next_cursor = await webhook_endpoints.deliveries_page(
        call.state.pool, call.org_id, endpoint_id, status=status, cursor=q.get("cursor"), limit=limit
    )
    return json_response({"data": page, "next_cursor": next_cursor})


@route(
    "POST",
    ONE + "/deliveries/{delivery_id}/retry",
    summary="Send a delivery's event again now (one more attempt, same webhook-id)",
    scope="admin",
    tag=TAG,
    response=ws.DeliveryOut,
    status=202,
)
async def retry_delivery(call: Call[None]) -> web.Response:
    out = await webhook_endpoints.retry(
        call.state.pool, call.org_id, call.path_uuid("webhook_id"), call.path_uuid("delivery_id")
    )
    return json_response(out, status=202)
