"""Accepting sends in batches: one commit and one Redis round trip for many requests.

Each request prepares its send alone (validation, recipient, variables) and then hands
it here. Sends that arrive while a batch is being written go together in the next one,
so under load the cost of a commit (its fsync) and of waking the workers is shared.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog
from redis.asyncio import Redis

from shared import doorbell, errors, metrics, sending
from shared.batching import Batcher
from shared.redis_keys import RedisKeys

log = structlog.get_logger("tidings.api.send")


class Accepted:
    """What the batch did with one send: written; `rung()` says whether the workers were woken."""

    __slots__ = ("_ring",)

    def __init__(self, ring: asyncio.Future[bool]) -> None:
        self._ring = ring

    async def rung(self) -> bool:
        # False when Redis was unreachable: the send is kept and a worker finds it on its
        # next look at Postgres, but no outcome can be published to a waiting caller.
        return await asyncio.shield(self._ring)


class SendPipeline:
    def __init__(self, pool: asyncpg.Pool, redis: Redis, keys: RedisKeys) -> None:
        self.pool = pool
        self.redis = redis
        self.keys = keys
        # One batch at a time: measured, it beats two in flight (each request waits for at
        # most one commit before its own, and batches grow instead of splitting).
        self.batcher: Batcher[sending.PreparedSend, Accepted] = Batcher(self._flush, max_in_flight=1)
        self._rings: set[asyncio.Future[bool]] = set()

    async def accept(self, send: sending.PreparedSend, *, notify: bool) -> Accepted:
        """Commit the send and wake the workers; raises BroadcastNotActive if it was paused meanwhile."""
        send.notify = notify
        return await self.batcher.submit(send)

    async def _flush(self, batch: list[sending.PreparedSend]) -> list[Accepted | BaseException]:
        outcomes = await sending.commit_many(self.pool, batch)
        if any(refused is None and send.queued for send, refused in zip(batch, outcomes, strict=True)):
            # Committed means accepted, rung or not: answering an error here would invite a
            # retry and a duplicate. The ring runs beside the next batch's commit, not before
            # it: only a caller waiting for the outcome waits for the ring.
            ring: asyncio.Future[bool] = asyncio.ensure_future(doorbell.ring(self.redis, self.keys))
            self._rings.add(ring)
            ring.add_done_callback(self._rings.discard)
        else:
            ring = asyncio.get_running_loop().create_future()
            ring.set_result(True)
        metrics.SENDS_ACCEPTED.inc(sum(1 for refused in outcomes if refused is None))
        return [refused if isinstance(refused, errors.TidingsError) else Accepted(ring) for refused in outcomes]

    async def close(self) -> None:
        await self.batcher.close()
        if self._rings:
            await asyncio.gather(*self._rings, return_exceptions=True)
