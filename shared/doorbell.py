"""Waking the workers: a Redis pub/sub message after messages are committed.

Postgres is the delivery queue (worker/pump.py); this only saves the time an idle worker
would otherwise sleep (at most `worker.pump.IDLE_CHECK_S`). So a ring that fails is
logged and forgotten: the messages are committed and will be claimed all the same.
"""

from __future__ import annotations

import asyncio

import structlog
from redis.asyncio import Redis

from shared.redis_keys import RedisKeys

log = structlog.get_logger("tidings.doorbell")


# A ring that takes longer is given up: Redis is hung, and nothing may wait on it.
RING_TIMEOUT_S = 2.0


async def ring(redis: Redis, keys: RedisKeys) -> bool:
    """Wake idle workers; returns whether Redis took the ring."""
    try:
        await asyncio.wait_for(redis.publish(keys.doorbell_channel, b"1"), RING_TIMEOUT_S)
    except Exception:  # Redis down, hung, or anything else: the messages are committed all the same
        log.warning("doorbell_failed", exc_info=True)
        return False
    return True
