"""What every job needs, made once in the worker's on_startup and closed in on_shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import TYPE_CHECKING

import asyncpg
from redis.asyncio import Redis

from shared.batching import Batcher
from shared.config import Settings
from shared.redis_keys import RedisKeys
from worker.channels.email import EmailChannel
from worker.channels.whatsapp import WhatsAppChannel
from worker.render_sandbox import RenderPool

if TYPE_CHECKING:
    from worker.deliver import Outcome


@dataclasses.dataclass(slots=True)
class WorkerContext:
    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    keys: RedisKeys
    email: EmailChannel
    whatsapp: WhatsAppChannel
    # Concurrent deliveries share their outcome writes (one statement and commit per batch).
    outcomes: Batcher[tuple[uuid.UUID, list[Outcome]], None] = dataclasses.field(init=False)
    # Templates render in child processes bounded in CPU and memory (started on first use).
    renderer: RenderPool = dataclasses.field(default_factory=RenderPool)
    # Failed tries at writing outcomes so far (they are retried until written): the pump
    # claims nothing new after one until what it owes is written (worker/pump.py).
    outcome_write_failures: int = 0
    # When set (a loop time), outcome writes still failing past it give up: a stopping worker's
    # drain is over. Unset, they are retried for as long as the process lives.
    outcomes_deadline: float | None = None

    def __post_init__(self) -> None:
        from worker.deliver import record_batch

        self.outcomes = Batcher(lambda batch: record_batch(self, batch), max_size=500)

    async def close(self) -> None:
        if self.outcomes_deadline is None:
            # Closed without a drain (Pump.stop sets one): writes still failing end at their next try.
            self.outcomes_deadline = asyncio.get_running_loop().time()
        await self.outcomes.close()
        await self.renderer.close()
