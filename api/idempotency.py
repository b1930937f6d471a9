"""`Idempotency-Key` on POSTs that send: a repeat gets the first answer and sends nothing.

The key is claimed in Postgres before the request runs (a unique insert, so two
replicas racing on one key cannot both run it), and the answer is stored when it is
done. Same key, different body: 422. Same key while the first is still running: 409.
Keys live 24 hours and are scoped to the org.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from api.errors import body_for, status_for
from shared import errors
from shared.jsonutil import dumps
from shared.sql import Q

MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"


def request_hash(method: str, path: str, body: bytes) -> bytes:
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).digest()


async def run_once(
    request: web.Request,
    db: asyncpg.Pool,
    org_id: uuid.UUID,
    body: bytes,
    handler: Callable[[], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return await handler()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise errors.ValidationFailed(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
            fields={"Idempotency-Key": [f"must be 1 to {MAX_KEY_LENGTH} characters"]},
        )
    digest = request_hash(request.method, request.path, body)
    for _ in range(3):
        if await db.fetchval(Q.claim_idempotency_key, org_id, key, digest) is not None:
            break
        first = await db.fetchrow(Q.select_idempotency_key, org_id, key)
        if first is None:
            continue  # released meanwhile: try to claim again
        if not first["live"]:
            await db.execute(Q.delete_idempotency_key, org_id, key)
            continue
        if bytes(first["request_hash"]) != digest:
            raise errors.IdempotencyKeyReused()
        if first["response_status"] is None:
            raise errors.IdempotencyKeyInFlight()
        return web.Response(
            body=first["response_body"],
            status=first["response_status"],
            content_type="application/json",
            headers={REPLAYED_HEADER: "true"},
        )
    else:
        raise errors.IdempotencyKeyInFlight()

    try:
        response = await handler()
    except errors.RateLimited:
        await db.execute(Q.release_idempotency_key, org_id, key)
        raise
    except errors.TidingsError as exc:
        # A refusal is an answer too: the same request repeated is refused the same way.
        await db.execute(Q.store_idempotent_response, org_id, key, status_for(exc), dumps(body_for(exc)))
        raise
    except BaseException:
        await db.execute(Q.release_idempotency_key, org_id, key)
        raise
    body_bytes = response.body if isinstance(response, web.Response) else None
    if isinstance(body_bytes, bytes | bytearray) and response.status < 500:
        await db.execute(Q.store_idempotent_response, org_id, key, response.status, bytes(body_bytes))
    else:
        await db.execute(Q.release_idempotency_key, org_id, key)
    return response
