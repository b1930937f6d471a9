"""Fault test for outbound webhooks: 2,000 sends while the org's endpoint is down (answering
503, then its port closed) and then up again. Every status change reaches the endpoint at
least once; the duplicates (the same `webhook-id` received twice) are counted and printed.

Real parts only: the api, two `tidings worker` processes (delivering email and webhooks),
an SMTP server, and an aiohttp receiver on 127.0.0.1 that verifies every request it accepts
with the official `standardwebhooks` library. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from typing import Any

from aiohttp import web

from tests.helpers import eventually
from tests.test_faults import Stack, stack  # noqa: F401 (the fixture: a database, queue and workers of its own)
from tests.webhook_support import Receiver

SENDS = 2000
BATCH = 500  # the batch route's largest request
REFUSED_EVERY = 50  # one address in this many gets a 550: message.failed beside message.sent
EVENTS = ["message.sent", "message.failed"]
DOWN_503_S = 4.0  # the receiver answers 503 this long after its first request...
DOWN_CLOSED_S = 4.0  # ...then its port is closed this long, then it is up again
# Long enough to outlast the outage (about 27 s with jitter), short enough to end quickly.
RETRY_SCHEDULE_S = "0.5,1,2,3,3,3,3,3,3,3"
DELIVERED_TIMEOUT_S = 60.0


class FlakyReceiver(Receiver):
    """The tests' receiver, which can also refuse every request with a 503 (not recorded:
    a consumer that answered 503 did not take the event)."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing = False
        self.refused = 0
        self.first_request = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.first_request.set()
        if self.refusing:
            self.refused += 1
            await request.read()
            return web.Response(status=503, text="down for maintenance")
        return await super()._handle(request)


async def _send_all(s: Stack) -> tuple[list[str], set[str]]:
    """SENDS sends through the batch route; returns the message ids and the refused addresses."""
    addresses = [f"whfault-{i}-{uuid.uuid4().hex[:6]}@example.com" for i in range(SENDS)]
    refused = set(addresses[::REFUSED_EVERY])
    for a in refused:
        s.smtp.handler.reject_rcpt[a] = "550 5.1.1 no such user"
    ids: list[str] = []
    for first in range(0, SENDS, BATCH):
        items = [
            {"email": a, "variables": {"otp": str(first + j)}} for j, a in enumerate(addresses[first : first + BATCH])
        ]
        r = await s.client.post(
            f"/orgs/{s.org_id}/broadcasts/{s.broadcast_id}/send/batch",
            headers=s.headers,
            json={"items": items},
        )
        assert r.status == 202, await r.text()
        for item in (await r.json())["data"]:
            assert item.get("error") is None, item
            ids.extend(rec["id"] for rec in item["recipients"])
    return ids, refused


async def test_endpoint_down_then_up_gets_every_status_change(
    stack: Stack,  # noqa: F811
    capsys: Any,
) -> None:
    rx = FlakyReceiver()
    await rx.start()
    port = rx.port
    try:
        r = await stack.client.post(
            f"/orgs/{stack.org_id}/webhooks",
            headers=stack.headers,
            json={"url": rx.url("faults"), "events": EVENTS},
        )
        assert r.status == 201, await r.text()
        rx.trust("faults", (await r.json())["secret"])
        rx.refusing = True

        webhook_settings = stack.settings.replace(
            webhook_max_in_flight=32,
            webhook_endpoint_concurrency=16,
            webhook_retry_schedule_s=RETRY_SCHEDULE_S,
            webhook_timeout_s=2.0,
            webhook_lease_s=4.0,
        )
        t0 = time.monotonic()
        timings: dict[str, float] = {}

        def mark(name: str) -> None:
            timings[name] = round(time.monotonic() - t0, 1)

        # Accepted and queued before any worker runs; then two workers deliver them.
        ids, refused = await _send_all(stack)
        mark("accepted")
        assert len(ids) == SENDS
        await stack.worker(webhook_settings)
        await stack.worker(webhook_settings)

        # Down: 503 for a while from the first attempt on, then nothing listening at all.
        await asyncio.wait_for(rx.first_request.wait(), 30)
        mark("first_request")
        await asyncio.sleep(DOWN_503_S)
        await rx.close()
        await asyncio.sleep(DOWN_CLOSED_S)
        # Up again, on the same port.
        rx.refusing = False
        await rx.start(port)
        mark("up")
        sent_while_down = (await stack.statuses(ids))["sent"]

        await stack.settle(ids)
        mark("settled")
        rows = await stack.pool.fetch(
            "SELECT message_id::text AS id, 'message.' || status::text AS type FROM message_events"
            " WHERE message_id = ANY($1::uuid[]) AND 'message.' || status::text = ANY($2)",
            ids,
            EVENTS,
        )
        expected = {(r["id"], r["type"]) for r in rows}

        def received() -> set[tuple[str, str]]:
            return {(h.payload["data"]["id"], h.payload["type"]) for h in rx.hits["faults"] if h.payload}

        async def all_received() -> bool:
            return expected <= received()

        with contextlib.suppress(AssertionError):  # reported below, with what is missing
            await eventually(all_received, timeout_s=DELIVERED_TIMEOUT_S, interval_s=0.2)
        mark("received")
        hits = rx.hits["faults"]
        per_id = collections.Counter(h.webhook_id for h in hits)
        duplicates = sum(n - 1 for n in per_id.values() if n > 1)
        missing = expected - received()
        attempts = await stack.pool.fetchrow(
            "SELECT count(*) AS deliveries, sum(attempts) AS attempts,"
            " count(*) FILTER (WHERE status = 'failed') AS failed,"
            " count(*) FILTER (WHERE status = 'pending') AS pending FROM webhook_deliveries"
        )
        with capsys.disabled():
            print(
                f"\n[fault] webhook endpoint down ({DOWN_503_S:.0f} s 503, {DOWN_CLOSED_S:.0f} s port closed) then up,"
                f" {SENDS} sends: events expected={len(expected)} received={len(per_id)} missing={len(missing)}"
                f" duplicates={duplicates} requests_refused={rx.refused} requests_accepted={len(hits)}"
                f" attempts={attempts['attempts']} failed_deliveries={attempts['failed']}"
                f" pending={attempts['pending']} sent_while_down={sent_while_down} (timings: {timings})"
            )
        assert rx.unverified == [], [h.headers for h in rx.unverified[:3]]
        assert not missing, sorted(missing)[:5]
        # Every email was sent or failed by the SMTP server's 550, and each has its event.
        counts = await stack.statuses(ids)
        assert counts["sent"] == SENDS - len(refused) and counts["failed"] == len(refused), counts
        assert len(expected) == SENDS
        assert rx.refused > 0  # the outage was seen
        assert attempts["failed"] == 0
        # One event per status change: every webhook-id received is one of them.
        assert len(per_id) == len(expected)
    finally:
        await rx.close()
