"""Process-wide tuning shared by the api and the worker processes."""

from __future__ import annotations

import gc

# Python's default is 700 allocations; a request or a delivery allocates hundreds.
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """A server allocates many short-lived objects per request: collect the young generation
    less often, and keep what start-up made (modules, caches) out of every collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
