"""What every job needs, made once in the worker's on_startup and closed in on_shutdown."""

from __future__ import annotations

import dataclasses

import asyncpg
from arq.connections import ArqRedis

from shared.config import Settings
from shared.redis_keys import RedisKeys
from worker.channels.email import EmailChannel
from worker.channels.whatsapp import WhatsAppChannel


@dataclasses.dataclass(slots=True)
class WorkerContext:
    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis
    keys: RedisKeys
    email: EmailChannel
    whatsapp: WhatsAppChannel
