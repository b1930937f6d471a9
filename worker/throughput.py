"""Throughput ceilings shared by every worker process: a token bucket in Redis per ceiling.

A relay's `max_per_s` (SMTP_RELAYS) and WHATSAPP_MAX_PER_S hold across all workers
together: adding workers must not multiply the load on a relay's quota or on Meta's
per-number limit. Each ceiling is one token bucket in Redis, refilled at N tokens a second
by Redis's own clock (one clock for every worker) and changed only by one Lua script, so
that concurrent workers never take the same token.

- Smoothed: the bucket holds at most a tenth of a second's worth (`burst`, at least 1): after
  an idle spell at most that many leave at once, then N a second. A provider counting per
  second never sees much more than N in any second.
- In chunks: a worker takes up to `burst` tokens per call, as many as it has messages
  waiting, so a busy worker makes about ten calls a second per ceiling, not one per message.
  Tokens taken and not used (a waiting send cut short) are simply lost: the ceiling can only
  be undershot by them.
- Waiting for a token is no attempt: the message stays claimed and is sent when its token
  comes. A worker holds, per channel, no more messages than its share of the channel's
  ceiling sends in `HOLD_AHEAD_S` (`claim_limit`: the pump sizes each claim by it), so a
  throttled worker holds few messages, for little longer than they need, and never gives
  one back (no lease churn).
- Redis unreachable or slow: each worker keeps the ceiling alone with an equal share,
  N / the number of workers that shared the ceiling at the last call that reached Redis
  (each call registers the worker, and counts those seen within `LIVE_S`). A worker that
  never reached Redis since it started counts itself alone. Redis is tried again every
  `REDIS_RETRY_S`; nothing ever waits on it longer than `REDIS_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import metrics

log = structlog.get_logger("tidings.throughput")

# A worker that sent nothing through a ceiling for this long no longer counts in its share.
LIVE_S = 10.0
# A worker holds, per throttled channel, what its share of the ceiling sends in this long:
# enough to keep the ceiling busy through a provider's latency, few enough to hold briefly.
HOLD_AHEAD_S = 2.0
# Redis failed: the worker keeps its local share this long before asking Redis again.
REDIS_RETRY_S = 1.0
# The longest one bucket call may take before the worker falls back to its local share.
REDIS_TIMEOUT_S = 0.5

# KEYS[1]: the bucket (hash: tokens, ts); KEYS[2]: the workers using it (zset: id -> last seen).
# ARGV: rate (tokens/s), burst (capacity), wanted, worker id, live window (s).
# Returns {tokens granted, ms until the next chunk could be granted, workers live}.
# Redis's TIME, not the callers' clocks: every worker measures the refill with one clock.
# Floats are stored with %.6f: Lua's tostring keeps 14 digits, too few for epoch seconds.
TAKE_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
end
local got = math.min(want, math.floor(tokens))
if got < 0 then got = 0 end
tokens = tokens - got
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 60000)
local wait_ms = 0
if got < want then
  local next = math.min(want - got, burst)
  wait_ms = math.ceil(math.max(0, next - tokens) / rate * 1000)
end
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[5]))
redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[5]) * 1000) + 60000)
local live = redis.call('ZCARD', KEYS[2])
return {got, wait_ms, live}
"""


def burst_of(per_s: float) -> int:
    """The bucket's capacity: a tenth of a second's worth, at least one token."""
    return max(1, math.ceil(per_s / 10))


class _LocalBucket:
    """The fallback while Redis is away: this worker's equal share, in process."""

    def __init__(self) -> None:
        self.tokens = 0.0
        self.at = time.monotonic()

    def take(self, want: int, rate: float, burst: int) -> tuple[int, float]:
        now = time.monotonic()
        self.tokens = min(float(burst), self.tokens + (now - self.at) * rate)
        self.at = now
        got = min(want, math.floor(self.tokens))
        self.tokens -= got
        wait_s = 0.0
        if got < want:
            wait_s = max(0.0, min(want - got, burst) - self.tokens) / rate
        return got, wait_s


class Ceiling:
    """N messages a second across every worker; `take` waits for one message's token."""

    def __init__(self, owner: Throughput, name: str, per_s: float) -> None:
        self.owner = owner
        self.name = name
        self.per_s = per_s
        self.burst = burst_of(per_s)
        self.bucket_key = owner.key(name)
        self.workers_key = owner.key(name) + ":workers"
        self.tokens = 0  # taken from the bucket, not yet handed out
        self.waiting = 0  # sends waiting for a token
        self.live_workers: int | None = None  # at the last call that reached Redis
        self._lock = asyncio.Lock()
        self._local = _LocalBucket()
        self._redis_retry_at = 0.0
        self._on_local = False

    @property
    def share_per_s(self) -> float:
        """What this worker may send a second: N / the workers sharing the ceiling."""
        return self.per_s / max(1, self.live_workers or 1)

    async def take(self) -> None:
        """Wait for a token (never longer than the ceiling requires, whatever Redis does)."""
        if self.tokens > 0:
            self.tokens -= 1
            return
        started = time.monotonic()
        self.waiting += 1
        try:
            # FIFO: one waiter at a time fetches (for all who wait) and sleeps until more come.
            async with self._lock:
                while self.tokens <= 0:
                    got, wait_s = await self._fetch(min(max(1, self.waiting), self.burst))
                    self.tokens += got
                    if self.tokens <= 0:
                        await asyncio.sleep(max(wait_s, 0.001))
                self.tokens -= 1
        finally:
            self.waiting -= 1
            waited_s = time.monotonic() - started
            metrics.THROUGHPUT_WAIT.labels(self.name).inc(waited_s)

    async def _fetch(self, want: int) -> tuple[int, float]:
        now = time.monotonic()
        if self.owner.redis is not None and now >= self._redis_retry_at:
            try:
                got, wait_ms, live = await asyncio.wait_for(
                    self.owner.script(
                        keys=[self.bucket_key, self.workers_key],
                        args=[self.per_s, self.burst, want, self.owner.worker_id, LIVE_S],
                    ),
                    REDIS_TIMEOUT_S,
                )
            except (OSError, RedisError, TimeoutError) as exc:
                self._redis_retry_at = now + REDIS_RETRY_S
                if not self._on_local:
                    self._on_local = True
                    metrics.THROUGHPUT_LOCAL.labels(self.name).set(1)
                    log.warning(
                        "throughput_local_share",
                        ceiling=self.name,
                        per_s=round(self.share_per_s, 3),
                        workers=self.live_workers or 1,
                        error=str(exc) or type(exc).__name__,
                    )
            else:
                self.live_workers = max(1, int(live))
                if self._on_local:
                    self._on_local = False
                    metrics.THROUGHPUT_LOCAL.labels(self.name).set(0)
                    log.info("throughput_shared_again", ceiling=self.name, workers=self.live_workers)
                return int(got), int(wait_ms) / 1000
        share = self.share_per_s
        return self._local.take(want, share, burst_of(share))


class Throughput:
    """One worker's ceilings, by name, sharing one Redis client (None: each kept locally)."""

    def __init__(self, redis: Redis | None, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.worker_id = uuid.uuid4().hex
        self.ceilings: dict[str, Ceiling] = {}
        self.governing: dict[str, Callable[[], Ceiling | None]] = {}
        self._script: Any = redis.register_script(TAKE_SCRIPT) if redis is not None else None

    def key(self, name: str) -> str:
        # One hash tag: a bucket and its workers live on one Redis Cluster slot.
        return f"{self.prefix}throughput:{{{name}}}"

    async def script(self, *, keys: list[str], args: list[Any]) -> tuple[int, int, int]:
        result = await self._script(keys=keys, args=args)
        return int(result[0]), int(result[1]), int(result[2])

    def ceiling(self, name: str, per_s: float | None) -> Ceiling | None:
        """The ceiling called `name` (made on first use); None when there is none to keep."""
        if per_s is None or per_s <= 0:
            return None
        found = self.ceilings.get(name)
        if found is None:
            found = self.ceilings[name] = Ceiling(self, name, per_s)
        return found

    def governs(self, channel: str, ceiling_now: Callable[[], Ceiling | None]) -> None:
        """`ceiling_now()` is the ceiling the channel's next message goes through (for email,
        that of the first relay up; None: none)."""
        self.governing[channel] = ceiling_now

    def claim_limit(self, pending: Mapping[str, int]) -> int | None:
        """How many messages the pump may claim now, given those it holds unsent per channel:
        None, any number (no channel has a ceiling); else, for the strictest throttled channel,
        what this worker's share of its ceiling sends in HOLD_AHEAD_S less what it already
        holds of that channel (0 or less: claim nothing until some are sent). A claim can
        return messages of any channel, so every throttled channel bounds it."""
        limit: int | None = None
        for channel, ceiling_now in self.governing.items():
            c = ceiling_now()
            if c is not None:
                allowance = math.ceil(c.share_per_s * HOLD_AHEAD_S) - pending.get(channel, 0)
                limit = allowance if limit is None else min(limit, allowance)
        return limit

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
