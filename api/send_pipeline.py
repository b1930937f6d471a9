"""Accepting sends in batches: one commit and one Redis round trip for many requests.

Each request prepares its send alone (validation, recipient, variables) and then hands
it here. Sends that arrive while a batch is being written go together in the next one,
so under load the cost of a commit (its fsync) and of an enqueue is shared.
"""

from __future__ import annotations

import asyncpg
import redis.exceptions
import structlog
from arq.connections import ArqRedis

from shared import errors, jobs, metrics, sending
from shared.batching import Batcher

log = structlog.get_logger("tidings.api.send")


class Accepted:
    """What the batch did with one send: written, and whether its job is in Redis."""

    __slots__ = ("enqueued",)

    def __init__(self, enqueued: bool) -> None:
        self.enqueued = enqueued


class SendPipeline:
    def __init__(self, pool: asyncpg.Pool, redis: ArqRedis, queue_name: str) -> None:
        self.pool = pool
        self.redis = redis
        self.queue_name = queue_name
        self.batcher: Batcher[tuple[sending.PreparedSend, bool], Accepted] = Batcher(self._flush)

    async def accept(self, send: sending.PreparedSend, *, notify: bool) -> Accepted:
        """Commit the send, then enqueue it; raises BroadcastNotActive if it was paused meanwhile."""
        return await self.batcher.submit((send, notify))

    async def _flush(self, batch: list[tuple[sending.PreparedSend, bool]]) -> list[Accepted | BaseException]:
        outcomes = await sending.commit_many(self.pool, [send for send, _ in batch])
        to_enqueue = [
            (send.send_id, notify, send.request_id)
            for (send, notify), refused in zip(batch, outcomes, strict=True)
            if refused is None and send.queued
        ]
        enqueued = True
        if to_enqueue:
            try:
                await jobs.enqueue_sends(self.redis, self.queue_name, to_enqueue)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                # Committed means accepted: the reconciler enqueues these once Redis is back.
                # Answering an error here would invite a retry and a duplicate.
                log.warning("enqueue_failed_sends_kept", sends=len(to_enqueue))
                enqueued = False
        metrics.SENDS_ACCEPTED.inc(sum(1 for refused in outcomes if refused is None))
        results: list[Accepted | BaseException] = []
        for refused in outcomes:
            results.append(refused if isinstance(refused, errors.TidingsError) else Accepted(enqueued))
        return results

    async def close(self) -> None:
        await self.batcher.close()
