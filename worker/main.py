"""The arq worker: its settings, and the resources made once per process."""

from __future__ import annotations

from typing import Any, cast

import arq
import prometheus_client
import structlog
from arq.connections import RedisSettings
from arq.typing import WorkerCoroutine

from shared import db, jobs
from shared.config import Settings
from shared.redis_keys import RedisKeys
from worker.channels.email import EmailChannel
from worker.channels.whatsapp import WhatsAppChannel
from worker.context import WorkerContext
from worker.deliver import deliver_send
from worker.reconcile import reconcile

log = structlog.get_logger("tidings.worker")

# arq polls Redis this often when idle; its 0.5 s default would put half a second on every
# synchronous send.
POLL_DELAY_S = 0.005
# Our own attempt counter (RETRY_MAX_ATTEMPTS) decides when to give up; arq's must never.
ARQ_MAX_TRIES = 10_000
# Every write a worker makes is safe to lose in a Postgres crash: a claim, an outcome, a
# reclaim or a suppression lost sends the message back a step and it is retried (at worst a
# duplicate, never a loss). So its commits do not wait for the WAL flush, two fsyncs less per
# message. Accepting a trigger, on the api, stays fully durable.
WORKER_SESSION = {"synchronous_commit": "off"}
# The reconciler's period: also the worst-case lateness of a scheduled send whose job was lost.
RECONCILE_EVERY_S = 4


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
        arq_ctx["tidings"] = WorkerContext(
            settings=settings,
            pool=pool,
            redis=arq_ctx["redis"],
            keys=RedisKeys(settings.redis_prefix),
            email=EmailChannel(settings),
            whatsapp=whatsapp,
        )

    async def shutdown(arq_ctx: dict[str, Any]) -> None:
        ctx: WorkerContext | None = arq_ctx.get("tidings")
        if ctx is not None:
            await ctx.close()
            await ctx.email.close()
            await ctx.whatsapp.close()
            await ctx.pool.close()

    options: dict[str, Any] = {
        "functions": [arq.func(cast(WorkerCoroutine, deliver_send), name=jobs.DELIVER_SEND, max_tries=ARQ_MAX_TRIES)],
        "cron_jobs": [
            arq.cron(
                cast(WorkerCoroutine, reconcile),
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
        # On SIGTERM, give jobs in hand time to finish before the process exits.
        "job_completion_wait": 20,
        "log_results": False,
    }
    options.update(overrides)
    return arq.Worker(**options)
