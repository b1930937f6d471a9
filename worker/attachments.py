"""A send's attachments as MIME parts, loaded once and shared while its emails are in flight.

A Broadcasts send may fire several email templates, and its messages are delivered side by
side (worker/deliver.py), each retried on its own. Each of them holding its own copy of a
10 MB file (and of its base64) would multiply the worker's memory by the messages in
flight. So the parts are cached by send id while any message of the send holds them: the
first loads the files from Postgres and encodes them (off the event loop), the others wait
for that and take the same bytes objects, and the last to finish drops them. The raw bytes
are dropped as soon as they are encoded.

Each message still needs its own copy of the whole email to sign and send it. So that a
worker holding many such messages at once (up to WORKER_CONCURRENCY) does not hold a
copy of each, messages with attachments also share a memory budget, `BUDGET_BYTES`: each
reserves about twice the base64 of its files (its share of the parts and its own copy of
the email) before loading anything, and waits its turn, first come first served, when the
budget is spent. One message larger than the budget still goes, alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator

from shared import attachments, db
from worker.channels.base import TransientDeliveryError
from worker.channels.email import attachment_part

# The attachment bytes (parts and emails) one worker holds at once, about: 9 emails with the
# largest attachments (10 MiB), hundreds with ordinary ones.
BUDGET_BYTES = 256 * 1024 * 1024


def reserved_bytes(attachment_bytes: int) -> int:
    """What a message with `attachment_bytes` of files reserves: their base64 twice."""
    return 2 * (4 * -(-attachment_bytes // 3))


class _Budget:
    """Bytes reserved and given back; a reservation that does not fit waits, in order."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def _fits(self, n: int) -> bool:
        return self.used_bytes == 0 or self.used_bytes + n <= self.limit_bytes

    async def acquire(self, n: int) -> None:
        if not self._waiting and self._fits(n):
            self.used_bytes += n
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((n, granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(n)  # granted as it was cancelled: give it back
            raise

    def release(self, n: int) -> None:
        self.used_bytes -= n
        while self._waiting:
            size, granted = self._waiting[0]
            if granted.done():  # its waiter was cancelled
                self._waiting.popleft()
            elif self._fits(size):
                self._waiting.popleft()
                self.used_bytes += size
                granted.set_result(None)
            else:
                break


@dataclasses.dataclass(slots=True)
class _Entry:
    parts: asyncio.Future[tuple[bytes, ...]]
    holders: int = 0


class AttachmentParts:
    def __init__(self, pool: db.Pool, budget_bytes: int = BUDGET_BYTES) -> None:
        self.pool = pool
        self.budget = _Budget(budget_bytes)
        self._held: dict[uuid.UUID, _Entry] = {}

    @contextlib.asynccontextmanager
    async def hold(self, send_id: uuid.UUID, attachment_bytes: int) -> AsyncIterator[tuple[bytes, ...]]:
        """The send's files as encoded parts, in their order, for as long as the block runs
        (`attachment_bytes`: their size, as the claim read it). Postgres unreachable:
        TransientDeliveryError (the message is retried); `db.Refused` when it refuses."""
        reserved = reserved_bytes(attachment_bytes)
        await self.budget.acquire(reserved)
        try:
            async with self._parts(send_id) as parts:
                yield parts
        finally:
            self.budget.release(reserved)

    @contextlib.asynccontextmanager
    async def _parts(self, send_id: uuid.UUID) -> AsyncIterator[tuple[bytes, ...]]:
        entry = self._held.get(send_id)
        if entry is None:
            entry = self._held[send_id] = _Entry(asyncio.ensure_future(self._load(send_id)))
        entry.holders += 1
        try:
            try:
                # Shielded: one holder cancelled does not cancel the load the others wait for.
                parts = await asyncio.shield(entry.parts)
            except db.TryAgain as exc:
                raise TransientDeliveryError(f"the attachments could not be read: {exc.message}") from exc
            yield parts
        finally:
            entry.holders -= 1
            if entry.holders == 0:
                del self._held[send_id]
                if not entry.parts.done():
                    entry.parts.cancel()
                elif not entry.parts.cancelled():
                    entry.parts.exception()  # retrieved: a failed load is not logged as unhandled

    def __len__(self) -> int:
        """Sends whose parts are held now."""
        return len(self._held)

    async def _load(self, send_id: uuid.UUID) -> tuple[bytes, ...]:
        return await asyncio.to_thread(_encode, await attachments.load(self.pool, send_id))


def _encode(stored: list[attachments.Stored]) -> tuple[bytes, ...]:
    parts = []
    stored.reverse()
    while stored:
        # Each file's raw bytes are let go as soon as its part is made.
        one = stored.pop()
        parts.append(attachment_part(one.filename, one.content_type, one.content))
        del one
    return tuple(parts)
