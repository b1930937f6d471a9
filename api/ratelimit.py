"""Per-org rate limit on the send endpoints, shared by every API replica through Redis.

A fixed window counter in Redis, which one Lua script checks, increments and gives its
expiry atomically, so N replicas share one budget (a burst at a window's edge is at most
2x). Nothing is ever granted past the limit.

For large budgets a process takes tokens in small chunks (at most 1 % of the limit, at
most 200) and spends them locally, so a busy org costs one Redis round trip per chunk
instead of per request. For small budgets (the default 100 per minute) the chunk is 1:
exactly one Redis check per request, as if there were no chunking.

With Redis hung, a request waits at most REDIS_TIMEOUT_S in all, then gets 503: the bound
covers the wait for the org's chunk request too, not only the Redis command (a queue of
requests behind one chunk request would otherwise wait one timeout each, in turn). A request
that gives up does not cancel the chunk request it waited for: a late grant still serves the
requests behind it (it is bounded by the Redis client's own REDIS_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import time
import uuid
from typing import TYPE_CHECKING

import redis.exceptions
from redis.asyncio import Redis

from shared import deadlines, errors, metrics
from shared.redis_keys import RedisKeys

if TYPE_CHECKING:
    from api.auth import AuthKey
    from api.state import State

# KEYS[1] the window's counter; ARGV: tokens wanted, the limit, the key's expiry in ms.
# Returns {tokens granted (0: refused), the counter after the grant}.
_SCRIPT = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - count)
if grant <= 0 then return {0, count} end
count = redis.call('INCRBY', KEYS[1], grant)
if count == grant then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {grant, count}
"""


def chunk_for(limit: int) -> int:
    # Up to 1 % of the budget, so tokens held unspent by replicas barely shift who is refused;
    # capped so that a process never holds many (each Redis grant costs ~0.1 ms of api CPU).
    return max(1, min(200, limit // 100))


@dataclasses.dataclass(slots=True)
class _Lease:
    window_start_s: int
    tokens: int  # granted to this process and not yet spent
    counter: int  # the window's Redis counter when they were granted


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.reset_s)
        return out


class RateLimiter:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._script = redis.register_script(_SCRIPT)
        self._leases: dict[uuid.UUID, _Lease] = {}
        # The chunk request in flight per (org, window), shared by the requests that wait for it.
        self._pending: dict[tuple[uuid.UUID, int], asyncio.Task[_Lease | None]] = {}

    async def hit(self, org_id: uuid.UUID, limit: int, window_s: int) -> Verdict:
        now_s = time.time()
        window_start_s = int(now_s // window_s * window_s)
        reset_s = max(1, math.ceil(window_start_s + window_s - now_s))
        chunk = chunk_for(limit)
        lease = self._usable(org_id, window_start_s)
        if lease is None:
            if chunk == 1:
                lease = await self._grant(org_id, window_start_s, chunk, limit, window_s)
            else:
                lease = await self._shared_grant(org_id, window_start_s, chunk, limit, window_s)
        if lease is None:
            return Verdict(allowed=False, limit=limit, remaining=0, reset_s=reset_s)
        lease.tokens -= 1
        # Tokens this process holds unspent are not used yet: they still count as remaining.
        used = lease.counter - lease.tokens
        return Verdict(allowed=True, limit=limit, remaining=max(0, limit - used), reset_s=reset_s)

    async def hit_within(self, org_id: uuid.UUID, limit: int, window_s: int, timeout_s: float) -> Verdict:
        """`hit`, answered within `timeout_s` whatever Redis does: the wait for the org's chunk request
        included, and not waiting for the cleanup of a Redis command given up on either
        (redis-py may spend its connect timeout closing a connection to a hung server)."""
        if self._usable(org_id, int(time.time() // window_s * window_s)) is not None:
            return await self.hit(org_id, limit, window_s)  # tokens in hand: no Redis, no task
        try:
            # Cancelled at the deadline and left to end on its own: a cancelled Redis command
            # drops its connection, so no late reply is read.
            return await deadlines.within(self.hit(org_id, limit, window_s), timeout_s)
        except TimeoutError as exc:
            # Answered as Redis being unreachable (503, retry later), like any Redis failure.
            raise redis.exceptions.TimeoutError(f"no rate limit answer from Redis within {timeout_s} s") from exc

    async def _shared_grant(
        self, org_id: uuid.UUID, window_start_s: int, chunk: int, limit: int, window_s: int
    ) -> _Lease | None:
        """A lease with a token left, from one chunk request at a time per org: the others wait
        for it and spend its tokens. The chunk request is shared, not owned by the request that
        started it: a request that gives up (its REDIS_TIMEOUT_S passed) stops waiting, but the
        grant goes on, so a late answer still lands in the lease for the requests behind it.
        Cancelling it instead would drop its Redis connection and lose the tokens Redis counted,
        and every request queued behind would ask again and be given up on in turn."""
        while True:
            lease = self._usable(org_id, window_start_s)
            if lease is not None:
                return lease
            pending = self._pending.get((org_id, window_start_s))
            if pending is None or pending.done():
                pending = asyncio.ensure_future(self._grant(org_id, window_start_s, chunk, limit, window_s))
                self._pending[(org_id, window_start_s)] = pending
                pending.add_done_callback(functools.partial(self._grant_done, (org_id, window_start_s)))
            # A grant that ends in an error (Redis unreachable or late past its socket timeout)
            # fails the requests waiting for it; the next request starts another.
            if await asyncio.shield(pending) is None:
                return None  # the window's budget is spent
            # Granted: take a token, unless the requests ahead of this one took them all.

    def _grant_done(self, pending_key: tuple[uuid.UUID, int], task: asyncio.Task[_Lease | None]) -> None:
        if self._pending.get(pending_key) is task:
            del self._pending[pending_key]
        if not task.cancelled():
            task.exception()  # read: every request waiting for it may have given up

    def _usable(self, org_id: uuid.UUID, window_start_s: int) -> _Lease | None:
        lease = self._leases.get(org_id)
        if lease is not None and lease.window_start_s == window_start_s and lease.tokens > 0:
            return lease
        return None

    async def _grant(
        self, org_id: uuid.UUID, window_start_s: int, chunk: int, limit: int, window_s: int
    ) -> _Lease | None:
        key = self.keys.rate_limit(org_id, window_start_s)
        granted, counter = await self._script(keys=[key], args=[chunk, limit, window_s * 1000 + 1000])
        if int(granted) <= 0:
            return None
        lease = self._leases[org_id] = _Lease(window_start_s, int(granted), int(counter))
        return lease


async def enforce(state: State, key: AuthKey) -> dict[str, str]:
    """Spend one request of the org's budget; the headers go on the answer either way."""
    settings = state.settings
    verdict = await state.rate_limiter.hit_within(
        key.org_id,
        key.rate_limit_requests or settings.rate_limit_requests,
        key.rate_limit_window_s or settings.rate_limit_window_s,
        settings.redis_timeout_s,
    )
    headers = verdict.headers()
    if not verdict.allowed:
        metrics.RATE_LIMITED.inc()
        raise errors.RateLimited(
            f"rate limit of {verdict.limit} requests exceeded; retry in {verdict.reset_s} s", headers=headers
        )
    return headers
