"""P8, end to end: one api process and 2 workers together under an open-loop load stepped up
in rate, beside P2's ceiling of the same run.

Each step (`stepload.py`) fires `background: true` triggers on a clock at its rate for a
warm-up and a measured window; the steps follow each other without a pause. Per window the
driver reads, from Postgres and the process table:

- accepted/s: messages whose `created_at` (the api's commit) falls in the window;
- delivered/s: messages whose `sent_at` falls in the window;
- the backlog (messages `queued` or `sending`) at the start and at the end of the window;
- the delay from accept to the sink's 250, p50 and p99: `sent_at - created_at` of the
  messages accepted in the window up to 0.5 s before its end (a message still unsent counts
  with its age so far, which is then already past 500 ms). `sent_at` is the outcome write's
  transaction time, just after the 250 (outcomes are written in batches, so it includes that
  wait: the delay a user reading the status would see);
- CPU per role (`meters.CpuMeter`), and what the generator saw (202s, their latency, drops).

A step passes when the api accepted what was offered (≥ 95 % answered 2xx, nothing dropped),
the backlog stayed flat (it grew by at most a quarter second of arrivals over the window), and
the p99 delay is at most 500 ms. The ladder stops at the first step that fails (its backlog
would carry into the next); the figure is the highest rate that passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
from typing import Any

import common
from common import log
from harness import Harness
from meters import CpuMeter
from report import ratio

BROADCAST = "p4"  # the template's email broadcast that P4 uses (each scenario has its own database copy)
P99_LIMIT_MS = 500.0
FLAT_S = 0.25  # "flat": the backlog grew by at most this many seconds of arrivals over a window
ACCEPTED_MIN = 0.95
COHORT_LAG_S = 0.5  # messages accepted this close to the window's end are not judged yet
DEFAULT_RATES = "250,500,750,1000,1250,1500,1750,2000,2250,2500,3000,3500,4000,5000"
SMOKE_RATES = "40,80"


def rates(h: Harness) -> list[float]:
    raw = os.environ.get("BENCH_P8_RATES") or (SMOKE_RATES if h.cfg.smoke else DEFAULT_RATES)
    return [float(r) for r in raw.split(",") if r.strip()]


def step_seconds(h: Harness) -> tuple[float, float]:
    """(window, warm-up) of each step: BENCH_P8_STEP_S, BENCH_P8_WARMUP_S (10 and 3; smoke 1 and 0.5)."""
    env = os.environ
    window = float(env.get("BENCH_P8_STEP_S") or (1 if h.cfg.smoke else 10))
    warmup = float(env.get("BENCH_P8_WARMUP_S") or (0.5 if h.cfg.smoke else 3))
    return window, warmup


async def _now(h: Harness) -> dt.datetime:
    value: dt.datetime = await h.pool.fetchval("SELECT clock_timestamp()")
    return value


async def _backlog(h: Harness) -> int:
    value: int = await h.pool.fetchval("SELECT count(*) FROM messages WHERE status IN ('queued', 'sending')")
    return value


DB_STATS = ("xact_commit", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated", "blks_hit", "blks_read")


async def _db_stats(h: Harness) -> dict[str, int]:
    """The database's own counters (pg_stat_database): per message over a window, where
    Postgres's CPU goes (transactions, rows scanned and fetched, rows written, pages read)."""
    row = await h.pool.fetchrow(
        f"SELECT {', '.join(DB_STATS)} FROM pg_stat_database WHERE datname = current_database()"
    )
    out = {k: int(row[k]) for k in DB_STATS}
    # Which table the rows are read from, and how: sequential scans or index scans.
    for r in await h.pool.fetch(
        "SELECT relname, seq_scan, seq_tup_read, idx_scan, idx_tup_fetch FROM pg_stat_user_tables"
        " WHERE relname IN ('messages', 'message_events', 'sends')"
    ):
        for k in ("seq_scan", "seq_tup_read", "idx_scan", "idx_tup_fetch"):
            out[f"{r['relname']}.{k}"] = int(r[k] or 0)
    return out


async def _window_counts(h: Harness, start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    broadcast = h.broadcasts[BROADCAST]
    accepted = await h.pool.fetchval(
        "SELECT count(*) FROM messages WHERE broadcast_id = $1 AND created_at >= $2 AND created_at < $3",
        broadcast,
        start,
        end,
    )
    delivered = await h.pool.fetchval(
        "SELECT count(*) FROM messages WHERE status = 'sent' AND sent_at >= $1 AND sent_at < $2", start, end
    )
    now = await _now(h)
    cohort_end = end - dt.timedelta(seconds=COHORT_LAG_S)
    row = await h.pool.fetchrow(
        "SELECT count(*) AS n, count(*) FILTER (WHERE sent_at IS NULL) AS unsent,"
        " percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP"
        "  (ORDER BY extract(epoch FROM coalesce(sent_at, $4) - created_at)) AS pct"
        " FROM messages WHERE broadcast_id = $1 AND created_at >= $2 AND created_at < $3"
        " AND status NOT IN ('failed', 'rejected', 'skipped')",
        broadcast,
        start,
        cohort_end,
        now,
    )
    pct = row["pct"] or [None, None]
    return {
        "accepted": accepted,
        "delivered": delivered,
        "delay_cohort": row["n"],
        "delay_unsent": row["unsent"],
        "delay_p50_ms": round(pct[0] * 1000, 1) if pct[0] is not None else None,
        "delay_p99_ms": round(pct[1] * 1000, 1) if pct[1] is not None else None,
    }


def _judge(step: dict[str, Any]) -> list[str]:
    """Why a step fails (empty: it passed)."""
    why = []
    rate, window = step["rate"], step["window_s"]
    if step["load"]["ok"] < ACCEPTED_MIN * rate * window or step["load"]["dropped"]:
        why.append(f"accepted {step['load']['ok']} of {rate * window:.0f} offered, dropped {step['load']['dropped']}")
    growth = step["backlog_end"] - step["backlog_start"]
    if growth > FLAT_S * rate:
        why.append(f"backlog grew by {growth} ({step['backlog_start']} → {step['backlog_end']})")
    p99 = step["delay_p99_ms"]
    if p99 is None or p99 > P99_LIMIT_MS:
        why.append(f"p99 delay {p99} ms > {P99_LIMIT_MS:g} ms")
    return why


async def p8(h: Harness, ceiling: float) -> dict[str, Any]:
    """The end-to-end ladder; `ceiling`: P2's ceiling of the same run."""
    ladder = rates(h)
    window_s, warmup_s = step_seconds(h)
    steps: list[dict[str, Any]] = []
    async with h.scenario_database("p8"):
        workers = await h.start_workers(2, "p8")
        try:
            await h.start_api("p8")
            await h.preflight(BROADCAST, background=True, expect=202)
            log(f"P8: api + 2 workers, open loop stepped {ladder[0]:g}..{ladder[-1]:g}/s, {window_s:g} s windows")
            steps = await _ladder(h, ladder, window_s, warmup_s, workers)
        finally:
            await h.stop_all(workers)
            await h.stop_api()
    passed = [s for s in steps if s["passed"]]
    best = max(passed, key=lambda s: s["rate"]) if passed else None
    failed = next((s for s in steps if not s["passed"]), None)
    h.details["P8"] = {"steps": steps, "window_s": window_s, "warmup_s": warmup_s}
    value = best["rate"] if best else 0.0
    out: dict[str, Any] = {
        "value": value,
        "unit": "messages/s",
        "ceiling": ceiling,
        "ratio": ratio(value, ceiling),
        "p50_ms": best["delay_p50_ms"] if best else None,
        "p99_ms": best["delay_p99_ms"] if best else None,
        "workers": 2,
        "api_processes": 1,
        "steps": len(steps),
        "cpu_cores": best["cpu_cores"] if best else {},
    }
    if failed is not None:
        out["first_failed"] = {"rate": failed["rate"], "why": failed["why"]}
    else:
        log("note: P8 passed every step; BENCH_P8_RATES can go higher")
    return out


async def _ladder(
    h: Harness, ladder: list[float], window_s: float, warmup_s: float, workers: list[common.Child]
) -> list[dict[str, Any]]:
    import orjson

    argv = [
        *(sys.executable, str(common.HERE / "stepload.py"), "--url", h.send_url(BROADCAST), "--key", h.key),
        *("--rates", ",".join(f"{r:g}" for r in ladder), "--step", str(window_s), "--warmup", str(warmup_s)),
    ]
    log_path = h.logs / "load-p8.log"
    steps: list[dict[str, Any]] = []
    with log_path.open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
            preexec_fn=common._die_with_parent,
        )
    # Bounded: every step's time plus a margin.
    deadline = asyncio.get_running_loop().time() + len(ladder) * (window_s + warmup_s) + 120
    current: dict[str, Any] = {}
    meter = CpuMeter()
    try:
        assert proc.stdout is not None
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            line = await asyncio.wait_for(proc.stdout.readline(), max(remaining, 0.1))
            if not line:
                break
            with log_path.open("ab") as f:
                f.write(line)
            event = orjson.loads(line)
            if event["event"] == "window":
                current = {
                    "rate": event["rate"],
                    "start": await _now(h),
                    "backlog_start": await _backlog(h),
                    "db": await _db_stats(h),
                }
                meter.start()
            elif event["event"] == "step" and current:
                end = await _now(h)
                backlog_end = await _backlog(h)
                cpu = meter.stop()
                db_end = await _db_stats(h)
                window = (end - current["start"]).total_seconds()
                counts = await _window_counts(h, current["start"], end)
                keys = ("ok", "requests", "dropped", "p50_ms", "p99_ms", "statuses", "errors")
                load = {k: event.get(k) for k in keys}
                step = {
                    "rate": event["rate"],
                    "window_s": round(window, 2),
                    "accepted_per_s": round(counts["accepted"] / window, 1),
                    "delivered_per_s": round(counts["delivered"] / window, 1),
                    "backlog_start": current["backlog_start"],
                    "backlog_end": backlog_end,
                    **{k: counts[k] for k in ("delay_p50_ms", "delay_p99_ms", "delay_cohort", "delay_unsent")},
                    "load": load,
                    "cpu_cores": cpu,
                    # Postgres's counters per message accepted in the window (its statistics
                    # reach pg_stat_database within a second, so short windows blur).
                    "postgres_per_message": {
                        k: round((db_end[k] - current["db"].get(k, 0)) / max(counts["accepted"], 1), 2) for k in db_end
                    },
                }
                step["why"] = _judge(step)
                step["passed"] = not step["why"]
                steps.append(step)
                log(
                    f"P8 {step['rate']:g}/s: accepted {step['accepted_per_s']:g}/s, delivered"
                    f" {step['delivered_per_s']:g}/s, backlog {step['backlog_start']} → {backlog_end},"
                    f" delay p50 {step['delay_p50_ms']} ms p99 {step['delay_p99_ms']} ms"
                    + ("" if step["passed"] else f" — fails: {'; '.join(step['why'])}")
                )
                current = {}
                if not step["passed"]:
                    break
                if not all(w.alive for w in workers) or h.api is None or not h.api.alive:
                    raise RuntimeError("P8: a worker or the api exited:\n" + "\n".join(w.tail() for w in workers))
            elif event["event"] == "done":
                break
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await proc.wait()
    if not steps:
        raise RuntimeError(f"P8: the load generator measured no step; see {log_path}")
    return steps
