"""The reconciler: Postgres is the truth, Redis only a queue that may be lost.

Runs as an arq cron job on every worker (several at once are harmless): it takes back
messages whose worker died holding them, and re-enqueues sends whose job vanished.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from shared import jobs
from shared.sql import Q
from worker.context import WorkerContext

log = structlog.get_logger("tidings.reconcile")

BATCH = 1000


async def reconcile(arq_ctx: dict[str, Any]) -> dict[str, int]:
    ctx: WorkerContext = arq_ctx["tidings"]
    started = time.perf_counter()
    # Scheduled messages normally wake through their deferred job; this catches any whose job was lost.
    promoted = [r["send_id"] for r in await ctx.pool.fetch(Q.promote_due_scheduled, None)]
    reclaimed = [r["send_id"] for r in await ctx.pool.fetch(Q.reclaim_expired_leases)]
    stranded = [
        r["send_id"] for r in await ctx.pool.fetch(Q.select_stranded_sends, ctx.settings.reconcile_grace_s, BATCH)
    ]
    enqueued = 0
    for send_id in dict.fromkeys([*promoted, *reclaimed, *stranded]):
        # The job id is the send id: a send whose job is still queued is not enqueued twice.
        enqueued += await jobs.enqueue_send(ctx.redis, ctx.settings.queue_name, send_id, notify=False, request_id=None)
    counts = {
        "promoted_sends": len(promoted),
        "reclaimed_sends": len(reclaimed),
        "stranded_sends": len(stranded),
        "enqueued": enqueued,
    }
    if promoted or reclaimed or stranded:
        log.info("job", job="reconcile", duration_ms=round((time.perf_counter() - started) * 1000, 2), **counts)
    return counts
