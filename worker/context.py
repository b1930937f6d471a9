"""What every job needs, made once in the worker's on_startup and closed in on_shutdown."""

from __future__ import annotations

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

    def __post_init__(self) -> None:
        from worker.deliver import record_batch

        self.outcomes = Batcher(lambda batch: record_batch(self, batch), max_size=500)

    async def close(self) -> None:
        await self.outcomes.close()
        await self.renderer.close()
