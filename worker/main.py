"""The worker process: a delivery pump, and arq running the reconciler on its cron.

Delivery does not go through arq jobs: the pump (worker/pump.py) claims due messages from
Postgres in batches. So the process must keep delivering when Redis is down: arq (whose
loop ends at the first Redis error) runs under a supervisor that restarts it, the pump
only loses its doorbell (it looks at Postgres every second anyway), and SIGTERM is handled
here, not by arq, so the pump's drain always runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any, cast

import arq
import prometheus_client
import structlog
from arq.connections import RedisSettings
from arq.typing import StartupShutdown, WorkerCoroutine

from shared import db, redis_clients
from shared.config import Settings
from shared.redis_keys import RedisKeys
from shared.runtime import tune_gc
from worker.context import WorkerContext, open_channels
from worker.pump import Pump
from worker.reconcile import reconcile
from worker.throughput import Throughput
from worker.webhooks import WebhookDeliverer

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
# arq stopped (Redis unreachable): started again after this long.
ARQ_RESTART_S = 2.0


def make_arq(settings: Settings, ctx: WorkerContext) -> arq.Worker:
    """arq with the reconciler's cron and nothing else; signals are ours (see `serve`)."""

    async def startup(arq_ctx: dict[str, Any]) -> None:
        arq_ctx["tidings"] = ctx

    return arq.Worker(
        functions=[],
        cron_jobs=[
            arq.cron(
                cast(WorkerCoroutine, reconcile),
                # arq's cron job ids are global to a Redis db, not per queue: named after the
                # queue, deployments sharing a Redis db each run their own reconciler.
                name=f"cron:reconcile:{settings.queue_name}",
                second=set(range(0, 60, RECONCILE_EVERY_S)),
                run_at_startup=True,
            )
        ],
        queue_name=settings.queue_name,
        redis_settings=RedisSettings.from_dsn(settings.redis_url),
        on_startup=cast(StartupShutdown, startup),
        poll_delay=POLL_DELAY_S,
        keep_result=60,
        job_timeout=settings.job_timeout_s,
        handle_signals=False,
        log_results=False,
    )


async def _supervise_arq(settings: Settings, ctx: WorkerContext) -> None:
    while True:
        worker = make_arq(settings, ctx)
        try:
            await worker.async_run()
            log.warning("arq_stopped")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis unreachable, most likely: delivery goes on without arq
            log.warning("arq_stopped", error=repr(exc))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(worker.close())
        await asyncio.sleep(ARQ_RESTART_S)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run a worker until `stop` is set; then drain the messages in hand and close everything."""
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
    # No command timeout on this client: it holds the doorbell subscription, whose reads block
    # by design; its publishes are bounded where they are made.
    redis = redis_clients.subscriber(settings.redis_url)
    # Its own client, every command bounded: a hung Redis must not stall sends (worker/throughput.py).
    throughput = Throughput(redis_clients.commands(settings.redis_url, settings.redis_timeout_s), settings.redis_prefix)
    ctx = WorkerContext(
        settings=settings,
        pool=pool,
        redis=redis,
        keys=RedisKeys(settings.redis_prefix),
        channels=open_channels(settings, pool, throughput),
        throughput=throughput,
    )
    pump = Pump(ctx, capacity=settings.worker_concurrency)
    await pump.start()
    # Outbound webhooks: beside the pump, with their own pool and HTTP client (worker/webhooks.py).
    webhooks = WebhookDeliverer(settings)
    await webhooks.start()
    arq_task = asyncio.create_task(_supervise_arq(settings, ctx))
    try:
        await stop.wait()
    finally:
        arq_task.cancel()  # a reconciler run in hand is cut short: it is idempotent
        with contextlib.suppress(asyncio.CancelledError):
            await arq_task
        await asyncio.gather(pump.stop(settings.worker_drain_s), webhooks.stop(settings.worker_drain_s))
        await ctx.close()
        await pool.close()
        await redis.aclose()


async def serve_until_signalled(settings: Settings) -> None:
    """`tidings worker`: SIGTERM or SIGINT starts the drain."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def run(settings: Settings) -> None:
    """`tidings worker`: one worker process, until SIGTERM or SIGINT."""
    import uvloop

    tune_gc()
    uvloop.run(serve_until_signalled(settings))
