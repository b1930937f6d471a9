"""`tidings send`: the manual trigger. Same rules as the API, with `source: manual`."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from typing import Any

import orjson
from redis.exceptions import RedisError

from shared import db, doorbell, errors, redis_clients, sending
from shared.config import Settings
from shared.jsonutil import dumps
from shared.redis_keys import RedisKeys
from shared.sql import Q


async def manual_send(
    settings: Settings,
    *,
    org: str,
    broadcast: str,
    email: str | None,
    phone: str | None,
    contact_id: str | None,
    contact_channel_id: str | None,
    name: str | None,
    variables: dict[str, Any],
    template_ids: list[str] | None,
    wait: bool,
) -> int:
    """Trigger, print the records as JSON on stdout, and return the exit code (0 sent or queued)."""
    try:
        org_id, broadcast_id = uuid.UUID(org), uuid.UUID(broadcast)
    except ValueError:
        print("--org and --broadcast take ids", file=sys.stderr)
        return 2
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=4)
    redis = redis_clients.subscriber(settings.redis_url)  # it waits on a subscription
    keys = RedisKeys(settings.redis_prefix)
    try:
        trigger = sending.Trigger(
            contact_channel_id=contact_channel_id,
            contact_id=contact_id,
            phone=phone,
            email=email,
            name=name,
            variables=variables,
            template_ids=template_ids,
            source="manual",
            request_id=f"cli-{uuid.uuid4().hex[:12]}",
        )
        try:
            prepared = await sending.prepare(pool, org_id, broadcast_id, trigger, public_base=settings.public_base)
        except errors.TidingsError as exc:
            _print_error(exc)
            return 1
        prepared.notify = wait
        pubsub = redis.pubsub()
        try:
            subscribed = True
            try:
                # Subscribed before the commit, so the worker's outcome cannot be missed.
                await pubsub.subscribe(keys.send_done_channel(prepared.send_id))
            except (OSError, RedisError):
                # Redis is down: the send still goes (Postgres is the queue); nothing to wait on.
                subscribed = False
                print("Redis is unreachable: sending without waiting for the outcome", file=sys.stderr)
            try:
                await sending.commit(pool, prepared)
            except errors.TidingsError as exc:  # paused, unsubscribed or blocked since `prepare`
                _print_error(exc)
                return 1
            if prepared.queued and subscribed:
                await doorbell.ring(redis, keys)
                if wait:
                    expected = {str(r.id) for r in prepared.queued}
                    with contextlib.suppress(OSError, RedisError):
                        await _wait_for_outcomes(pubsub, expected, settings.sync_send_timeout_s)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
        rows = await pool.fetch(Q.select_send_messages, prepared.send_id)
        base = settings.public_base
        out = {
            "send_id": prepared.send_id,
            "recipients": [
                {
                    "id": r["id"],
                    "template_id": r["template_id"],
                    "channel": r["channel"],
                    "to": r["to_address"],
                    "status": r["status"],
                    "source": r["source"],
                    "external_message_id": r["external_message_id"],
                    "error": r["error"],
                    "status_url": sending.status_url(base, org_id, r["id"]),
                }
                for r in rows
            ],
        }
        print(dumps(out).decode())
        return 1 if any(r["status"] in ("failed", "rejected") for r in rows) else 0
    finally:
        await redis.aclose()
        await pool.close()


def _print_error(exc: errors.TidingsError) -> None:
    print(dumps({"error": {"code": exc.code, "message": exc.message, "fields": exc.fields}}).decode())


async def _wait_for_outcomes(pubsub: Any, expected: set[str], timeout_s: float) -> None:
    """Until every expected message has been reported (a send may settle in pieces)."""

    async def all_reported() -> None:
        async for message in pubsub.listen():
            if message.get("type") == "message":
                expected.difference_update(orjson.loads(message["data"]))
                if not expected:
                    return

    try:
        await asyncio.wait_for(all_reported(), timeout=timeout_s)
    except TimeoutError:
        print("the workers did not answer in time; the send is queued", file=sys.stderr)
