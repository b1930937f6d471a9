"""The console's Webhooks room: endpoints, their delivery logs, retry and test.

Every action is the call the outbound webhook routes (api/broadcasts/webhooks.py) make: the
same request schemas (api/broadcasts/webhook_schemas.py), `webhook_endpoints.check_fields` (event
types, then the URL with its SSRF check), `status_filter`, and the same data functions. A secret is shown
on the page that answers its creation or rotation, and never again.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from aiohttp import web

from api.broadcasts import webhook_schemas as ws
from api.console.pages import PAGE_SIZE, _problems
from api.console.web import Page, page, redirect
from shared import errors, webhook_endpoints
from shared.webhook_events import DeliveryStatus, EventType

PREFIX = "/console/webhooks"
EVENT_CHOICES = [t.value for t in EventType]
STATUS_CHOICES = [s.value for s in DeliveryStatus]
# Notices a redirect may ask the next page to show (a fixed set: nothing from the URL is echoed).
NOTICES = {
    "saved": "Endpoint saved.",
    "deleted": "Endpoint deleted: nothing more is delivered to it.",
    "test": "A webhook.test event is queued for this endpoint: its delivery appears in the log below.",
    "retried": "The delivery is due again now: one more attempt, with the same webhook-id.",
}


def add_routes(r: web.UrlDispatcher) -> None:
    one = PREFIX + "/{webhook_id}"
    r.add_get(PREFIX, endpoint_list)
    r.add_post(PREFIX, endpoint_create)
    r.add_get(one, endpoint_show)
    r.add_post(one, endpoint_save)
    r.add_post(one + "/rotate-secret", secret_rotate)
    r.add_post(one + "/test", test_send)
    r.add_post(one + "/delete", endpoint_delete)
    r.add_post(one + "/deliveries/{delivery_id}/retry", delivery_retry)


def _inputs(p: Page) -> dict[str, Any]:
    """The endpoint form as typed (kept when it comes back with a problem)."""
    assert p.form is not None
    return {
        "url": p.field("url"),
        "events": [e for e in p.form.getall("events", []) if isinstance(e, str)],
        "description": p.field("description"),
        "enabled": p.form.get("enabled") == "on",
    }


def _context(p: Page, **extra: Any) -> dict[str, Any]:
    return {"nav": "webhooks", "event_choices": EVENT_CHOICES, **extra}


# ---- the list and a new endpoint ----


async def _list_page(
    p: Page, *, problems: dict[str, str] | None = None, inputs: dict[str, Any] | None = None, status: int = 200
) -> web.Response:
    rows, next_cursor = await webhook_endpoints.page(
        p.state.pool, p.org_id, cursor=p.request.query.get("cursor"), limit=PAGE_SIZE
    )
    return p.render(
        "webhooks.html",
        _context(
            p,
            endpoints=rows,
            next_cursor=next_cursor,
            problems=problems or {},
            input=inputs or {"url": "", "events": [], "description": ""},
            notice=NOTICES.get(p.request.query.get("notice", "")),
        ),
        status=status,
    )


@page
async def endpoint_list(p: Page) -> web.StreamResponse:
    return await _list_page(p)


@page
async def endpoint_create(p: Page) -> web.StreamResponse:
    """Register an endpoint as `POST /orgs/{org_id}/webhooks` does; its secret is on this
    answer's page only (the page is not cached, and a reload would post a new endpoint)."""
    inputs = _inputs(p)
    try:
        body = msgspec.convert(
            {"url": inputs["url"], "events": inputs["events"], "description": inputs["description"] or None},
            ws.WebhookCreate,
        )
        url, events = await webhook_endpoints.check_fields(p.state.settings, url=body.url, events=body.events)
    except (msgspec.ValidationError, errors.ValidationFailed) as exc:
        return await _list_page(p, problems=_problems(exc, "url"), inputs=inputs, status=422)
    assert url is not None and events is not None
    created = await webhook_endpoints.create(
        p.state.pool, p.org_id, url=url, events=events, description=body.description
    )
    return p.render("webhook_secret.html", _context(p, endpoint=created, secret=created["secret"], new=True))


# ---- one endpoint ----


async def _endpoint_page(
    p: Page,
    *,
    problems: dict[str, str] | None = None,
    inputs: dict[str, Any] | None = None,
    status: int = 200,
) -> web.Response:
    endpoint_id = p.path_uuid("webhook_id")
    endpoint = await webhook_endpoints.get(p.state.pool, p.org_id, endpoint_id)
    q = p.request.query
    log_status = webhook_endpoints.status_filter(q.get("status"))
    deliveries, next_cursor = await webhook_endpoints.deliveries_page(
        p.state.pool, p.org_id, endpoint_id, status=log_status, cursor=q.get("cursor"), limit=PAGE_SIZE
    )
    return p.render(
        "webhook.html",
        _context(
            p,
            endpoint=endpoint,
            deliveries=deliveries,
            next_cursor=next_cursor,
            log_status=log_status or "",
            status_choices=STATUS_CHOICES,
            problems=problems or {},
            input=inputs
            or {
                "url": endpoint["url"],
                "events": endpoint["events"],
                "description": endpoint["description"] or "",
                "enabled": endpoint["enabled"],
            },
            notice=NOTICES.get(q.get("notice", "")),
        ),
        status=status,
    )


def _here(endpoint_id: uuid.UUID, notice: str) -> web.Response:
    return redirect(f"{PREFIX}/{endpoint_id}?notice={notice}")


@page
async def endpoint_show(p: Page) -> web.StreamResponse:
    return await _endpoint_page(p)


@page
async def endpoint_save(p: Page) -> web.StreamResponse:
    """Change url, events, description and enabled, as `PATCH /orgs/{org_id}/webhooks/{id}`
    does with all four given (an empty description clears it, as null does)."""
    endpoint_id = p.path_uuid("webhook_id")
    inputs = _inputs(p)
    try:
        body = msgspec.convert(
            {
                "url": inputs["url"],
                "events": inputs["events"],
                "description": inputs["description"] or None,
                "enabled": inputs["enabled"],
            },
            ws.WebhookUpdate,
        )
        assert not isinstance(body.url, msgspec.UnsetType) and not isinstance(body.events, msgspec.UnsetType)
        url, events = await webhook_endpoints.check_fields(p.state.settings, url=body.url, events=body.events)
    except (msgspec.ValidationError, errors.ValidationFailed) as exc:
        return await _endpoint_page(p, problems=_problems(exc, "url"), inputs=inputs, status=422)
    await webhook_endpoints.update(
        p.state.pool,
        p.org_id,
        endpoint_id,
        url=url,
        events=events,
        description=None if isinstance(body.description, msgspec.UnsetType) else body.description,
        description_given=True,
        enabled=inputs["enabled"],
    )
    return _here(endpoint_id, "saved")


@page
async def secret_rotate(p: Page) -> web.StreamResponse:
    """A new secret, as `POST …/rotate-secret` makes it: the previous one keeps signing beside it
    for WEBHOOK_SECRET_OVERLAP_S. Shown on this answer's page only."""
    endpoint_id = p.path_uuid("webhook_id")
    secret = await webhook_endpoints.rotate_secret(
        p.state.pool, p.org_id, endpoint_id, p.state.settings.webhook_secret_overlap_s
    )
    endpoint = await webhook_endpoints.get(p.state.pool, p.org_id, endpoint_id)
    return p.render(
        "webhook_secret.html",
        _context(p, endpoint=endpoint, secret=secret, new=False, overlap_s=p.state.settings.webhook_secret_overlap_s),
    )


@page
async def test_send(p: Page) -> web.StreamResponse:
    endpoint_id = p.path_uuid("webhook_id")
    await webhook_endpoints.send_test(p.state.pool, p.org_id, endpoint_id)
    return _here(endpoint_id, "test")


@page
async def endpoint_delete(p: Page) -> web.StreamResponse:
    await webhook_endpoints.delete(p.state.pool, p.org_id, p.path_uuid("webhook_id"))
    return redirect(f"{PREFIX}?notice=deleted")


@page
async def delivery_retry(p: Page) -> web.StreamResponse:
    endpoint_id = p.path_uuid("webhook_id")
    await webhook_endpoints.retry(p.state.pool, p.org_id, endpoint_id, p.path_uuid("delivery_id"))
    return _here(endpoint_id, "retried")
