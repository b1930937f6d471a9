"""Low-latency wake-up for `background: false` sends.

arq's `Job.result()` polls every 0.5 s; instead each API process holds one Redis
pattern subscription, and the worker publishes the send's records when it has settled
them. A waiter is registered before the job is enqueued, so no publish can be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from shared.redis_keys import RedisKeys

log = structlog.get_logger("tidings.api.waiter")


class SendWaiter:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._waiting: dict[str, asyncio.Future[Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._ready.wait(), timeout=10)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def register(self, send_id: str) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[send_id] = fut
        return fut

    def forget(self, send_id: str) -> None:
        self._waiting.pop(send_id, None)

    async def _listen(self) -> None:
        prefix_len = len(self.keys.send_done_pattern) - 1
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(self.keys.send_done_pattern)
                self._ready.set()
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    send_id = message["channel"][prefix_len:].decode()
                    fut = self._waiting.pop(send_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(orjson.loads(message["data"]))
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                raise
            except Exception:
                # Redis went away: waiters fall back to their timeout; resubscribe shortly.
                log.warning("send_waiter_reconnect", exc_info=True)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(0.5)
