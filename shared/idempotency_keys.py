"""The data layer of `Idempotency-Key`s: every statement the api's key handling runs
(api/idempotency.py decides; this module only reads and writes). asyncpg's errors become
domain errors here (`db.translated`): an unreachable Postgres is `DatabaseUnavailable`."""

from __future__ import annotations

import uuid

from shared import db
from shared.sending import KeyFence
from shared.sql import Q


@db.translated
async def claim(pool: db.Pool, org_id: uuid.UUID, key: str, digest: bytes, holder: uuid.UUID, lease_s: float) -> bool:
    """Hold a key nobody holds (a unique insert): True if this holder has it now."""
    return await pool.fetchval(Q.claim_idempotency_key, org_id, key, digest, holder, lease_s) is not None


@db.translated
async def find(pool: db.Pool, org_id: uuid.UUID, key: str) -> db.Record | None:
    """The key as it stands: its request's hash, its stored answer, whether it is live, its lease left."""
    return await pool.fetchrow(Q.select_idempotency_key, org_id, key)


@db.translated
async def delete_expired(pool: db.Pool, org_id: uuid.UUID, key: str) -> None:
    await pool.execute(Q.delete_expired_idempotency_key, org_id, key)


@db.translated
async def take_over(pool: db.Pool, org_id: uuid.UUID, key: str, holder: uuid.UUID, lease_s: float) -> db.Record | None:
    """Take a key whose holder's lease lapsed; the row (with the send it committed, if any) or None."""
    return await pool.fetchrow(Q.take_over_idempotency_key, org_id, key, holder, lease_s)


@db.translated
async def renew(pool: db.Pool, fence: KeyFence, lease_s: float) -> bool:
    """Extend the holder's lease; False once a retry has taken the key over."""
    held = await pool.fetchval(Q.renew_idempotency_lease, fence.org_id, fence.key, fence.holder, lease_s)
    return held is not None


@db.translated
async def store_answer(pool: db.Pool, fence: KeyFence, status: int, body: bytes) -> None:
    await pool.execute(Q.store_idempotent_response, fence.org_id, fence.key, fence.holder, status, body)


@db.translated
async def release(pool: db.Pool, fence: KeyFence) -> None:
    await pool.execute(Q.release_idempotency_key, fence.org_id, fence.key, fence.holder)
