"""P9: outbound webhooks in the bench.

- P9 proper: webhook deliveries per second from ONE worker to a local receiver, beside a bare
  aiohttp client posting the same events, signed the same way (a fresh Standard Webhooks
  signature per request, as the worker makes), to the same receiver over as many connections
  (the ceiling, measured in the same run).
- Beside it, the message path's cost of an endpoint: P2 (a backlog, 2 workers) on a database
  whose org has an endpoint subscribed to `message.sent`, against P2 without one, back to back
  in the same run. The P2 workers run with WEBHOOK_MAX_IN_FLIGHT=0: what is compared is the
  trigger writing an event and a delivery in every `sent` transaction; the posting of those
  deliveries is P9's figure, measured afterwards on the very deliveries that run left behind.
  Target: within 15 % (`of_p2` >= 0.85).

This file is also the two processes P9 starts:

    python tests/perf/webhooks.py receiver --port 8123
    python tests/perf/webhooks.py ceiling --url http://127.0.0.1:8123/hook --secret-file s --data-file d \\
        --connections 64 --duration 15 --warmup 5 --loop uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import time
from typing import Any

import common
import orjson
from common import log

P9_CONNECTIONS = 64  # the P9 worker's WEBHOOK_MAX_IN_FLIGHT and the ceiling's connections
OF_P2_TARGET = 0.85  # P2 with an endpoint within 15 % of P2 without


# ---- the scenario (driver side) -------------------------------------------------------------


async def p9(h: Any) -> dict[str, Any]:
    """P2 without and with an endpoint subscribed to message.sent, then one worker posting
    the deliveries the second run left behind, then the bare client's ceiling."""
    from backlog import _deliver
    from harness import START_TIMEOUT_S
    from report import ratio

    from shared import webhook_endpoints

    cfg = h.cfg
    load_before = os.getloadavg()
    port = common.free_port()
    receiver = await h.child(
        "webhook-receiver", [sys.executable, str(common.HERE / "webhooks.py"), "receiver", "--port", str(port)]
    )
    await common.wait_port(port, START_TIMEOUT_S, receiver.proc)
    url = f"http://{common.LOOPBACK}:{port}/hook/bench"
    no_delivery = {"WEBHOOK_MAX_IN_FLIGHT": "0"}

    log("P9: P2 without a webhook endpoint (2 workers)")
    async with h.scenario_database("p9-without"):
        without = await _deliver(h, "p2-2", "email", 2, sample=False, extra_env=no_delivery)

    async with h.scenario_database("p9"):
        assert h.org_id is not None
        made = await webhook_endpoints.create(h.pool, h.org_id, url=url, events=["message.sent"], description="bench")
        log("P9: P2 with an endpoint subscribed to message.sent (2 workers, WEBHOOK_MAX_IN_FLIGHT=0)")
        with_hook = await _deliver(h, "p2-2", "email", 2, sample=False, extra_env=no_delivery)
        # What is left of the backlog is set aside (no event: a plain UPDATE), so that the one
        # worker started next posts webhooks and sends no email.
        await h.pool.execute("UPDATE messages SET status = 'canceled' WHERE status IN ('queued', 'sending')")
        pending = await h.pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
        data = await h.pool.fetchval("SELECT data FROM webhook_events WHERE type = 'message.sent' LIMIT 1")
        data_file = cfg.out_dir / "p9-event.json"
        data_file.write_text(json.dumps(data if isinstance(data, dict) else json.loads(data)))
        secret_file = cfg.out_dir / "p9-secret"
        secret_file.write_text(made["secret"])
        secret_file.chmod(0o600)
        log(f"P9: one worker posting {pending} pending deliveries, {P9_CONNECTIONS} at a time")
        delivery = await _post_backlog(h, pending)

    log(f"P9 ceiling: bare aiohttp posting the same signed events, {P9_CONNECTIONS} connections, best of {cfg.loops}")
    ceiling, runs = await h.best_of_loops(
        [
            *(sys.executable, str(common.HERE / "webhooks.py"), "ceiling", "--url", url),
            *("--secret-file", str(secret_file), "--data-file", str(data_file)),
            *("--connections", str(P9_CONNECTIONS)),
        ],
        "p9",
    )
    await receiver.stop()
    h.details["P9"] = {"delivery": delivery, "ceiling": runs, "p2_without": without, "p2_with": with_hook}
    of_p2 = ratio(with_hook["rate"], without["rate"])
    if of_p2 < OF_P2_TARGET:
        log(f"warning: P2 with a webhook endpoint is {of_p2:.2f} of P2 without (target {OF_P2_TARGET})")
    return {
        "value": delivery["rate"],
        "unit": "deliveries/s",
        "ceiling": ceiling,
        "ratio": ratio(delivery["rate"], ceiling),
        "workers": 1,
        "connections": P9_CONNECTIONS,
        "window_s": delivery["window_s"],
        "p2_without_endpoint": without["rate"],
        "p2_with_endpoint": with_hook["rate"],
        "of_p2": of_p2,
        "of_p2_target": OF_P2_TARGET,
        "load_average_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }


async def _post_backlog(h: Any, pending: int) -> dict[str, Any]:
    """One worker posts the pending deliveries: the rate over a window after a warm-up, by
    Postgres's own updated_at of the succeeded ones."""
    from harness import START_TIMEOUT_S

    cfg = h.cfg
    env = {
        "WEBHOOK_MAX_IN_FLIGHT": str(P9_CONNECTIONS),
        "WEBHOOK_ENDPOINT_CONCURRENCY": str(P9_CONNECTIONS),  # one endpoint: let it take every slot
        "WEBHOOK_ALLOW_PRIVATE_URLS": "true",  # the receiver is on 127.0.0.1
    }
    (worker,) = await h.start_workers(1, "p9", env)
    first_seen: float | None = None
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            row = await h.pool.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'succeeded') AS ok,"
                " count(*) FILTER (WHERE status = 'pending') AS pending FROM webhook_deliveries"
            )
            now = time.monotonic()
            if row["ok"] and first_seen is None:
                first_seen = now
                deadline = now + cfg.warmup_s + cfg.duration_s + 0.5
            if row["pending"] == 0 or now > deadline:
                break
            if not worker.alive:
                raise RuntimeError("P9: the worker exited:\n" + worker.tail())
            await asyncio.sleep(0.25)
    finally:
        await h.stop_all([worker])
    if first_seen is None:
        raise RuntimeError(f"P9: no webhook delivered in {START_TIMEOUT_S} s:\n{worker.tail()}")
    row = await h.pool.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'succeeded') AS ok, min(updated_at) FILTER (WHERE status = 'succeeded')"
        " AS first, max(updated_at) FILTER (WHERE status = 'succeeded') AS last,"
        " count(*) FILTER (WHERE status = 'failed' OR attempts > 1) AS retried FROM webhook_deliveries"
    )
    total_s = (row["last"] - row["first"]).total_seconds()
    warm = min(cfg.warmup_s, 0.2 * total_s)
    start = row["first"] + dt.timedelta(seconds=warm)
    end = min(start + dt.timedelta(seconds=cfg.duration_s), row["last"])
    window_s = (end - start).total_seconds()
    if window_s < 0.05:
        start, end, window_s = row["first"] - dt.timedelta(microseconds=1), row["last"], max(total_s, 0.05)
    in_window = await h.pool.fetchval(
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded' AND updated_at > $1 AND updated_at <= $2",
        start,
        end,
    )
    if row["retried"]:
        log(f"warning: P9: {row['retried']} deliveries needed more than one attempt")
    return {
        "rate": round(in_window / window_s, 1),
        "window_s": round(window_s, 2),
        "in_window": in_window,
        "pending_at_start": pending,
        "succeeded": row["ok"],
        "retried": row["retried"],
        "delivery_s": round(total_s, 2),
    }


# ---- the receiver and the ceiling (child processes) -------------------------------------------


async def receiver(port: int) -> None:
    """Answers 200 to every POST under /hook/ once its body is read: the same far end for the
    worker and for the ceiling, as cheap as a receiver can be."""
    from aiohttp import web

    count = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal count
        await request.read()
        count += 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook/{name}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, common.LOOPBACK, port).start()
    try:
        await common.until_signalled()
    finally:
        print(f"webhook receiver: {count} requests", file=sys.stderr, flush=True)
        await runner.cleanup()


async def ceiling(
    url: str, secret: str, data: dict[str, Any], connections: int, duration_s: float, warmup_s: float, max_messages: int
) -> dict[str, Any]:
    """The same event bodies and signatures the worker makes (shared/webhook_events.py), one
    fresh signature per request, posted with aiohttp over N connections."""
    import uuid

    import aiohttp
    from ceilings import _timed

    from shared import webhook_events

    common.require_loopback(url)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as session:

        async def worker(index: int, deadline: float, counts: dict[str, int]) -> None:
            while time.perf_counter() < deadline and counts["budget"] > 0:
                counts["budget"] -= 1
                body = webhook_events.body("message.sent", data, dt.datetime.now(dt.UTC))
                event_id = "evt_" + uuid.uuid4().hex
                headers = webhook_events.headers([secret], event_id, int(time.time()), body)
                try:
                    async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                        await resp.read()
                        counts["ok" if 200 <= resp.status < 300 else "errors"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["errors"] += 1

        result = await _timed(worker, connections, duration_s, warmup_s, max_messages)
    result["connections"] = connections
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["receiver", "ceiling"])
    parser.add_argument("--port", type=int, help="receiver: its port on 127.0.0.1")
    parser.add_argument("--url", help="ceiling: the receiver's URL")
    parser.add_argument("--secret-file", help="ceiling: the endpoint's secret")
    parser.add_argument("--data-file", help="ceiling: an event's data (JSON), as the trigger wrote it")
    parser.add_argument("--connections", type=int, default=P9_CONNECTIONS)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--max-messages", type=int, default=2_000_000, help="a hard cap per phase")
    parser.add_argument("--distinct", type=int, default=0, help="(ignored: every request is signed afresh)")
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    args = parser.parse_args()
    if args.kind == "receiver":
        common.run(receiver(args.port))
        return
    with open(args.secret_file) as f:
        secret = f.read().strip()
    with open(args.data_file) as f:
        data = json.load(f)
    result = common.run(
        ceiling(args.url, secret, data, args.connections, args.duration, args.warmup, args.max_messages), args.loop
    )
    result["loop"] = args.loop
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
