"""`tidings send`: the manual trigger. Accepted as the API accepts a send (`shared.accept`),
with `source: manual`."""

from __future__ import annotations

import sys
import uuid
from typing import Any

from shared import db, errors, redis_clients, sending
from shared.accept import Acceptor
from shared.config import Settings
from shared.domain import MessageStatus
from shared.jsonutil import dumps
from shared.redis_keys import RedisKeys
from shared.send_waiter import SendWaiter


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
    trigger = sending.Trigger(
        contact_channel_id=contact_channel_id,
        contact_id=contact_id,
        phone=phone,
        email=email,
        name=name,
        variables=variables,
        template_ids=template_ids,
    )
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=4)
    redis = redis_clients.commands(settings.redis_url, settings.redis_timeout_s)
    subscriber = redis_clients.subscriber(settings.redis_url)
    keys = RedisKeys(settings.redis_prefix)
    waiter = SendWaiter(subscriber, keys) if wait else None
    acceptor = Acceptor(pool, redis, keys, settings, waiter)
    try:
        if waiter is not None:
            await waiter.start()
            if not waiter.subscribed:
                # The send still goes (Postgres is the queue); there is just nothing to wait on.
                print("Redis is unreachable: sending without waiting for the outcome", file=sys.stderr)
        try:
            accepted, settled = await acceptor.trigger(
                org_id,
                broadcast_id,
                trigger,
                source="manual",
                request_id=f"cli-{uuid.uuid4().hex[:12]}",
                wait=wait,
            )
        except errors.TidingsError as exc:
            print(dumps({"error": {"code": exc.code, "message": exc.message, "fields": exc.fields}}).decode())
            return 1
        if waiter is not None and waiter.subscribed and not settled:
            print("the workers did not answer in time; the send is queued", file=sys.stderr)
        out = sending.send_json(settings.public_base, accepted)
        # The operator also sees where the send came from (the API's callers know: they made it).
        for record in out["recipients"]:
            record["source"] = accepted.source
        print(dumps(out).decode())
        failed = (MessageStatus.failed, MessageStatus.rejected)
        return 1 if any(r.status in failed for r in accepted.records) else 0
    finally:
        await acceptor.close()
        if waiter is not None:
            await waiter.close()
        await subscriber.aclose()
        await redis.aclose()
        await pool.close()
