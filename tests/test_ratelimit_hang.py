"""A hung Redis answers 503 within REDIS_TIMEOUT_S, also for an org with a large budget.

An org whose budget is large takes its tokens from Redis in chunks, one chunk request at a
time per org: the other requests wait for it. With Redis hung, that wait must be bounded as
a whole (queueing included), not once per request in the queue.
"""

from __future__ import annotations

import asyncio
import statistics
import uuid
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from api.ratelimit import chunk_for
from shared import orgs
from shared.config import Settings
from tests.helpers import eventually
from tests.test_faults import TcpProxy

REDIS_TIMEOUT_S = 1.0
# Event-loop and scheduling jitter on a shared test machine; far below one more timeout.
MARGIN_S = 0.5
CONCURRENT = 60
BUDGET = 100_000


async def test_hung_redis_answers_token_requests_within_the_timeout(
    settings: Settings, pool: asyncpg.Pool, capsys: Any
) -> None:
    assert chunk_for(BUDGET) > 1  # the chunked path, with its per-org lock
    org_id = await orgs.create_org(pool, "hung redis", rate_limit_requests=BUDGET)
    headers = {"Authorization": f"Bearer {await orgs.create_key(pool, org_id, ['read', 'write'])}"}
    # No such broadcast: a request that gets past the rate limit is answered 404, and sends nothing.
    path = f"/orgs/{org_id}/broadcasts/{uuid.uuid4()}/send"
    body = {"email": "hung@example.com", "background": True}
    proxy, redis_url = await TcpProxy.to_redis(settings.redis_url)
    # The key stays cached, so that what is measured is the wait on Redis, not 60 key look-ups.
    hung = settings.replace(redis_url=redis_url, redis_timeout_s=REDIS_TIMEOUT_S, key_cache_ttl_s=600)
    try:
        async with TestClient(TestServer(create_app(hung))) as client:
            r = await client.get(f"/orgs/{org_id}/broadcasts", headers=headers)  # not rate limited
            assert r.status == 200, await r.text()
            proxy.stall()
            loop = asyncio.get_running_loop()

            async def one() -> tuple[int, float]:
                started = loop.time()
                try:
                    # A request still waiting well past the bound counts as hung (status 0).
                    r = await asyncio.wait_for(client.post(path, headers=headers, json=body), REDIS_TIMEOUT_S + 5)
                    status = r.status
                    r.release()
                except TimeoutError:
                    status = 0
                return status, loop.time() - started

            results = await asyncio.gather(*(one() for _ in range(CONCURRENT)))
            latencies = sorted(t for _, t in results)
            statuses = sorted({s for s, _ in results})
            with capsys.disabled():
                print(
                    f"\n[redis hung] {CONCURRENT} concurrent requests, budget {BUDGET}, "
                    f"REDIS_TIMEOUT_S={REDIS_TIMEOUT_S}: statuses {statuses}, "
                    f"latency max {latencies[-1]:.3f} s, median {statistics.median(latencies):.3f} s"
                )
            assert set(statuses) <= {503, 404}, statuses
            assert latencies[-1] <= REDIS_TIMEOUT_S + MARGIN_S, latencies[-5:]

            # Redis answers again: requests get past the limit once more (once the connections
            # given up on are closed, which takes at most a connect timeout).
            proxy.stalled = False

            async def past_the_limit() -> bool:
                r = await client.post(path, headers=headers, json=body)
                r.release()
                return r.status == 404

            await eventually(past_the_limit, timeout_s=10, interval_s=0.2)
    finally:
        await proxy.close()
