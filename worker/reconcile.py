"""The reconciler: Postgres is the truth, Redis only a queue that may be lost.

Runs as an arq cron job on every worker (several at once are harmless): it takes back
messages whose worker died holding them, and re-enqueues sends whose job vanished.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog
from arq.constants import in_progress_key_prefix, job_key_prefix

from shared import jobs, metrics
from shared.sql import Q
from worker.context import WorkerContext

log = structlog.get_logger("tidings.reconcile")

BATCH = 1000
# Idempotency keys are honoured 24 h; expired ones are swept this often (per worker).
IDEMPOTENCY_SWEEP_EVERY_S = 300.0
_last_sweep_s = 0.0


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
    retry_tag = f"reclaim-{int(time.time())}"
    candidates = list(dict.fromkeys([*promoted, *stranded]))
    # One round trip tells which of them still have a job waiting in the queue: under a
    # backlog most do, and those are left alone.
    waiting = await _waiting_in_queue(ctx, candidates)
    for send_id, is_waiting in zip(candidates, waiting, strict=True):
        if is_waiting:
            continue
        # The job id is the send id: refused only if arq still holds that id.
        if await jobs.enqueue_send(ctx.redis, ctx.settings.queue_name, send_id, notify=False, request_id=None):
            enqueued += 1
        else:
            # Its job ran or is running, yet these messages sat untouched past the grace period:
            # that job died before claiming them (killed worker, or Redis lost its keys mid-way).
            # arq keeps the id taken (in-progress key, kept result) for a while; do not wait.
            enqueued += await jobs.enqueue_send(
                ctx.redis, ctx.settings.queue_name, send_id, notify=False, request_id=None, retry_tag=retry_tag
            )
    # A reclaimed lease means the job holding it died; its arq id stays taken until arq's own
    # in-progress key expires, so these get a fresh id.
    for send_id in dict.fromkeys(reclaimed):
        enqueued += await jobs.enqueue_send(
            ctx.redis, ctx.settings.queue_name, send_id, notify=False, request_id=None, retry_tag=retry_tag
        )
    global _last_sweep_s
    if time.monotonic() - _last_sweep_s > IDEMPOTENCY_SWEEP_EVERY_S:
        _last_sweep_s = time.monotonic()
        await ctx.pool.execute(Q.delete_expired_idempotency_keys)
    metrics.QUEUE_DEPTH.set(await ctx.redis.zcard(ctx.settings.queue_name))
    metrics.RECONCILED.labels("reclaimed").inc(len(reclaimed))
    metrics.RECONCILED.labels("enqueued").inc(enqueued)
    counts = {
        "promoted_sends": len(promoted),
        "reclaimed_sends": len(reclaimed),
        "stranded_sends": len(stranded),
        "enqueued": enqueued,
    }
    if promoted or reclaimed or stranded:
        log.info("job", job="reconcile", duration_ms=round((time.perf_counter() - started) * 1000, 2), **counts)
    return counts


async def _waiting_in_queue(ctx: WorkerContext, send_ids: list[uuid.UUID]) -> list[bool]:
    """Per send: whether its job is queued and not yet started (so it will claim its messages)."""
    if not send_ids:
        return []
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for send_id in send_ids:
            pipe.exists(job_key_prefix + str(send_id))
            pipe.exists(in_progress_key_prefix + str(send_id))
        flags = await pipe.execute()
    return [bool(flags[2 * i]) and not flags[2 * i + 1] for i in range(len(send_ids))]
