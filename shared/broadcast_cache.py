"""A short-lived per-process cache of broadcast configuration for the send path.

Every trigger needs its broadcast and templates; reading them from Postgres each time
costs two round trips. Entries live `ttl_s` and are dropped at once in the process that
changes a broadcast. Staleness can never let a trigger through a pause: the final
insert (`insert_sends_batch`) checks the broadcast is active in the same statement.
A template edit reaches other API replicas within `ttl_s`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg

from shared.sql import Q


class BroadcastCache:
    def __init__(self, ttl_s: float = 1.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[tuple[uuid.UUID, uuid.UUID], tuple[Any, list[Any], float]] = {}

    async def get(
        self, pool: asyncpg.Pool, org_id: uuid.UUID, broadcast_id: uuid.UUID
    ) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
        key = (org_id, broadcast_id)
        hit = self._entries.get(key)
        if hit is not None and hit[2] > time.monotonic():
            return hit[0], hit[1]
        broadcast = await pool.fetchrow(Q.select_broadcast, broadcast_id, org_id)
        templates = list(await pool.fetch(Q.select_templates, [broadcast_id])) if broadcast is not None else []
        if self.ttl_s > 0:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (broadcast, templates, time.monotonic() + self.ttl_s)
        return broadcast, templates

    def invalidate(self, org_id: uuid.UUID, broadcast_id: uuid.UUID) -> None:
        self._entries.pop((org_id, broadcast_id), None)


# Used when a caller has no cache of its own (the CLI): always reads Postgres.
NO_CACHE = BroadcastCache(ttl_s=0)
