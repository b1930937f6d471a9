"""Waiting for I/O with a deadline that holds even when cancelling the I/O does not return.

`asyncio.wait_for` cancels its awaitable at the deadline and then waits for the cancellation
to finish. For an asyncpg statement on a connection to a server that stopped answering,
finishing means a cancel request and a connection reset, which can wait as long as the server
stays away (measured: a request held for 300 s past its own 1 s bound). `within` waits for
the deadline only: the work is cancelled and left to end in the background.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

# Abandoned tasks are kept referenced until they end, so that none is collected while pending.
_abandoned: set[asyncio.Task[Any]] = set()


async def within(coro: Awaitable[T], timeout_s: float) -> T:
    """The result of `coro`, or TimeoutError after `timeout_s` (the work is then cancelled and
    not waited for)."""
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        abandon(task)
        raise
    if not done:
        abandon(task)
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    return task.result()


def abandon(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and let it end on its own, in the background."""
    task.cancel()
    if not task.done():
        _abandoned.add(task)
        task.add_done_callback(_forget)


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # read: an abandoned task's error has no one left to tell
