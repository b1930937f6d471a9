"""The worker's statements on webhook deliveries (shared/sql/webhook_deliveries.sql): claim due
ones under a lease, write each attempt's outcome, give back unfinished ones on stop, and read
the backlog for the metrics.

Like shared/delivery.py, each function turns asyncpg's errors into `db.TryAgain` (a failure
that passes) or `db.Refused`, the two the worker handles.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

from shared import db
from shared.sql import Q


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """What a failed attempt did to its endpoint."""

    endpoint_id: uuid.UUID
    disabled_now: bool


async def claim(pool: db.Pool, limit: int, lease_s: float, per_endpoint: int) -> list[db.Record]:
    """Claim up to `limit` due deliveries (at most `per_endpoint` in flight per endpoint, all
    workers together), each leased for `lease_s` and counted as an attempt."""
    with db.passing_or_refused():
        rows: list[db.Record] = await pool.fetch(Q.claim_webhook_deliveries, limit, lease_s, per_endpoint)
    return rows


async def record_successes(pool: db.Pool, done: Sequence[tuple[uuid.UUID, int, int]]) -> None:
    """Write attempts that succeeded, together: (delivery id, the claim's attempt, HTTP status)."""
    with db.passing_or_refused():
        await pool.execute(
            Q.record_webhook_successes, [d for d, _, _ in done], [a for _, a, _ in done], [s for _, _, s in done]
        )


async def record_failure(
    pool: db.Pool,
    delivery_id: uuid.UUID,
    attempt: int,
    *,
    response_status: int | None,
    error: str,
    retry_in_s: float | None,
    disable_after_s: float,
    disabled_reason: str,
) -> Failure | None:
    """Write a failed attempt (`retry_in_s` None: no retry left, the delivery has failed); None
    when the attempt's lease had been taken over (nothing written)."""
    with db.passing_or_refused():
        row = await pool.fetchrow(
            Q.record_webhook_failure,
            delivery_id,
            attempt,
            response_status,
            error,
            retry_in_s,
            disable_after_s,
            disabled_reason,
        )
    return None if row is None else Failure(endpoint_id=row["id"], disabled_now=row["disabled_now"])


async def release(pool: db.Pool, held: Sequence[tuple[uuid.UUID, int]]) -> None:
    """Give back deliveries a stopping worker did not finish: due again at once."""
    with db.passing_or_refused():
        await pool.execute(Q.release_webhook_deliveries, [d for d, _ in held], [a for _, a in held])


async def backlog(pool: db.Pool) -> tuple[dict[str, int], dict[str, int]]:
    """(pending deliveries by endpoint state, events made in the last five minutes by type)."""
    with db.passing_or_refused():
        rows = await pool.fetch(Q.select_webhook_backlog)
    by_state = {r["label"]: r["n"] for r in rows if r["kind"] == "backlog"}
    by_type = {r["label"]: r["n"] for r in rows if r["kind"] == "events"}
    return by_state, by_type


async def prune(pool: db.Pool, retention_s: float, batch: int) -> int:
    """Delete up to `batch` events and `batch` deliveries older than `retention_s`; returns the
    larger count (`batch`: there may be more)."""
    with db.passing_or_refused():
        row = await pool.fetchrow(Q.prune_webhook_outbox, retention_s, batch)
    assert row is not None
    return max(int(row["events"]), int(row["deliveries"]))
