"""Ids for rows created on the hot path.

Ids are opaque (never sequential), but they are not secrets: every object is read through
an authenticated, org-scoped route. So they come from a fast PRNG seeded from the OS once
per process, instead of `uuid4()`'s system call per id.

A message's id is a UUIDv7 (RFC 9562): its first 48 bits are the Unix time in milliseconds,
and the message's created_at is that time (shared/migrations/0017: messages are partitioned
by created_at, and a statement that knows only an id finds its partition from it).
"""

from __future__ import annotations

import os
import random
import time
import uuid

_random = random.Random()  # seeded from os.urandom at creation
# A forked child must not repeat its parent's sequence.
os.register_at_fork(after_in_child=_random.seed)


def new_id() -> uuid.UUID:
    return uuid.UUID(int=_random.getrandbits(128), version=4)


_V7_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_V7_RANDOM_MASK = ((1 << 12) - 1) << 64 | ((1 << 62) - 1)


def new_message_id(now_s: float | None = None) -> uuid.UUID:
    """A message's id: UUIDv7, the time (`now_s`, default the clock) in milliseconds, then 74
    random bits. The time is the message's created_at (uuid_v7_time in SQL)."""
    ms = int((time.time() if now_s is None else now_s) * 1000)
    rand = _random.getrandbits(128) & _V7_RANDOM_MASK
    return uuid.UUID(int=(ms & 0xFFFF_FFFF_FFFF) << 80 | _V7_VERSION_AND_VARIANT | rand)


# A batch request's sends get ids that name the batch: one random base with its low bits
# holding the item's index. A retry that takes over the batch's Idempotency-Key finds any
# one of them bound to the key, and from it every send the first request committed.
BATCH_INDEX_BITS = 9  # up to 512 items
_INDEX_MASK = (1 << BATCH_INDEX_BITS) - 1


def batch_ids(base: uuid.UUID, count: int) -> list[uuid.UUID]:
    """The ids of a batch's `count` sends (the base's index bits are ignored)."""
    if count > _INDEX_MASK + 1:
        raise ValueError(f"a batch holds at most {_INDEX_MASK + 1} items")
    top = base.int & ~_INDEX_MASK
    return [uuid.UUID(int=top | i) for i in range(count)]


def batch_base(send_id: uuid.UUID) -> uuid.UUID:
    """The batch a send made by `batch_ids` belongs to (its base, index 0)."""
    return uuid.UUID(int=send_id.int & ~_INDEX_MASK)
