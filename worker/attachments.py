"""A send's attachments as MIME parts, loaded once and shared while its emails are in flight.

A Broadcasts send may fire several email templates, and its messages are delivered side by
side (worker/deliver.py), each retried on its own. Each of them holding its own copy of a
10 MB file (and of its base64) would multiply the worker's memory by the messages in
flight. So the parts are cached by send id while any message of the send holds them: the
first loads the files from Postgres and encodes them (off the event loop), the others wait
for that and take the same bytes objects, and the last to finish drops them. The raw bytes
are dropped as soon as they are encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator

from shared import attachments, db
from worker.channels.base import TransientDeliveryError
from worker.channels.email import attachment_part


@dataclasses.dataclass(slots=True)
class _Entry:
    parts: asyncio.Future[tuple[bytes, ...]]
    holders: int = 0


class AttachmentParts:
    def __init__(self, pool: db.Pool) -> None:
        self.pool = pool
        self._held: dict[uuid.UUID, _Entry] = {}

    @contextlib.asynccontextmanager
    async def hold(self, send_id: uuid.UUID) -> AsyncIterator[tuple[bytes, ...]]:
        """The send's files as encoded parts, in their order, for as long as the block runs.
        Postgres unreachable: TransientDeliveryError (the message is retried); `db.Refused`
        when it refuses the statement."""
        entry = self._held.get(send_id)
        if entry is None:
            entry = self._held[send_id] = _Entry(asyncio.ensure_future(self._load(send_id)))
        entry.holders += 1
        try:
            # Shielded: one holder cancelled does not cancel the load the others wait for.
            try:
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
        stored = await attachments.load(self.pool, send_id)
        return await asyncio.to_thread(_encode, stored)


def _encode(stored: list[attachments.Stored]) -> tuple[bytes, ...]:
    parts = []
    while stored:
        # Each file's raw bytes are let go as soon as its part is made.
        one = stored.pop(0)
        parts.append(attachment_part(one.filename, one.content_type, one.content))
    return tuple(parts)
