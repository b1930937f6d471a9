"""The scenarios, one function each, in the order of their names (bench.py runs them in
its own order). Each starts what it needs on the harness, measures, stops it, keeps its raw
numbers in `h.details[name]` (result.json's `details`) and returns its figure: the value
beside a ceiling measured in the same run, and their ratio.

- P1: triggers accepted per second by one api process; ceiling: a bare aiohttp app.
- P1b: the same through the batch route (batches of 100), beside P1 and its ceiling.
- P2 (+P6): emails per second from a backlog, 2 workers (and 1, 4); ceiling: aiosmtplib.
- P3: WhatsApp messages per second from a backlog, 2 workers; ceiling: aiohttp.
- P4: latency of `background: false` at a steady rate; reference: the sink's own time.
- P7: P2 with DKIM signing on, beside P2's ceiling.
- soak (`--soak`): api and 2 workers under a steady load; RSS over time (P5 "flat").
P5 (memory) is read from P1's and P2's samples, or the soak's (report.py).
"""

from __future__ import annotations

import secrets
import sys
import time
from typing import Any

import common
from backlog import backlog_run
from common import log
from harness import START_TIMEOUT_S, Harness
from meters import CpuMeter, RssSampler
from report import ratio

WA_CONNECTIONS_PER_WORKER = 100  # worker/channels/whatsapp.py's connection limit
DKIM_KEY_BITS = 2048  # P7's key: what Gmail and Yahoo expect of a bulk sender
BATCH_SIZE = 100  # P1b's triggers per batch request
P1B_TARGET_OF_P1 = 5  # P1b's target: at least this many times P1


async def p1(h: Harness) -> dict[str, Any]:
    """Triggers accepted per second against one api process, beside a bare aiohttp app."""
    cfg = h.cfg
    port = common.free_port()
    bare = await h.child("bare-api", [sys.executable, str(common.HERE / "bare_api.py"), "--port", str(port)])
    await common.wait_port(port, START_TIMEOUT_S, bare.proc)
    path = h.send_url("p1").removeprefix(h.api_url)
    log(f"P1 ceiling: bare aiohttp, {h.loadgen_name}, {cfg.connections} connections")
    ceiling = await h.http_load(f"http://{common.LOOPBACK}:{port}{path}", "p1-ceiling")
    await bare.stop()

    async with h.scenario_database("p1"):
        await h.start_api("p1")
        try:
            assert h.api is not None
            await h.preflight("p1", background=True, expect=202)
            log(f"P1: tidings api, background: true, {h.loadgen_name}, {cfg.connections} connections")
            async with RssSampler([h.api.pid]) as sampler:
                figure = await h.http_load(h.send_url("p1"), "p1", sampler)
        finally:
            await h.stop_api()
        figure["api_rss_peak_mb"] = round(sampler.peak_mb(), 1)
        # A cross-check of the 2xx count: sends committed, warm-up included.
        figure["committed_sends_total"] = await h.pool.fetchval("SELECT count(*) FROM sends")
    h.details["P1"] = {"figure": figure, "ceiling": ceiling}
    if figure["non_2xx"] or figure.get("socket_errors"):
        log(f"warning: P1 saw {figure['non_2xx']} non-2xx answers and {figure.get('socket_errors', 0)} socket errors")
    return {
        "value": figure["rps"],
        "unit": "triggers/s",
        "ceiling": ceiling["rps"],
        "ratio": ratio(figure["rps"], ceiling["rps"]),
        "p99_ms": figure["p99_ms"],
        "ceiling_p99_ms": ceiling["p99_ms"],
        "connections": cfg.connections,
        "loadgen": h.loadgen_name,
        # WAL bytes and Postgres CPU per message accepted (the accept side of the end-to-end cost).
        "db_cost": figure.get("db_cost"),
    }


async def p1b(h: Harness, p1_figure: dict[str, Any] | None) -> dict[str, Any]:
    """Triggers accepted per second through the batch route (batches of BATCH_SIZE) against
    one api process, beside P1 of the same run (target: at least 5 x P1) and P1's ceiling."""
    cfg = h.cfg
    url = h.send_url("p1b") + "/batch"
    # A fifth of P1's connections: each holds BATCH_SIZE triggers, so still 20 x P1's in flight
    # (more would only queue: a batch answered after the window closes counts nothing).
    connections = max(2, cfg.connections // 5)
    async with h.scenario_database("p1b"):
        await h.start_api("p1b")
        try:
            await h.preflight_batch("p1b", BATCH_SIZE)
            log(f"P1b: tidings api, batches of {BATCH_SIZE}, {h.loadgen_name}, {connections} connections")
            async with RssSampler([h.api.pid] if h.api else []) as sampler:
                figure = await h.http_load(url, "p1b", sampler, batch=BATCH_SIZE, connections=connections)
        finally:
            await h.stop_api()
        figure["api_rss_peak_mb"] = round(sampler.peak_mb(), 1)
        # Cross-checks: every item of every 2xx batch accepted (warm-up included).
        figure["committed_sends_total"] = await h.pool.fetchval("SELECT count(*) FROM sends")
    h.details["P1b"] = {"figure": figure}
    if figure["non_2xx"] or figure.get("socket_errors"):
        log(f"warning: P1b saw {figure['non_2xx']} non-2xx answers and {figure.get('socket_errors', 0)} socket errors")
    value = round(figure["rps"] * BATCH_SIZE, 1)
    out: dict[str, Any] = {
        "value": value,
        "unit": "triggers/s",
        "batch_size": BATCH_SIZE,
        "batches_per_s": figure["rps"],
        "p99_ms": figure["p99_ms"],
        "connections": connections,
        "loadgen": h.loadgen_name,
        "target_of_p1": P1B_TARGET_OF_P1,
        "db_cost": figure.get("db_cost"),
    }
    if p1_figure is not None:  # P1 of the same run, and its ceiling
        out["p1_value"] = p1_figure["value"]
        out["of_p1"] = ratio(value, p1_figure["value"])
        out["p1_ceiling"] = p1_figure["ceiling"]
        out["of_p1_ceiling"] = ratio(value, p1_figure["ceiling"])
    return out


async def p2_p6(h: Harness) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Emails per second from a backlog with 1, 2, 4 workers; P2 is the 2-worker run."""
    cfg = h.cfg
    connections = h.smtp_connections
    ceiling, runs = await p2_ceiling(h)
    by_workers: dict[str, dict[str, Any]] = {}
    for n in cfg.p6_workers:
        by_workers[str(n)] = await backlog_run(h, f"p2-{n}", "email", n, sample=n == 2)
    p2 = by_workers["2"]
    h.details["P2"] = {"ceiling": runs, "runs": by_workers}
    return (
        {
            "value": p2["rate"],
            "unit": "emails/s",
            "ceiling": ceiling,
            "ratio": ratio(p2["rate"], ceiling),
            "workers": 2,
            "ceiling_connections": connections,
            "window_s": p2["window_s"],
            # WAL bytes and Postgres CPU per message claimed and settled (the delivery side).
            "db_cost": p2.get("db_cost"),
        },
        {"workers": {n: r["rate"] for n, r in by_workers.items()}, "ceiling": ceiling},
        p2,
    )


async def p2_ceiling(h: Harness) -> tuple[float, dict[str, Any]]:
    """aiosmtplib straight to the sink (P2's ceiling, and P7's): measured once per run."""
    if h.smtp_ceiling is None:
        cfg, connections = h.cfg, h.smtp_connections
        log(f"P2 ceiling: aiosmtplib straight to {h.sink_name}, {connections} connections, best of {cfg.loops}")
        h.smtp_ceiling = await h.best_of_loops(
            [
                *(sys.executable, str(common.HERE / "ceilings.py"), "smtp"),
                *("--port", str(h.smtp_port), "--connections", str(connections)),
            ],
            "p2",
        )
    return h.smtp_ceiling


async def p3(h: Harness) -> dict[str, Any]:
    """WhatsApp messages per second from a backlog to the sandbox, 2 workers."""
    from shared.config import Settings

    cfg = h.cfg
    rss_start = h.sandbox_rss_mb()
    concurrency = Settings.from_env(h.child_env).worker_concurrency
    connections = 2 * min(concurrency, WA_CONNECTIONS_PER_WORKER)
    log(f"P3 ceiling: aiohttp straight to the sandbox, {connections} connections, best of {cfg.loops}")
    ceiling, runs = await h.best_of_loops(
        [
            *(sys.executable, str(common.HERE / "ceilings.py"), "whatsapp"),
            *("--url", h.wa_url, "--connections", str(connections)),
        ],
        "p3",
    )
    rss_after_ceiling = h.sandbox_rss_mb()
    run = await backlog_run(h, "p3", "whatsapp", 2, sample=False)
    # The sandbox keeps no request log and a bounded message deque: this must stay flat.
    run["sandbox_rss_mb"] = {"start": rss_start, "after_ceiling": rss_after_ceiling, "end": h.sandbox_rss_mb()}
    h.details["P3"] = {"ceiling": runs, "run": run}
    return {
        "value": run["rate"],
        "unit": "messages/s",
        "ceiling": ceiling,
        "ratio": ratio(run["rate"], ceiling),
        "workers": 2,
        "ceiling_connections": connections,
        "window_s": run["window_s"],
    }


async def p4(h: Harness) -> dict[str, Any]:
    """Latency of background: false at a steady rate, beside the sink's own time per message."""
    cfg = h.cfg
    log("P4 reference: the sink's time per SMTP transaction on a warm connection")
    sink = await common.run_json(
        [sys.executable, str(common.HERE / "ceilings.py"), "sink-ms", "--port", str(h.smtp_port)],
        timeout_s=120,
        log_path=h.logs / "ceiling-sink-ms.log",
    )
    async with h.scenario_database("p4"):
        # Workers first: they import while the api starts (nothing is measured yet).
        workers = await h.start_workers(2, "p4")
        try:
            await h.start_api("p4")
            await h.preflight("p4", background=False, expect=200)
            log(f"P4: background: false at {cfg.p4_rate:g}/s, open loop, 2 workers")
            meter = CpuMeter().start()
            result = await common.run_json(
                [
                    *(sys.executable, str(common.HERE / "loadgen.py"), "open", "--url", h.send_url("p4")),
                    *("--key", h.key, "--rate", str(cfg.p4_rate), "--sync"),
                    *("--duration", str(cfg.duration_s), "--warmup", str(cfg.warmup_s)),
                ],
                timeout_s=cfg.warmup_s + cfg.duration_s + 90,
                log_path=h.logs / "load-p4.log",
            )
            result["cpu_cores"] = meter.stop()
        finally:
            await h.stop_all(workers)
            await h.stop_api()
    h.details["P4"] = {"figure": result, "sink": sink}
    if result["dropped"] or result["errors"] or set(result["statuses"]) - {"200"}:
        log(
            f"warning: P4 saw statuses {result['statuses']}, errors {result['errors']}, dropped {result['dropped']}"
            " (202: the send was not settled within SYNC_SEND_TIMEOUT_S)"
        )
    return {
        "p50_ms": result["p50_ms"],
        "p90_ms": result["p90_ms"],
        "p99_ms": result["p99_ms"],
        "max_ms": result["max_ms"],
        "rate": cfg.p4_rate,
        # 200: answered with the outcome; 202: the wait timed out (SYNC_SEND_TIMEOUT_S).
        "answered_200": result["statuses"].get("200", 0),
        "answered_other": result["requests"] - result["statuses"].get("200", 0),
        "sink_ms": sink["p50_ms"],
    }


async def p7(h: Harness, p2: dict[str, Any] | None) -> dict[str, Any]:
    """P2 with DKIM on: every email signed (rsa-sha256, a 2048-bit key) by the 2 workers with
    the org's own sending-domain key (registered as `POST /orgs/{id}/domains` does, stored
    encrypted under the workers' SECRET_KEY, looked up and cached per org and domain), beside
    the same ceiling (aiosmtplib sends unsigned: signing is the service's cost)."""
    from shared import sending_domains
    from shared.secret_box import SecretBox

    ceiling, _ = await p2_ceiling(h)
    domain = common.EMAIL_TEMPLATE["from_email"].rpartition("@")[2]
    secret_key = secrets.token_hex(32)

    async def register_domain() -> None:
        assert h.pool is not None and h.org_id is not None
        await sending_domains.register(h.pool, SecretBox(secret_key), h.org_id, domain)

    log(f"P7: P2 with DKIM on (rsa-sha256, {DKIM_KEY_BITS}-bit org domain key, d={domain})")
    run = await backlog_run(
        h, "p7", "email", 2, sample=False, extra_env={"SECRET_KEY": secret_key}, setup=register_domain
    )
    h.details["P7"] = {"run": run}
    out = {
        "value": run["rate"],
        "unit": "emails/s",
        "ceiling": ceiling,
        "ratio": ratio(run["rate"], ceiling),
        "workers": 2,
        "dkim_key_bits": DKIM_KEY_BITS,
        "dkim_key": "org sending domain",
        "window_s": run["window_s"],
    }
    if p2 is not None:  # P2 of the same run, for what signing costs
        out["p2_value"] = p2["value"]
        out["of_p2"] = ratio(run["rate"], p2["value"])
    return out


async def soak(h: Harness) -> dict[str, Any]:
    """api + 2 workers under a steady background load for BENCH_SOAK_S: RSS over time."""
    cfg = h.cfg
    async with h.scenario_database("soak"):
        workers = await h.start_workers(2, "soak")
        try:
            await h.start_api("soak")
            assert h.api is not None
            api_pid = h.api.pid
            await h.preflight("soak", background=True, expect=202)
            log(f"soak: {cfg.soak_s:g} s at {cfg.soak_rate:g} triggers/s (background), api + 2 workers")
            async with RssSampler([api_pid, *(w.pid for w in workers)], interval_s=1.0) as sampler:
                started = time.monotonic()
                load = await common.run_json(
                    [
                        *(sys.executable, str(common.HERE / "loadgen.py"), "open"),
                        *("--url", h.send_url("soak"), "--key", h.key),
                        *("--rate", str(cfg.soak_rate), "--duration", str(cfg.soak_s)),
                    ],
                    timeout_s=cfg.soak_s + 120,
                    log_path=h.logs / "load-soak.log",
                )
        finally:
            await h.stop_all(workers)
            await h.stop_api()
    # The first fifth is warm-up (pools filling, caches, first allocations).
    since = started + cfg.soak_s / 5
    names = {api_pid: "api", **{w.pid: w.name for w in workers}}
    growth = {
        names[pid]: round(common.slope_per_min([(t, mb) for t, mb in s if t >= since]), 3)
        for pid, s in sampler.samples.items()
    }
    peaks = {names[pid]: round(max((mb for _, mb in s), default=0.0), 1) for pid, s in sampler.samples.items()}
    return {
        "seconds": cfg.soak_s,
        "rate": cfg.soak_rate,
        "growth_mb_per_min": growth,
        "peak_mb": peaks,
        "load": load,
    }
