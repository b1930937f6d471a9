"""The worker process: an arq worker (the reconciler's cron) around a delivery pump.

Delivery does not go through arq jobs: the pump (worker/pump.py) claims due messages
from Postgres in batches. arq runs the reconciler on its cron and handles SIGTERM.
"""

from __future__ import annotations

from typing import Any, cast

import arq
import prometheus_client
import structlog
from arq.connections import RedisSettings
from arq.typing import WorkerCoroutine

from shared import db
from shared.config import Settings
from shared.redis_keys import RedisKeys
from worker.channels.email import EmailChannel
from worker.channels.whatsapp import WhatsAppChannel
from worker.context import WorkerContext
from worker.pump import Pump
from worker.reconcile import reconcile

log = structlog.get_logger("tidings.worker")

# arq only runs the reconciler's cron, so its idle poll need not be quick.
POLL_DELAY_S = 0.5
# Every write a worker makes is safe to lose in a Postgres crash: a claim, an outcome, a
# reclaim or a suppression lost sends the message back a step and it is retried (at worst a
# duplicate, never a loss). So its commits do not wait for the WAL flush, two fsyncs less per
# message. Accepting a trigger, on the api, stays fully durable.
WORKER_SESSION = {"synchronous_commit": "off"}
# The reconciler's period: how soon after its lease expires a dead worker's message is retried.
RECONCILE_EVERY_S = 4
# On SIGTERM: how long messages in hand may take to finish before they are given back.
DRAIN_S = 20


def make_worker(settings: Settings, **overrides: Any) -> arq.Worker:
    async def startup(arq_ctx: dict[str, Any]) -> None:
        if settings.worker_metrics_port:
            try:
                prometheus_client.start_http_server(settings.worker_metrics_port)
            except OSError as exc:
                # Several workers on one host: the first serves; the others say why they don't.
                log.warning("worker_metrics_port_busy", port=settings.worker_metrics_port, error=str(exc))
        pool = await db.create_pool(
            settings.database_url,
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            server_settings=WORKER_SESSION,
        )
        whatsapp = WhatsAppChannel(settings)
        ctx = arq_ctx["tidings"] = WorkerContext(
            settings=settings,
            pool=pool,
            redis=arq_ctx["redis"],
            keys=RedisKeys(settings.redis_prefix),
            email=EmailChannel(settings),
            whatsapp=whatsapp,
        )
        pump = arq_ctx["pump"] = Pump(ctx, arq_ctx["redis"], capacity=settings.worker_concurrency)
        await pump.start()

    async def shutdown(arq_ctx: dict[str, Any]) -> None:
        pump: Pump | None = arq_ctx.get("pump")
        if pump is not None:
            await pump.stop(DRAIN_S)
        ctx: WorkerContext | None = arq_ctx.get("tidings")
        if ctx is not None:
            await ctx.close()
            await ctx.email.close()
            await ctx.whatsapp.close()
            await ctx.pool.close()

    options: dict[str, Any] = {
        "functions": [],
        "cron_jobs": [
            arq.cron(
                cast(WorkerCoroutine, reconcile),
                # arq's cron job ids are global to a Redis db, not per queue: named after the
                # queue, deployments sharing a Redis db each run their own reconciler.
                name=f"cron:reconcile:{settings.queue_name}",
                second=set(range(0, 60, RECONCILE_EVERY_S)),
                run_at_startup=True,
            )
        ],
        "queue_name": settings.queue_name,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": settings.worker_concurrency,
        "poll_delay": POLL_DELAY_S,
        "keep_result": 60,
        "job_timeout": settings.job_timeout_s,
        "handle_signals": True,
        # On SIGTERM, let a reconciler run in hand finish; the pump drains in on_shutdown.
        "job_completion_wait": DRAIN_S,
        "log_results": False,
    }
    options.update(overrides)
    return arq.Worker(**options)
