"""Ids for rows created on the hot path.

Ids are opaque and unordered (never sequential), but they are not secrets: every object
is read through an authenticated, org-scoped route. So they come from a fast PRNG seeded
from the OS once per process, instead of `uuid4()`'s system call per id.
"""

from __future__ import annotations

import os
import random
import uuid

_random = random.Random()  # seeded from os.urandom at creation
# A forked child must not repeat its parent's sequence.
os.register_at_fork(after_in_child=_random.seed)


def new_id() -> uuid.UUID:
    return uuid.UUID(int=_random.getrandbits(128), version=4)
