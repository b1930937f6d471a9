"""The rate limiter against real Redis: one budget shared by replicas, never exceeded."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from api.ratelimit import RateLimiter, chunk_for
from shared.redis_keys import RedisKeys


async def test_replicas_share_one_budget_and_never_exceed_it(redis_url: str) -> None:
    prefix = f"tidings-test-rl:{uuid.uuid4().hex[:8]}:"
    redis = Redis.from_url(redis_url)
    try:
        keys = RedisKeys(prefix)
        replicas = [RateLimiter(redis, keys) for _ in range(3)]  # three api processes
        org_id = uuid.uuid4()
        limit, window_s = 1000, 3600
        verdicts = await asyncio.gather(*(replicas[i % 3].hit(org_id, limit, window_s) for i in range(1200)))
        allowed = sum(v.allowed for v in verdicts)
        assert allowed <= limit  # never past the budget
        assert allowed >= limit - 3 * chunk_for(limit)  # at most one unspent chunk per replica
        assert all(not v.allowed and v.remaining == 0 and v.reset_s >= 1 for v in verdicts[-50:])
    finally:
        stale = [k async for k in redis.scan_iter(match=f"{prefix}*")]
        if stale:
            await redis.delete(*stale)
        await redis.aclose()


async def test_small_budgets_are_checked_request_by_request(redis_url: str) -> None:
    assert chunk_for(100) == 1 and chunk_for(3) == 1 and chunk_for(10**9) == 200
    prefix = f"tidings-test-rl:{uuid.uuid4().hex[:8]}:"
    redis = Redis.from_url(redis_url)
    try:
        a, b = RateLimiter(redis, RedisKeys(prefix)), RateLimiter(redis, RedisKeys(prefix))
        org_id = uuid.uuid4()
        verdicts = [await (a if i % 2 else b).hit(org_id, 5, 3600) for i in range(7)]
        assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 2
        assert [v.remaining for v in verdicts[:5]] == [4, 3, 2, 1, 0]
    finally:
        stale = [k async for k in redis.scan_iter(match=f"{prefix}*")]
        if stale:
            await redis.delete(*stale)
        await redis.aclose()
