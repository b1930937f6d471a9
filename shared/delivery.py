"""Delivery's data layer: every statement the worker runs on the messages it delivers.

Postgres is the queue. A worker's pump claims due messages (`claim_due`: queued or
scheduled -> sending, with a lease), renews the leases of those it holds
(`renew_leases`), writes their outcomes (`record_outcomes`) and, stopping, gives back the
ones it did not finish (`release_claims`); the reconciler takes back the messages of a
worker that died (`reclaim_expired`). The statements are in shared/sql/delivery.sql.

Each function turns asyncpg's errors into the two the worker handles (shared/db.py):
`db.TryAgain`, a failure that passes (Postgres away, restarting, failing over, a deadlock),
and `db.Refused`, a statement Postgres refuses outright.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence

from shared import db
from shared.domain import MessageStatus
from shared.sql import Q


@dataclasses.dataclass(slots=True)
class Outcome:
    """How one claimed message ended at its channel, as `record_outcomes` writes it."""

    message_id: uuid.UUID
    status: MessageStatus
    _: dataclasses.KW_ONLY
    attempt: int = 0  # the claim's attempt number: the write is fenced by it
    external_message_id: str | None = None
    error: str | None = None
    next_attempt_at: dt.datetime | None = None  # a retry's due time (status queued)
    suppress: str | None = None  # an address refused outright: suppressed in the message's org
    # A test message's status right after `sent` (bounced, complained, delivered), with its
    # event's detail: written with the outcome, never to a live message (worker/channels/testmode.py).
    then: MessageStatus | None = None
    then_detail: str | None = None


async def claim_due(pool: db.Pool, limit: int, lease_s: float) -> list[db.Record]:
    """Claim up to `limit` due messages with a lease of `lease_s`; each row carries what
    rendering and reporting need (shared/sql/delivery.sql `claim_due`)."""
    with db.passing_or_refused():
        rows: list[db.Record] = await pool.fetch(Q.claim_due, limit, lease_s)
    return rows


async def seconds_to_next_due(pool: db.Pool) -> float | None:
    """Seconds until the next waiting message falls due (negative: due already; None: none
    is waiting), by the database's clock."""
    with db.passing_or_refused():
        wait_s: float | None = await pool.fetchval(Q.select_next_due)
    return wait_s


async def renew_leases(pool: db.Pool, held: Mapping[uuid.UUID, int], lease_s: float) -> int:
    """Extend the leases of the messages held (message id -> the claim's attempt number);
    returns how many the reconciler had taken back and are this worker's again."""
    with db.passing_or_refused():
        taken_back: int = await pool.fetchval(Q.renew_leases, list(held), list(held.values()), lease_s)
    return taken_back


async def release_claims(pool: db.Pool, claims: Mapping[uuid.UUID, int]) -> int:
    """Give back claimed messages not sent (message id -> the claim's attempt number): queued
    again now, not when their lease expires. Returns how many were given back."""
    with db.passing_or_refused():
        released: int = await pool.fetchval(Q.release_claims, list(claims), list(claims.values()))
    return released


async def record_outcomes(pool: db.Pool, batch: Sequence[tuple[uuid.UUID, Sequence[Outcome]]]) -> None:
    """Write the outcomes of many deliveries (org id, outcomes) in one transaction, with the
    suppressions they call for. Safe to repeat: each write is fenced by its claim."""
    # In id order: Postgres locks the rows in that order when it looks each id up in the
    # primary key (its plan on any sizeable table), as renew_leases does, so a lease renewal
    # running beside this write does not deadlock with it (a deadlock would only cost a retry).
    outcomes = sorted((o for _, group in batch for o in group), key=lambda o: o.message_id)
    # Sorted, so that two workers suppressing the same addresses take their locks in one order.
    suppressions = sorted(
        {(org_id, o.suppress.lower()): o for org_id, group in batch for o in group if o.suppress}.items(),
        key=lambda item: (str(item[0][0]), item[0][1]),
    )
    arrays = (
        [o.message_id for o in outcomes],
        [o.status for o in outcomes],
        [o.external_message_id for o in outcomes],
        [o.error for o in outcomes],
        [o.next_attempt_at for o in outcomes],
        [o.attempt for o in outcomes],
    )
    follow_ups = [o for o in outcomes if o.then is not None and o.status is MessageStatus.sent]
    with db.passing_or_refused():
        if not follow_ups and not suppressions:
            # The usual batch: one statement, atomic on its own, so no BEGIN and COMMIT around
            # it (two round trips fewer per write, and a third of its statements in Postgres).
            await pool.fetch(Q.record_outcomes, *arrays)
            return
        async with pool.acquire() as conn, conn.transaction():
            await conn.fetch(Q.record_outcomes, *arrays)
            if follow_ups:
                await conn.execute(
                    Q.record_test_follow_ups,
                    [o.message_id for o in follow_ups],
                    [o.then for o in follow_ups],
                    [o.external_message_id for o in follow_ups],
                    [o.then_detail for o in follow_ups],
                )
            for (org_id, address), o in suppressions:
                await conn.execute(Q.insert_suppression, org_id, address, "hard_bounce", o.error)
                # Its other unsent messages (scheduled ones above all) must not go out either.
                await conn.execute(
                    Q.reject_unsent_to_address, org_id, address, f"address suppressed after a hard bounce: {o.error}"
                )


# ---- The reconciler's (worker/reconcile.py) ----


async def reclaim_expired(pool: db.Pool, max_attempts: int, grace_s: float) -> int:
    """Take back the messages whose lease expired (their worker died, or lost Postgres): due
    again `grace_s` later, or failed after `max_attempts`. Returns how many."""
    with db.passing_or_refused():
        reclaimed: int = await pool.fetchval(Q.reclaim_expired_leases, max_attempts, grace_s)
    return reclaimed


async def count_due(pool: db.Pool, limit: int) -> int:
    """The backlog: messages due and not yet claimed, counted up to `limit`."""
    with db.passing_or_refused():
        due: int = await pool.fetchval(Q.count_due, limit)
    return due


async def sweep_expired_idempotency_keys(pool: db.Pool) -> None:
    """Idempotency keys are honoured 24 hours; the reconciler deletes older ones."""
    with db.passing_or_refused():
        await pool.execute(Q.delete_expired_idempotency_keys)
