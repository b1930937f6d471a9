"""Per-org rate limit on the send endpoints, shared by every API replica through Redis.

A fixed window counter, incremented and given its expiry atomically by one Lua script,
so that N replicas share one budget and a burst at a window's edge is at most 2x.
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from shared import errors, metrics
from shared.redis_keys import RedisKeys

if TYPE_CHECKING:
    from api.auth import AuthKey
    from api.state import State

_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return count
"""


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

    async def hit(self, org_id: uuid.UUID, limit: int, window_s: int) -> Verdict:
        now_s = time.time()
        window_start_s = int(now_s // window_s * window_s)
        key = self.keys.rate_limit(org_id, window_start_s)
        count = int(await self._script(keys=[key], args=[window_s * 1000 + 1000]))
        reset_s = max(1, math.ceil(window_start_s + window_s - now_s))
        return Verdict(allowed=count <= limit, limit=limit, remaining=max(0, limit - count), reset_s=reset_s)


async def enforce(state: State, key: AuthKey) -> dict[str, str]:
    """Spend one request of the org's budget; the headers go on the answer either way."""
    settings = state.settings
    verdict = await state.rate_limiter.hit(
        key.org_id,
        key.rate_limit_requests or settings.rate_limit_requests,
        key.rate_limit_window_s or settings.rate_limit_window_s,
    )
    headers = verdict.headers()
    if not verdict.allowed:
        metrics.RATE_LIMITED.inc()
        raise errors.RateLimited(
            f"rate limit of {verdict.limit} requests exceeded; retry in {verdict.reset_s} s", headers=headers
        )
    return headers
