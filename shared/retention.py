"""Retention: an org's message content is erased once it is older than the org's
`retention_days` (else RETENTION_DAYS), the GDPR lever beside redaction (docs/operations.md).

Erased: each message's rendered content, its transactional's subject, body, preheader and
recipient name, and its send's variables (what a trigger carried). Kept: statuses, timestamps,
addresses, errors and events, so history, search and summaries still answer. The reconciler
runs it (worker/reconcile.py) in batches of `batch_rows`, each one short statement that
skips locked rows: it never holds a lock the hot path waits for.
"""

from __future__ import annotations

import random
import time

import asyncpg

from shared import db
from shared.sql import Q

# Rows per statement: small enough that one batch's locks and WAL are brief.
BATCH_ROWS = 1_000


@db.translated
async def erase_expired(
    pool: asyncpg.Pool, default_days: int, *, batch_rows: int = BATCH_ROWS, budget_s: float = 10.0
) -> int:
    """Erase the content of messages past their org's retention; returns how many. Works
    through the orgs batch by batch and stops after `budget_s` (the next run goes on)."""
    deadline = time.monotonic() + budget_s
    erased = 0
    orgs = list(await pool.fetch(Q.select_retention_cutoffs, default_days))
    # In a random order: an org with a large backlog cannot use up every run's budget before
    # the others' turn, run after run.
    random.shuffle(orgs)
    for org in orgs:
        while time.monotonic() < deadline:
            # Each batch is its own statement and so its own short transaction.
            count: int = await pool.fetchval(Q.erase_expired_content, org["id"], org["cutoff"], batch_rows)
            erased += count
            if count < batch_rows:
                break
        if time.monotonic() >= deadline:
            break
    return erased
