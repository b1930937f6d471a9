"""A late chunk grant from Redis is spent, not given up on and asked for again.

An org with a large budget takes its tokens from Redis in chunks, one chunk request at a time,
which every request of the org waits for. Under overload that grant can come back later than
a waiting request's REDIS_TIMEOUT_S: those requests get 503 (the documented bound), but the
grant itself must go on and serve the requests behind them. Before, the request that started
it cancelled it at its own deadline: the grant's Redis connection was dropped, the tokens Redis
had counted were lost, and each request queued behind asked again and was given up on in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from urllib.parse import urlsplit

import pytest
import redis.exceptions
from redis.asyncio import Redis

from api.ratelimit import RateLimiter, chunk_for
from shared import redis_clients
from shared.redis_keys import RedisKeys
from tests.helpers import eventually

LIMIT, WINDOW_S = 10_000, 3600
WAIT_S = 0.3  # each request's bound here (REDIS_TIMEOUT_S in the api)


class HoldingRelay:
    """A loopback relay to Redis that can hold Redis's replies (`hold`) and pass them on
    later, in order (`release`): a Redis that answers late, not one that never answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.released = asyncio.Event()
        self.released.set()
        self.held_bytes = 0
        self.links: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
            self.links.update({writer, up_writer})

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
                with contextlib.suppress(Exception):
                    while data := await src.read(65536):
                        if replies and not self.released.is_set():
                            self.held_bytes += len(data)
                            await self.released.wait()
                        dst.write(data)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def hold(self) -> None:
        self.held_bytes = 0
        self.released.clear()

    async def close(self) -> None:
        self.released.set()
        if self.server is not None:
            self.server.close()
        for w in list(self.links):
            w.close()


async def test_a_late_chunk_grant_serves_the_requests_behind_it(redis_url: str) -> None:
    chunk = chunk_for(LIMIT)
    assert chunk > 1  # the shared chunk request
    parts = urlsplit(redis_url)
    relay = HoldingRelay(parts.hostname or "127.0.0.1", parts.port or 6379)
    prefix = f"tidings-test-rl-late:{uuid.uuid4().hex[:8]}:"
    direct = Redis.from_url(redis_url)
    # The client's own bound is longer than the late reply: only the requests' bound passes.
    through = redis_clients.commands((await relay.start()) + parts.path, timeout_s=10.0)
    try:
        keys = RedisKeys(prefix)
        limiter = RateLimiter(through, keys)
        # The script is loaded, and a connection open, before Redis turns late.
        assert (await limiter.hit(uuid.uuid4(), LIMIT, WINDOW_S)).allowed
        org_id = uuid.uuid4()
        relay.hold()
        first = asyncio.ensure_future(limiter.hit_within(org_id, LIMIT, WINDOW_S, WAIT_S))
        await eventually(lambda: relay.held_bytes > 0)  # the grant reached Redis; its answer is late
        second = asyncio.ensure_future(limiter.hit_within(org_id, LIMIT, WINDOW_S, WAIT_S))
        # Both give up at their bound, as with Redis away (503).
        for waiting in (first, second):
            with pytest.raises(redis.exceptions.TimeoutError):
                await asyncio.wait_for(waiting, WAIT_S + 5)
        relay.released.set()

        async def counted() -> int:
            return int(await direct.get(keys.rate_limit(org_id, _window_start())) or 0)

        # The late grant lands and is spent: the next requests ask Redis for nothing more.
        verdicts = [await limiter.hit_within(org_id, LIMIT, WINDOW_S, 5.0) for _ in range(chunk)]
        assert all(v.allowed for v in verdicts)
        assert await counted() == chunk  # one chunk asked for, none lost
        assert verdicts[-1].remaining == LIMIT - chunk
    finally:
        await relay.close()
        await through.aclose()
        stale = [k async for k in direct.scan_iter(match=f"{prefix}*")]
        if stale:
            await direct.delete(*stale)
        await direct.aclose()


def _window_start() -> int:
    return int(time.time() // WINDOW_S * WINDOW_S)
