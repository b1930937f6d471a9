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


class _Group(Generic[T, R]):
    """Items that share a flush, and the one future their results (or exceptions) come in."""

    __slots__ = ("done", "items", "submitted")

    def __init__(self, items: Sequence[T], done: asyncio.Future[list[R | BaseException]], submitted: float) -> None:
        self.items = items
        self.done = done
        self.submitted = submitted  # loop time


class Batcher(Generic[T, R]):
    def __init__(
        self, flush: Flush[T, R], *, max_size: int = 200, max_in_flight: int = 2, observe: Observe | None = None
    ) -> None:
        self._flush = flush
        self.max_size = max_size
        self._slots = asyncio.Semaphore(max_in_flight)
        self._observe = observe
        # Groups of items that must share a flush (a single `submit` is a group of one). One
        # future a group, not one an item: a batch request's hundreds of items cost one.
        self._pending: collections.deque[_Group[T, R]] = collections.deque()
        self._pending_size = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        (result,) = await self._enqueue([item])
        if isinstance(result, BaseException):
            raise result
        return result

    async def submit_group(self, items: Sequence[T]) -> list[R | BaseException]:
        """Flush `items` together, in one flush of their own or with others (a group larger
        than `max_size` is never split); per item, its result or the exception for it."""
        if not items:
            return []
        return await self._enqueue(items)

    def _enqueue(self, items: Sequence[T]) -> asyncio.Future[list[R | BaseException]]:
        loop = asyncio.get_running_loop()
        group: _Group[T, R] = _Group(items, loop.create_future(), loop.time())
        was_idle = not self._pending
        self._pending.append(group)
        self._pending_size += len(items)
        if was_idle or self._pending_size >= self.max_size:
            self._start()
        return group.done

    def _start(self) -> None:
        task = asyncio.create_task(self._run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        async with self._slots:
            # Take whatever gathered while we waited for a slot (possibly nothing), whole
            # groups only, up to max_size items (or one larger group alone).
            groups: list[_Group[T, R]] = []
            size = 0
            while self._pending and (not groups or size + len(self._pending[0].items) <= self.max_size):
                group = self._pending.popleft()
                groups.append(group)
                size += len(group.items)
            self._pending_size -= size
            if self._pending and self._pending_size < self.max_size:
                # Leftovers need a flush of their own.
                self._start()
            if not groups:
                return
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                items = groups[0].items if len(groups) == 1 else [item for g in groups for item in g.items]
                results = await self._flush(list(items))
            except BaseException as exc:
                for group in groups:
                    if not group.done.done():
                        group.done.set_result([exc] * len(group.items))
                if not isinstance(exc, Exception):
                    raise
                return
            if self._observe is not None:
                self._observe(size, started - groups[0].submitted, loop.time() - started)
            at = 0
            for group in groups:
                n = len(group.items)
                if not group.done.done():  # its submitter may have been cancelled
                    group.done.set_result(list(results[at : at + n]))
                at += n

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
