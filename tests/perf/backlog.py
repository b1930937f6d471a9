"""The backlog scenarios' common run (P2, P3, P6, P7): a backlog of sends committed through
the service's own code, then N workers started to deliver it, and the rate over a fixed window
after a warm-up, counted in Postgres from `messages.sent_at`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import common
import meters
from common import log
from harness import START_TIMEOUT_S, Harness
from meters import CpuMeter, RssSampler


async def backlog_run(
    h: Harness,
    broadcast: str,
    channel: str,
    workers_n: int,
    *,
    sample: bool,
    extra_env: dict[str, str] | None = None,
    setup: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Deliver a backlog with N workers started after it was built: the rate over a fixed
    window after a warm-up, by Postgres's own sent_at. `extra_env`: the workers' own settings
    on top of the scenario's (P7's SECRET_KEY); `setup`: run in the scenario's database first
    (P7 registers the org's sending domain)."""
    async with h.scenario_database(broadcast):
        if setup is not None:
            await setup()
        return await _deliver(h, broadcast, channel, workers_n, sample=sample, extra_env=extra_env)


async def build_backlog(h: Harness, broadcast: str, channel: str) -> float:
    """Commit BENCH_BACKLOG sends through the service's own code; returns seconds.

    `shared.sending.prepare` resolves a few recipients once; each send is then a copy with
    new ids, written by the service's own `commit_many` in batches of 500 (as its api does
    under load). Postgres is the delivery queue: workers started afterwards find them."""
    from shared import ids, sending

    n = h.cfg.backlog
    assert h.org_id is not None
    broadcast_id = h.broadcasts[broadcast]
    prepared = []
    for i in range(min(common.RECIPIENTS, max(1, n // 20))):
        trigger = sending.Trigger(variables={"otp": common.otp(i)})
        if channel == "email":
            trigger.email = common.recipient_email(i)
        else:
            trigger.phone = common.recipient_phone(i)
        prepared.append(await sending.prepare(h.pool, h.org_id, broadcast_id, trigger))
    batch = 500
    started = time.monotonic()
    next_index = 0

    def copy(i: int) -> sending.PreparedSend:
        base = prepared[i % len(prepared)]
        return dataclasses.replace(
            base, send_id=uuid.uuid4(), records=[dataclasses.replace(r, id=ids.new_message_id()) for r in base.records]
        )

    async def filler() -> None:
        nonlocal next_index
        while next_index < n:
            first, count = next_index, min(batch, n - next_index)
            next_index += count
            sends = [copy(first + j) for j in range(count)]
            refused = [e for e in await sending.commit_many(h.pool, sends) if e is not None]
            if refused:
                raise RuntimeError(f"the backlog's sends were refused: {refused[0]!r}")

    await asyncio.wait_for(asyncio.gather(*(filler() for _ in range(4))), timeout=600)
    return time.monotonic() - started


async def _deliver(
    h: Harness, broadcast: str, channel: str, workers_n: int, *, sample: bool, extra_env: dict[str, str] | None
) -> dict[str, Any]:
    cfg = h.cfg
    build_s = await build_backlog(h, broadcast, channel)
    log(f"{broadcast}: backlog of {cfg.backlog} {channel} sends built in {build_s:.1f} s; {workers_n} worker(s)")
    workers = await h.start_workers(workers_n, broadcast, extra_env)
    sampler = RssSampler([w.pid for w in workers]) if sample else None
    first_seen: float | None = None
    exhausted = False
    meter = CpuMeter()
    # WAL and Postgres CPU per message sent (claim + outcome; the accept side is P1's and P1b's).
    cost = meters.DbCost(h.pool, "SELECT count(*) FROM messages WHERE status NOT IN ('queued', 'sending')")
    cpu: dict[str, float] = {}
    try:
        if sampler is not None:
            await sampler.__aenter__()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            row = await h.pool.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'sent') AS sent,"
                " count(*) FILTER (WHERE status NOT IN ('queued', 'sending', 'sent')) AS other FROM messages"
            )
            now = time.monotonic()
            if row["sent"] and first_seen is None:
                first_seen = now
                await cost.start()
                meter.start()
                deadline = now + cfg.warmup_s + cfg.duration_s + 0.5
            if row["sent"] + row["other"] >= cfg.backlog:
                exhausted = True
                break
            if now > deadline:
                if first_seen is None:
                    tails = "\n".join(w.tail() for w in workers)
                    raise RuntimeError(f"{broadcast}: nothing was delivered in {START_TIMEOUT_S} s:\n{tails}")
                break
            if not all(w.alive for w in workers):
                raise RuntimeError(f"{broadcast}: a worker exited:\n" + "\n".join(w.tail() for w in workers))
            await asyncio.sleep(0.25)
        if first_seen is not None:
            cpu = meter.stop()
            await cost.stop()
    finally:
        if sampler is not None:
            await sampler.__aexit__(None, None, None)
        await h.stop_all(workers)
    stats = await _window(h)
    stats |= {
        "workers": workers_n,
        "backlog": cfg.backlog,
        "backlog_exhausted": exhausted,
        "build_s": round(build_s, 1),
        "cpu_cores": cpu,
        "db_cost": cost.per_message(cpu),
    }
    if sampler is not None and first_seen is not None:
        stats["worker_rss_peak_mb"] = round(sampler.peak_mb(), 1)
        stats["rss_growth_mb_per_min"] = round(sampler.growth_mb_per_min(first_seen + cfg.warmup_s), 2)
    if stats["failed"]:
        log(f"warning: {broadcast}: {stats['failed']} messages did not end sent")
    if exhausted and stats["window_s"] < cfg.duration_s and not cfg.smoke:
        log(f"note: {broadcast}: the backlog ran out before the window ended; a larger BENCH_BACKLOG measures longer")
    return stats


async def _window(h: Harness) -> dict[str, Any]:
    """Messages sent per second in [first + warm-up, + duration], by Postgres's own sent_at.

    The warm-up skipped is at most a fifth of the delivery, so a backlog that runs out
    early is still measured on most of it."""
    cfg = h.cfg
    row = await h.pool.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'sent') AS sent, min(sent_at) AS first, max(sent_at) AS last,"
        " count(*) FILTER (WHERE status IN ('failed', 'rejected', 'skipped')) AS failed FROM messages"
    )
    first, last = row["first"], row["last"]
    if first is None:
        return {"rate": 0.0, "window_s": 0.0, "sent": 0, "failed": row["failed"]}
    total_s = (last - first).total_seconds()
    warm = min(cfg.warmup_s, 0.2 * total_s)
    start = first + dt.timedelta(seconds=warm)
    end = min(start + dt.timedelta(seconds=cfg.duration_s), last)
    window_s = (end - start).total_seconds()
    if window_s < 0.05:  # everything within a few milliseconds: the whole delivery is the window
        start, end, window_s = first - dt.timedelta(microseconds=1), last, max(total_s, 0.05)
    in_window = await h.pool.fetchval(
        "SELECT count(*) FROM messages WHERE status = 'sent' AND sent_at > $1 AND sent_at <= $2", start, end
    )
    return {
        "rate": round(in_window / window_s, 1),
        "window_s": round(window_s, 2),
        "in_window": in_window,
        "sent": row["sent"],
        "failed": row["failed"],
        "delivery_s": round(total_s, 2),
    }
