"""Ids for rows created on the hot path.

Ids are opaque and unordered (never sequential), but they are not secrets: every object
is read through an authenticated, org-scoped route. So they come from a fast PRNG seeded
from the OS once per process, instead of `uuid4()`'s system call per id.

They are asyncpg's own UUID type (a subclass of `uuid.UUID`, equal to and hashing as the
same `uuid.UUID`), the type every uuid read from Postgres already has: made from 16 bytes
in C, written to Postgres without a Python call per id, and printed in C. `uuid.UUID(int=...)`
checked its arguments in Python and cost ≈ 2.8 µs an id against ≈ 0.7 µs, and its `str()`
≈ 1.5 µs against ≈ 0.15 µs; an accepted trigger makes two or three ids and prints them in
its answer (measured, tests/perf/README.md).

A message's id is a UUIDv7 (RFC 9562): its first 48 bits are the Unix time in milliseconds,
and the message's created_at is that time (shared/migrations/0017: messages are partitioned
by created_at, and a statement that knows only an id finds its partition from it).
"""

from __future__ import annotations

import os
import random
import time
import uuid

from asyncpg.pgproto.pgproto import UUID as _PgUUID

_random = random.Random()  # seeded from os.urandom at creation
# A forked child must not repeat its parent's sequence.
os.register_at_fork(after_in_child=_random.seed)

# RFC 4122 version 4: the version nibble and the variant's two top bits, set in every id.
_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_id() -> uuid.UUID:
    uid: uuid.UUID = _PgUUID((_random.getrandbits(128) & _V4_CLEAR | _V4_SET).to_bytes(16, "big"))
    return uid


_V7_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_V7_RANDOM_MASK = ((1 << 12) - 1) << 64 | ((1 << 62) - 1)


def new_message_id(now_s: float | None = None) -> uuid.UUID:
    """A message's id: UUIDv7, the time (`now_s`, default the clock) in milliseconds, then 74
    random bits. The time is the message's created_at (uuid_v7_time in SQL)."""
    ms = int((time.time() if now_s is None else now_s) * 1000)
    rand = _random.getrandbits(128) & _V7_RANDOM_MASK
    uid: uuid.UUID = _PgUUID(((ms & 0xFFFF_FFFF_FFFF) << 80 | _V7_VERSION_AND_VARIANT | rand).to_bytes(16, "big"))
    return uid


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
    return [_PgUUID((top | i).to_bytes(16, "big")) for i in range(count)]


def batch_base(send_id: uuid.UUID) -> uuid.UUID:
    """The batch a send made by `batch_ids` belongs to (its base, index 0)."""
    base: uuid.UUID = _PgUUID((send_id.int & ~_INDEX_MASK).to_bytes(16, "big"))
    return base
