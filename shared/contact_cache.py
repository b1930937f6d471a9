"""A short-lived per-process cache of who owns an address, for the send path.

A repeat recipient (the common case for one-time passcodes) costs a Postgres round trip
per trigger to find again. Entries live `ttl_s`. A status change is never missed: the
batched insert (`insert_sends_batch`) writes a send only while its contact is still
`subscribed`, and answers the refusal otherwise.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

Key = tuple[uuid.UUID, str | None, str | None]
Loaded = tuple[Any, list[Any]]


class ContactCache:
    def __init__(self, ttl_s: float = 1.0, max_entries: int = 50_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[Key, tuple[Loaded, float]] = {}

    def has(self, key: Key) -> bool:
        """Whether `key` would be answered from the cache now."""
        return self.peek(key) is not None

    def peek(self, key: Key) -> Loaded | None:
        """What the cache would answer for `key` now, without loading it (None: a miss)."""
        hit = self._entries.get(key)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    async def get(self, key: Key, load: Callable[[], Awaitable[Loaded]]) -> Loaded:
        hit = self._entries.get(key)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        value = await load()
        self.put(key, value)
        return value

    def put(self, key: Key, value: Loaded) -> None:
        """Keep what was just read from Postgres for `ttl_s` (nothing when the cache is off)."""
        if self.ttl_s > 0:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (value, time.monotonic() + self.ttl_s)


# Used when a caller has no cache of its own (the CLI): always reads Postgres.
NO_CONTACT_CACHE = ContactCache(ttl_s=0)


class PreloadedContacts(ContactCache):
    """A batch's recipients found in one query beforehand (`contacts.find_many`); the others go
    through the process's cache as a single trigger's would."""

    def __init__(self, found: dict[Key, Loaded], fallback: ContactCache) -> None:
        super().__init__(ttl_s=0)
        self.found = found
        self.fallback = fallback

    async def get(self, key: Key, load: Callable[[], Awaitable[Loaded]]) -> Loaded:
        hit = self.found.get(key)
        if hit is not None:
            return hit
        return await self.fallback.get(key, load)
