"""Opportunistic batching: many concurrent callers, one round trip.

Under load, committing each request's send on its own costs one fsync per request, and
waking the workers for each one a Redis round trip. A `Batcher` runs at most
`max_in_flight` flushes at a time; items submitted while those run wait and go together
in the next flush. When idle, an item is flushed at once, so batching adds no latency to
a quiet system. `shared.accept` batches the sends it accepts this way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# A flush returns, per item, its result or the exception to raise to that item's caller.
Flush = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Batcher(Generic[T, R]):
    def __init__(self, flush: Flush[T, R], *, max_size: int = 200, max_in_flight: int = 2) -> None:
        self._flush = flush
        self.max_size = max_size
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if len(self._pending) == 1 or len(self._pending) >= self.max_size:
            task = asyncio.create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def _run(self) -> None:
        async with self._slots:
            # Take whatever gathered while we waited for a slot (possibly nothing).
            batch, self._pending = self._pending[: self.max_size], self._pending[self.max_size :]
            if self._pending and len(self._pending) < self.max_size:
                # Leftovers beyond max_size need a flush of their own.
                task = asyncio.create_task(self._run())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            if not batch:
                return
            try:
                results = await self._flush([item for item, _ in batch])
            except BaseException as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
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
