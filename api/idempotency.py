"""`Idempotency-Key` on POSTs that send: a repeat gets the first answer and sends nothing.

The key is claimed in Postgres before the request runs (a unique insert, so two
replicas racing on one key cannot both run it), and the answer is stored when it is
done. Same key, different body: 422. Same key while the first is still running: 409,
with Retry-After. Keys live 24 hours and are scoped to the org.

A request holds its key under a lease (IDEMPOTENCY_LEASE_S) that it renews while it
runs. If it dies (kill -9, a lost machine, Postgres gone while it answered), the lease
lapses and a retry takes the key over. The send itself is bound to the key in the send's
own commit (`shared.sending.KeyFence`), and only while its request still holds the key,
so the retry either finds that send and answers with it (`claim_of(...).committed_send_id`)
or, if none was committed, runs the request afresh: never two sends for one key.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from api import errors as http_errors
from api.state import STATE
from shared import db as shared_db
from shared import deadlines, errors, idempotency_keys
from shared.jsonutil import dumps
from shared.sending import KeyClaim, KeyFence

log = structlog.get_logger("tidings.api.idempotency")

MAX_KEY_LENGTH = 255
REPLAYED_HEADER = "Idempotent-Replayed"
# Storing the answer is retried this long when Postgres fails; then the answer goes out all the
# same (the send is bound to the key, so a retry after the lease answers from the send).
STORE_RETRY_S = 1.0
STORE_RETRY_PAUSE_S = 0.2


# What this request holds: its key's fence, and a send an earlier holder committed (if any).
Claim = KeyClaim
CLAIM = web.RequestKey("idempotency_claim", Claim)


def claim_of(request: web.Request) -> Claim | None:
    """The key this request holds, if it came with one."""
    return request.get(CLAIM)


def request_hash(method: str, path: str, body: bytes, *, test: bool = False) -> bytes:
    # A test key's request never matches a live key's (the org's keys share its Idempotency-Keys):
    # reusing a live request's key in test mode is "another request" (422), never its replay.
    mode = b"test " if test else b""
    return hashlib.sha256(mode + method.encode() + b" " + path.encode() + b"\n" + body).digest()


async def run_once(
    request: web.Request,
    db: shared_db.Pool,
    org_id: uuid.UUID,
    body: bytes,
    handler: Callable[[], Awaitable[web.StreamResponse]],
    *,
    test: bool = False,
) -> web.StreamResponse:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return await handler()
    if not key or len(key) > MAX_KEY_LENGTH:
        raise errors.ValidationFailed(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
            fields={"Idempotency-Key": [f"must be 1 to {MAX_KEY_LENGTH} characters"]},
        )
    lease_s = request.app[STATE].settings.idempotency_lease_s
    claimed = await _claim(db, org_id, key, request_hash(request.method, request.path, body, test=test), lease_s)
    if isinstance(claimed, web.Response):
        return claimed
    request[CLAIM] = claimed
    fence = claimed.fence
    renewal = asyncio.create_task(_renew(db, fence, lease_s))
    try:
        response = await handler()
    except errors.RateLimited:
        await _stop(renewal)
        await _release(db, fence)
        raise
    except errors.TidingsError as exc:
        await _stop(renewal)
        status, answer = http_errors.answer(exc, http_errors.surface_of(request.path))
        if status < 500:
            # A refusal is an answer too: the same request repeated is refused the same way.
            await _store(db, fence, status, dumps(answer))
        else:
            await _release(db, fence)
        raise
    except BaseException:
        await _stop(renewal)
        await _release(db, fence)
        raise
    await _stop(renewal)
    body_bytes = response.body if isinstance(response, web.Response) else None
    if isinstance(body_bytes, bytes | bytearray) and response.status < 500:
        await _store(db, fence, response.status, bytes(body_bytes))
    else:
        await _release(db, fence)
    return response


async def _claim(
    db: shared_db.Pool, org_id: uuid.UUID, key: str, digest: bytes, lease_s: float
) -> Claim | web.Response:
    """Hold the key, or the stored answer to replay; raises if it is taken or reused."""
    holder = uuid.uuid4()
    fence = KeyFence(org_id, key, holder)
    for _ in range(3):
        if await idempotency_keys.claim(db, org_id, key, digest, holder, lease_s):
            return Claim(fence, None)
        first = await idempotency_keys.find(db, org_id, key)
        if first is None:
            continue  # released meanwhile: try to claim again
        if not first["live"]:
            await idempotency_keys.delete_expired(db, org_id, key)
            continue
        if bytes(first["request_hash"]) != digest:
            raise errors.IdempotencyKeyReused()
        if first["response_status"] is not None:
            return web.Response(
                body=first["response_body"],
                status=first["response_status"],
                content_type="application/json",
                headers={REPLAYED_HEADER: "true"},
            )
        if first["lease_left_s"] > 0:
            # Its request is still running (or died less than a lease ago).
            retry_after_s = max(1, math.ceil(first["lease_left_s"]))
            raise errors.IdempotencyKeyInFlight(headers={"Retry-After": str(retry_after_s)})
        taken = await idempotency_keys.take_over(db, org_id, key, holder, lease_s)
        if taken is not None:
            log.info("idempotency_key_taken_over", committed_send=taken["send_id"] is not None)
            return Claim(fence, taken["send_id"])
    raise errors.IdempotencyKeyInFlight(headers={"Retry-After": "1"})


async def _renew(db: shared_db.Pool, fence: KeyFence, lease_s: float) -> None:
    """Keep the lease while the request runs. A renewal that fails (Postgres unreachable) is
    tried again; if the lease lapses meanwhile and a retry takes the key, the send's commit
    finds the key no longer held and refuses the send, so the key still makes one send."""
    every_s = lease_s / 3
    while True:
        await asyncio.sleep(every_s)
        try:
            held = await deadlines.within(idempotency_keys.renew(db, fence, lease_s), every_s)
        except shared_db.UNREACHABLE as exc:
            log.warning("idempotency_lease_not_renewed", error=repr(exc))
            continue
        if not held:
            return  # taken over by a retry: nothing more to hold


async def _stop(renewal: asyncio.Task[None]) -> None:
    # Not awaited: a renewal cancelled mid-statement to a Postgres that stopped answering can
    # take as long as the outage to end, and the request's answer must not wait for it.
    deadlines.abandon(renewal)


async def _store(db: shared_db.Pool, fence: KeyFence, status: int, body: bytes) -> None:
    """Keep the answer for repeats. If Postgres cannot take it now, the answer still goes
    out: a send is bound to its key already, and a retry after the lease answers from it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STORE_RETRY_S
    while True:
        try:
            await deadlines.within(
                idempotency_keys.store_answer(db, fence, status, body),
                max(STORE_RETRY_PAUSE_S, deadline - loop.time()),
            )
            return
        except shared_db.UNREACHABLE as exc:
            if loop.time() >= deadline:
                log.warning("idempotent_answer_not_stored", error=repr(exc))
                return
        await asyncio.sleep(STORE_RETRY_PAUSE_S)


async def _release(db: shared_db.Pool, fence: KeyFence) -> None:
    """Let a repeat run afresh. Not possible while Postgres is unreachable: the lease lapses
    instead, and a key whose send committed is never released (the send is its answer)."""
    try:
        await deadlines.within(idempotency_keys.release(db, fence), STORE_RETRY_S)
    except shared_db.UNREACHABLE as exc:
        log.warning("idempotency_key_not_released", error=repr(exc))
