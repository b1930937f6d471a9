"""Opportunistic batching: many concurrent callers, one round trip.

Under load, committing each request's send on its own costs one fsync per request, and
waking the workers for each one a Redis round trip. A `Batcher` runs at most
`max_in_flight` flushes at a time; items submitted while those run wait and go together
in the next flush. When idle, an item is flushed at once, so batching adds no latency to
a quiet system. `shared.accept` batches the sends it accepts this way; a batch request's
sends are submitted as one group (`submit_group`), so they are always committed together.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# A flush returns, per item, its result or the exception to raise to that item's caller.
Flush = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]
# Told after each flush: its item count, how long its oldest item waited for it to start (s),
# and how long it ran (s). Where a pipeline's time goes: waiting for a slot, or in the flush.
Observe = Callable[[int, float, float], None]


class Batcher(Generic[T, R]):
    def __init__(
        self, flush: Flush[T, R], *, max_size: int = 200, max_in_flight: int = 2, observe: Observe | None = None
    ) -> None:
        self._flush = flush
        self.max_size = max_size
        self._slots = asyncio.Semaphore(max_in_flight)
        self._observe = observe
        # Groups of items that must share a flush (a single `submit` is a group of one).
        self._pending: collections.deque[list[tuple[T, asyncio.Future[R]]]] = collections.deque()
        # When each pending group was submitted (loop time), in the same order.
        self._submitted: collections.deque[float] = collections.deque()
        self._pending_size = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        (fut,) = self._enqueue([item])
        return await fut

    async def submit_group(self, items: Sequence[T]) -> list[R | BaseException]:
        """Flush `items` together, in one flush of their own or with others (a group larger
        than `max_size` is never split); per item, its result or the exception for it."""
        if not items:
            return []
        futures = self._enqueue(items)
        return list(await asyncio.gather(*futures, return_exceptions=True))

    def _enqueue(self, items: Sequence[T]) -> list[asyncio.Future[R]]:
        loop = asyncio.get_running_loop()
        group = [(item, loop.create_future()) for item in items]
        was_idle = not self._pending
        self._pending.append(group)
        self._submitted.append(loop.time())
        self._pending_size += len(group)
        if was_idle or self._pending_size >= self.max_size:
            self._start()
        return [fut for _, fut in group]

    def _start(self) -> None:
        task = asyncio.create_task(self._run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        async with self._slots:
            # Take whatever gathered while we waited for a slot (possibly nothing), whole
            # groups only, up to max_size items (or one larger group alone).
            batch: list[tuple[T, asyncio.Future[R]]] = []
            oldest = 0.0
            while self._pending and (not batch or len(batch) + len(self._pending[0]) <= self.max_size):
                batch.extend(self._pending.popleft())
                submitted = self._submitted.popleft()
                oldest = oldest or submitted
            self._pending_size -= len(batch)
            if self._pending and self._pending_size < self.max_size:
                # Leftovers need a flush of their own.
                self._start()
            if not batch:
                return
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                results = await self._flush([item for item, _ in batch])
            except BaseException as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            if self._observe is not None:
                self._observe(len(batch), started - oldest, loop.time() - started)
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
