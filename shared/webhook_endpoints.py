"""Webhook endpoints of an org and their delivery logs: the Broadcasts API's side of outbound
webhooks (the worker's is shared/webhook_deliveries.py). Statements in
shared/sql/webhook_endpoints.sql.

An endpoint's secret is shown once, when it is made (and when it is rotated); reads never
show it. Another org's endpoint is not found (404), like every object of the API.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from shared import cursors, db, errors, webhook_urls
from shared.config import Settings
from shared.sql import Q
from shared.webhook_events import EVENT_TYPES, DeliveryStatus, new_secret

MAX_DESCRIPTION = 1000
MAX_EVENTS = 50


def endpoint_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "url": row["url"],
        "events": list(row["events"]),
        "description": row["description"],
        "enabled": row["enabled"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def delivery_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "event_id": row["event_id"],
        "event_type": row["event_type"],
        "status": row["status"],
        "attempts": row["attempts"],
        "last_response_status": row["last_response_status"],
        "last_error": row["last_error"],
        "next_attempt_at": row["next_attempt_at"] if row["status"] == DeliveryStatus.pending else None,
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def check_events(events: Sequence[str]) -> list[str]:
    """The event types, deduplicated in order; an unknown one is a validation error."""
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        known = ", ".join(sorted(EVENT_TYPES))
        raise errors.ValidationFailed(
            f"unknown event type {unknown[0]!r}; the types are {known}",
            fields={"events": [f"unknown event type: {e}" for e in unknown]},
        )
    if len(events) > MAX_EVENTS:
        raise errors.ValidationFailed("too many event types", fields={"events": [f"at most {MAX_EVENTS}"]})
    return list(dict.fromkeys(events))


def status_filter(raw: str | None) -> str | None:
    """A delivery log's `status` filter: None (all) or one of the delivery statuses."""
    if raw is None or raw == "":
        return None
    if raw not in DeliveryStatus.__members__:
        choices = ", ".join(DeliveryStatus.__members__)
        raise errors.ValidationFailed(
            f"status must be one of {choices}", fields={"status": [f"must be one of {choices}"]}
        )
    return raw


async def check_url(settings: Settings, url: str) -> str:
    await webhook_urls.check(url, allow_private=settings.webhook_allow_private_urls)
    return url


async def check_fields(
    settings: Settings, *, url: str | None, events: Sequence[str] | None
) -> tuple[str | None, list[str] | None]:
    """An endpoint's url and events as create and update take them (None: not given): the
    event types checked first, then the URL (its SSRF check resolves the host). The api's routes
    and the console both check through here."""
    checked_events = None if events is None else check_events(events)
    checked_url = None if url is None else await check_url(settings, url)
    return checked_url, checked_events


@db.translated
async def create(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, url: str, events: list[str], description: str | None
) -> dict[str, Any]:
    secret = new_secret()
    row = await pool.fetchrow(Q.insert_webhook_endpoint, uuid.uuid4(), org_id, url, events, description, secret)
    assert row is not None
    return {**endpoint_json(row), "secret": secret}


@db.translated
async def get(pool: asyncpg.Pool, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> dict[str, Any]:
    row = await pool.fetchrow(Q.select_webhook_endpoint, endpoint_id, org_id)
    if row is None:
        raise errors.NotFound("no such webhook endpoint")
    return endpoint_json(row)


@db.translated
async def page(
    pool: asyncpg.Pool, org_id: uuid.UUID, *, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    after_at, after_id = cursors.decode(cursor)
    rows = await pool.fetch(Q.select_webhook_endpoints_page, org_id, after_at, after_id, limit + 1)
    chosen, next_cursor = cursors.split_page(rows, limit)
    return [endpoint_json(r) for r in chosen], next_cursor


@db.translated
async def update(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    *,
    url: str | None,
    events: list[str] | None,
    description: str | None,
    description_given: bool,
    enabled: bool | None,
) -> dict[str, Any]:
    row = await pool.fetchrow(
        Q.update_webhook_endpoint, endpoint_id, org_id, url, events, description, enabled, description_given
    )
    if row is None:
        raise errors.NotFound("no such webhook endpoint")
    return endpoint_json(row)


@db.translated
async def delete(pool: asyncpg.Pool, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    if await pool.fetchval(Q.delete_webhook_endpoint, endpoint_id, org_id) is None:
        raise errors.NotFound("no such webhook endpoint")


@db.translated
async def rotate_secret(pool: asyncpg.Pool, org_id: uuid.UUID, endpoint_id: uuid.UUID, overlap_s: float) -> str:
    secret = new_secret()
    if await pool.fetchval(Q.rotate_webhook_secret, endpoint_id, org_id, secret, overlap_s) is None:
        raise errors.NotFound("no such webhook endpoint")
    return secret


@db.translated
async def send_test(pool: asyncpg.Pool, org_id: uuid.UUID, endpoint_id: uuid.UUID) -> str:
    """Queue a webhook.test event for this endpoint alone; returns its event id."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(Q.select_webhook_endpoint, endpoint_id, org_id) is None:
            raise errors.NotFound("no such webhook endpoint")
        event_id: str = await conn.fetchval(Q.enqueue_webhook_test, org_id, endpoint_id)
    return event_id


@db.translated
async def deliveries_page(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    *,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    if await pool.fetchrow(Q.select_webhook_endpoint, endpoint_id, org_id) is None:
        raise errors.NotFound("no such webhook endpoint")
    after_at, after_id = cursors.decode(cursor)
    rows = await pool.fetch(Q.select_webhook_deliveries_page, endpoint_id, status, after_at, after_id, limit + 1)
    chosen, next_cursor = cursors.split_page(rows, limit)
    return [delivery_json(r) for r in chosen], next_cursor


@db.translated
async def retry(
    pool: asyncpg.Pool, org_id: uuid.UUID, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> dict[str, Any]:
    """Make a delivery due now for one more attempt (of the same event: the same webhook-id);
    returns it as it is now (pending)."""
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchrow(Q.select_webhook_endpoint, endpoint_id, org_id) is None:
            raise errors.NotFound("no such webhook endpoint")
        row = await conn.fetchrow(Q.retry_webhook_delivery, delivery_id, endpoint_id)
    if row is None:
        raise errors.NotFound("no such delivery")
    return delivery_json(row)


@db.translated
async def erase_addresses(
    conn: asyncpg.Connection, org_id: uuid.UUID, contact_id: uuid.UUID, message_ids: list[uuid.UUID], pattern: str
) -> None:
    """In a subscriber's redaction (its transaction): its events and its messages' events lose
    the addresses they quote (`pattern` matches any of them)."""
    await conn.execute(Q.erase_webhook_events, org_id, contact_id, message_ids, pattern)
