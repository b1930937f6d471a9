"""Waiting for a send's outcome (`background: false`, `tidings send` without `--background`).

Polling Postgres would put its interval on every answer; instead each process that waits
(an api, the CLI) holds one Redis pattern subscription, and the worker publishes the
outcomes of a send's messages as soon as it has recorded them. A wait is registered
before the send is committed (`shared.accept`), so no publish can be missed. A send's messages
may be settled in more than one piece (claimed in different batches): the waiter merges
them and resolves when every message it expects has been reported.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis

from shared.redis_keys import RedisKeys

log = structlog.get_logger("tidings.waiter")

# How long start-up waits for the outcome subscription before going on without it.
READY_WAIT_S = 2.0


class _Wait:
    __slots__ = ("expected", "fut", "got")

    def __init__(self, fut: asyncio.Future[dict[str, Any]], expected: set[str]) -> None:
        self.fut = fut
        self.expected = expected
        self.got: dict[str, Any] = {}


class SendWaiter:
    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._waiting: dict[str, _Wait] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Subscribe, waiting at most `READY_WAIT_S`: an api must start while Redis is down
        (it answers 503 to what needs Redis meanwhile); the listener keeps trying in the
        background, and until it is subscribed a waiting send answers 202 at its timeout."""
        self._task = asyncio.create_task(self._listen())
        try:
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), timeout=READY_WAIT_S)
        except TimeoutError:
            log.warning("send_waiter_not_subscribed", waited_s=READY_WAIT_S)

    @property
    def subscribed(self) -> bool:
        """Whether the subscription was ever made (a publish can then reach this process)."""
        return self._ready.is_set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def register(self, send_id: str, message_ids: Iterable[str]) -> asyncio.Future[dict[str, Any]]:
        """A future for the outcomes (by message id) of all of `message_ids`."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[send_id] = _Wait(fut, set(message_ids))
        return fut

    def forget(self, send_id: str) -> None:
        self._waiting.pop(send_id, None)

    def reported(self, send_id: str) -> dict[str, Any]:
        """The outcomes reported so far (by message id): what a wait that timed out can show."""
        wait = self._waiting.get(send_id)
        return dict(wait.got) if wait is not None else {}

    def expect(self, send_id: str, message_ids: Iterable[str]) -> None:
        """Narrow what a waiter expects (the commit rejected some messages: nothing will come for them)."""
        wait = self._waiting.get(send_id)
        if wait is not None:
            wait.expected = set(message_ids)
            self._resolve_if_complete(send_id, wait)

    def _deliver(self, send_id: str, data: bytes) -> None:
        wait = self._waiting.get(send_id)
        if wait is None or wait.fut.done():
            return
        wait.got.update(orjson.loads(data))
        self._resolve_if_complete(send_id, wait)

    def _resolve_if_complete(self, send_id: str, wait: _Wait) -> None:
        if not wait.fut.done() and wait.expected <= wait.got.keys():
            del self._waiting[send_id]
            wait.fut.set_result(wait.got)

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
                    self._deliver(message["channel"][prefix_len:].decode(), message["data"])
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
