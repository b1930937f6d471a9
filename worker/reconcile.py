"""The reconciler: what the pumps cannot see for themselves.

Runs as an arq cron job on every worker (several at once are harmless). It takes back
messages whose worker died holding them (their lease expired), so a pump claims them
again, `RECLAIM_GRACE_S` later. A lease also expires while Postgres itself is away, with
its worker alive and holding an outcome it could not write: Postgres back, that worker
writes the outcome or takes the message back (worker/pump.py renews its leases within about
a second), and the grace, counted from the reclaim (so from a moment Postgres answered),
is there so that it does so before anyone claims the message again. It also sweeps
expired idempotency keys and the attachments of settled sends that their last outcome write
did not erase (shared/attachments.py), erases message content past its org's retention
(shared/retention.py), makes message partitions ahead and drops those past
MESSAGE_HISTORY_DAYS (shared/partitions.py), and reports the backlog. Nothing here is needed for a message
to be found: due messages are claimed straight from Postgres (worker/pump.py), whatever
happened to Redis.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from shared import attachments, delivery, doorbell, metrics, partitions, retention
from worker.context import WorkerContext

log = structlog.get_logger("tidings.reconcile")

# The backlog gauge counts at most this many (an exact count of a huge backlog costs a scan).
BACKLOG_COUNT_LIMIT = 1_000_000
# A reclaimed message is due again this long after its reclaim: the worker still holding it,
# if alive, renews or records it first (it retries within RENEW_RETRY_MAX_S, 1 s). A dead
# worker's messages are retried this much later, after their lease.
RECLAIM_GRACE_S = 5.0
# Idempotency keys are honoured 24 h; expired ones are swept this often (per worker).
IDEMPOTENCY_SWEEP_EVERY_S = 300.0
# Retention is a slow background chore: a run at most this often (per worker), for at most
# RETENTION_BUDGET_S, in batches of retention.BATCH_ROWS; a backlog is worked off over runs.
RETENTION_EVERY_S = 60.0
RETENTION_BUDGET_S = 5.0
# Partitions are made weeks ahead and dropped weeks late: a look every few minutes is plenty.
PARTITIONS_EVERY_S = 300.0
# When each slower chore last ran in this process (monotonic seconds).
_last_run_s: dict[str, float] = {}


def _due(chore: str, every_s: float) -> bool:
    """Whether `chore` has not run in this process for `every_s`; if so, it counts as run now."""
    now_s = time.monotonic()
    if now_s - _last_run_s.get(chore, float("-inf")) <= every_s:
        return False
    _last_run_s[chore] = now_s
    return True


async def reconcile(arq_ctx: dict[str, Any]) -> dict[str, int]:
    ctx: WorkerContext = arq_ctx["tidings"]
    started = time.perf_counter()
    reclaimed = await delivery.reclaim_expired(ctx.pool, ctx.settings.retry_max_attempts, RECLAIM_GRACE_S)
    if reclaimed:
        await doorbell.ring(ctx.redis, ctx.keys)
    if _due("idempotency_sweep", IDEMPOTENCY_SWEEP_EVERY_S):
        await delivery.sweep_expired_idempotency_keys(ctx.pool)
    files_erased = await attachments.sweep_settled(ctx.pool)
    if files_erased:
        log.info("attachments_erased", files=files_erased)
    erased = 0
    if _due("retention", RETENTION_EVERY_S):
        erased = await retention.erase_expired(ctx.pool, ctx.settings.retention_days, budget_s=RETENTION_BUDGET_S)
    if _due("partitions", PARTITIONS_EVERY_S):
        settings = ctx.settings
        await partitions.make_ahead(ctx.pool, settings.message_partition_days, settings.message_partitions_ahead_days)
        if settings.message_history_days:
            await partitions.drop_expired(ctx.pool, settings.message_history_days)
    metrics.QUEUE_DEPTH.set(await delivery.count_due(ctx.pool, BACKLOG_COUNT_LIMIT))
    metrics.RECONCILED.labels("reclaimed").inc(reclaimed)
    if reclaimed or erased:
        log.info(
            "job",
            job="reconcile",
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            reclaimed=reclaimed,
            erased=erased,
        )
    return {"reclaimed": reclaimed, "erased": erased}
