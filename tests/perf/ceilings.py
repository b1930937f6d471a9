"""Ceilings measured beside the figures, each in a fresh process, bounded in count and time.

    smtp      P2's ceiling: aiosmtplib sending the bench's rendered messages (rendered and
              serialised before the clock starts) straight to the sink over N connections
    whatsapp  P3's ceiling: aiohttp posting the same Cloud API requests the worker makes
              straight to the sandbox over N connections
    sink-ms   P4's reference: the sink's own time for one SMTP transaction (MAIL, RCPT,
              DATA) on a warm connection, with the stdlib's blocking smtplib

    python tests/perf/ceilings.py smtp --port 2599 --connections 16 --duration 15 --warmup 3 --loop uvloop

Prints one JSON object, `rate` in messages per second (or `p50_ms` for sink-ms).
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import time
import uuid
from typing import Any

import common
import orjson

DISTINCT = 500  # distinct rendered messages, cycled


def _variables(i: int, *, email: str = "", phone: str = "") -> dict[str, Any]:
    # What `shared.sending.prepare` puts beside the trigger's variables.
    return {"otp": common.otp(i), "name": "", "email": email, "phone": phone, "unsubscribe_url": ""}


def rendered_emails(count: int) -> list[tuple[str, str, bytes]]:
    """(sender, recipient, message bytes) rendered by the worker's own code."""
    from worker.channels.email import build_mime
    from worker.render import render_email

    body = {k: v for k, v in common.EMAIL_TEMPLATE.items() if k != "channel"}
    out = []
    for i in range(count):
        to = common.recipient_email(i)
        msg = render_email(uuid.uuid4(), body, _variables(i, email=to), to=to, fallback_domain="tidings.local")
        out.append((msg.from_email, msg.to, build_mime(msg).as_bytes()))
    return out


def whatsapp_bodies(count: int) -> list[bytes]:
    from worker.channels.whatsapp import request_body
    from worker.render import render_whatsapp

    body = {k: v for k, v in common.WHATSAPP_TEMPLATE.items() if k != "channel"}
    out = []
    for i in range(count):
        phone = common.recipient_phone(i)
        msg = render_whatsapp(body, _variables(i, phone=phone), to=phone)
        out.append(orjson.dumps(request_body(msg)))
    return out


async def _timed(
    worker: Any, connections: int, duration_s: float, warmup_s: float, max_messages: int
) -> dict[str, Any]:
    """Run `worker(index, deadline, counter)` on N connections: a warm-up, then the measured phase."""
    counts = {"ok": 0, "errors": 0, "budget": max_messages}

    async def phase(seconds: float) -> float:
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(*(worker(c, deadline, counts) for c in range(connections)))
        return time.perf_counter() - started

    if warmup_s > 0:
        await phase(warmup_s)
    counts.update(ok=0, errors=0, budget=max_messages)
    elapsed = await phase(duration_s)
    return {"rate": round(counts["ok"] / elapsed, 1), "messages": counts["ok"], "errors": counts["errors"]}


async def smtp_ceiling(
    port: int, connections: int, duration_s: float, warmup_s: float, max_messages: int, distinct: int
) -> dict[str, Any]:
    import aiosmtplib

    messages = rendered_emails(distinct)
    clients = [
        aiosmtplib.SMTP(hostname=common.LOOPBACK, port=port, use_tls=False, start_tls=False, timeout=30)
        for _ in range(connections)
    ]
    await asyncio.gather(*(c.connect() for c in clients))

    async def worker(index: int, deadline: float, counts: dict[str, int]) -> None:
        client = clients[index]
        i = index
        while time.perf_counter() < deadline and counts["budget"] > 0:
            counts["budget"] -= 1
            sender, to, data = messages[i % len(messages)]
            i += connections
            try:
                await client.sendmail(sender, [to], data)
                counts["ok"] += 1
            except aiosmtplib.SMTPException:
                counts["errors"] += 1
                if not client.is_connected:
                    await client.connect()

    try:
        result = await _timed(worker, connections, duration_s, warmup_s, max_messages)
    finally:
        for c in clients:
            c.close()
    result["connections"] = connections
    return result


async def whatsapp_ceiling(
    base_url: str, connections: int, duration_s: float, warmup_s: float, max_messages: int, distinct: int
) -> dict[str, Any]:
    import aiohttp

    common.require_loopback(base_url)
    bodies = whatsapp_bodies(distinct)
    url = f"{base_url.rstrip('/')}/v21.0/{common.WA_PHONE_NUMBER_ID}/messages"
    headers = {
        "Authorization": f"Bearer {common.WA_ACCESS_TOKEN}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as session:

        async def worker(index: int, deadline: float, counts: dict[str, int]) -> None:
            i = index
            while time.perf_counter() < deadline and counts["budget"] > 0:
                counts["budget"] -= 1
                body = bodies[i % len(bodies)]
                i += connections
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        counts["ok" if resp.status == 200 else "errors"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    counts["errors"] += 1

        result = await _timed(worker, connections, duration_s, warmup_s, max_messages)
    result["connections"] = connections
    return result


def sink_ms(port: int, count: int) -> dict[str, Any]:
    messages = rendered_emails(20)
    times: list[float] = []
    with smtplib.SMTP(common.LOOPBACK, port, timeout=10) as client:
        client.ehlo("bench.local")
        for i in range(count + 20):
            sender, to, data = messages[i % len(messages)]
            started = time.perf_counter()
            client.sendmail(sender, [to], data)
            if i >= 20:  # the first transactions warm the connection
                times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "p50_ms": round(common.percentile(times, 50), 4),
        "p99_ms": round(common.percentile(times, 99), 4),
        "transactions": len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["smtp", "whatsapp", "sink-ms"])
    parser.add_argument("--port", type=int, help="smtp, sink-ms: the sink's port on 127.0.0.1")
    parser.add_argument("--url", help="whatsapp: the sandbox's base URL")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--max-messages", type=int, default=2_000_000, help="a hard cap per phase")
    parser.add_argument("--count", type=int, default=500, help="sink-ms: transactions timed")
    parser.add_argument("--distinct", type=int, default=DISTINCT, help="distinct messages rendered, cycled")
    parser.add_argument("--loop", default="uvloop", choices=["uvloop", "asyncio"])
    args = parser.parse_args()
    shape = (args.connections, args.duration, args.warmup, args.max_messages, args.distinct)
    if args.kind == "smtp":
        result = common.run(smtp_ceiling(args.port, *shape), args.loop)
    elif args.kind == "whatsapp":
        result = common.run(whatsapp_ceiling(args.url, *shape), args.loop)
    else:
        result = sink_ms(args.port, args.count)
    result["loop"] = args.loop if args.kind != "sink-ms" else "blocking"
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
