"""Idempotency-Key through crashes and outages: a real api process killed with SIGKILL
mid-request, and Postgres lost (replies swallowed, then connections dropped) around keyed
synchronous sends.

A key whose request died is taken over by a retry once its lease lapses (not after 24 h);
a send that was committed is answered as a success, never 503; and a retry with the same
key finds the send that was committed instead of making a second one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from shared.config import Settings
from tests import test_faults
from tests.helpers import eventually
from tests.procs import settings_env
from tests.test_api_processes import free_port
from tests.test_faults import Connect, Stack, TcpProxy

# The fault tests' stack (own database, app, SMTP server, worker processes), as a fixture here too.
stack = test_faults.stack

LEASE_S = 2.0
# Scheduling jitter on a shared machine plus the retry loop's own pause.
MARGIN_S = 1.5
RETRY_PAUSE_S = 0.1


class ApiProcess:
    """The real `tidings api`, on a port of its own, killed without any cleanup."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tidings.cli",
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            env=settings_env(self.settings),
            stdout=log,
            stderr=log,
        )
        log.close()

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(f"{self.url}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, timeout_s=30, interval_s=0.2)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


async def _retry_until_answered(
    client: Any, path: str, headers: dict[str, str], body: dict[str, Any]
) -> tuple[Any, list[str | None]]:
    """What a client does: repeat the request with the same key while it is in flight (409),
    here more often than Retry-After asks, to measure when the key frees. Returns the first
    other answer, and the Retry-After of every 409 met on the way."""
    deadline = asyncio.get_running_loop().time() + LEASE_S + 10
    retry_afters: list[str | None] = []
    while True:
        r = await client.post(path, headers=headers, json=body)
        if r.status != 409 or asyncio.get_running_loop().time() > deadline:
            return r, retry_afters
        retry_afters.append(r.headers.get("Retry-After"))
        r.release()
        await asyncio.sleep(RETRY_PAUSE_S)


async def _sends_to(stack: Stack, email: str) -> list[uuid.UUID]:
    rows = await stack.pool.fetch("SELECT DISTINCT send_id FROM messages WHERE to_address = $1", email)
    return [r["send_id"] for r in rows]


async def test_api_killed_after_the_commit_retry_answers_from_the_send(
    stack: Stack, tmp_path: Path, capsys: Any
) -> None:
    """Killed while it waits for the outcome of a synchronous send it has committed: a
    retry (on another replica) takes the key over when the lease lapses and answers with
    that send; nothing is sent twice."""
    api = ApiProcess(stack.settings.replace(idempotency_lease_s=LEASE_S, sync_send_timeout_s=60), tmp_path / "a.log")
    await api.start()
    path = f"/orgs/{stack.org_id}/broadcasts/{stack.broadcast_id}/send"
    email = f"killed-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "variables": {"otp": "7"}}  # synchronous; no worker runs yet
    headers = {**stack.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    try:
        async with aiohttp.ClientSession() as http:
            first = asyncio.ensure_future(http.post(api.url + path, headers=headers, json=body))
            await eventually(lambda: _sends_to(stack, email), timeout_s=20)  # committed; waiting
            (committed,) = await _sends_to(stack, email)
            await api.kill()
            killed_at = asyncio.get_running_loop().time()
            with contextlib.suppress(aiohttp.ClientError):
                await first  # the connection died with the process
        r, retry_afters = await _retry_until_answered(stack.client, path, headers, body)
        after_s = asyncio.get_running_loop().time() - killed_at
    finally:
        await api.kill()
    answer = await r.json()
    with capsys.disabled():
        print(
            f"\n[idempotency] api kill -9 after the commit: retry answered {r.status} "
            f"{after_s:.2f} s after the kill (lease {LEASE_S} s); "
            f"sends for the key: {len(await _sends_to(stack, email))}"
        )
    assert r.status in (200, 202), answer
    assert answer["send_id"] == str(committed)
    assert after_s <= LEASE_S + MARGIN_S
    assert all(retry_afters), "a 409 for a key in flight says when to retry"
    assert await _sends_to(stack, email) == [committed]
    # The same answer from now on, and the one email goes out once.
    again = await stack.client.post(path, headers=headers, json=body)
    assert again.status == r.status and (await again.json())["send_id"] == str(committed)
    await stack.worker()
    ids = [answer["recipients"][0]["id"]]
    await stack.settle(ids)
    result = await stack.report("api kill -9 after the commit", ids, capsys)
    assert result["sent"] == 1 and result["duplicates"] == 0


async def test_api_killed_while_its_commit_reply_is_lost_retry_answers_from_the_send(
    stack: Stack, tmp_path: Path, capsys: Any
) -> None:
    """Killed after its send committed but before Postgres's reply reached it: a retry takes
    the key over when the lease lapses, finds the send bound to the key, and answers with it."""
    proxy, dsn = await faulty_postgres(stack)
    api = ApiProcess(stack.settings.replace(database_url=dsn, idempotency_lease_s=LEASE_S), tmp_path / "a.log")
    path = f"/orgs/{stack.org_id}/broadcasts/{stack.broadcast_id}/send"
    email = f"lost-reply-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "variables": {"otp": "8"}, "background": True}
    headers = {**stack.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    try:
        await api.start()
        async with aiohttp.ClientSession() as http:
            # One send first, so that the send pool's session has its statement prepared and
            # the next commit goes out in one message (a first Parse would wait for its reply).
            warm = {**body, "email": f"warm-{uuid.uuid4().hex[:8]}@example.com"}
            async with http.post(api.url + path, headers=stack.headers, json=warm) as r:
                assert r.status == 202, await r.text()
            proxy.stall_commits = True
            first = asyncio.ensure_future(http.post(api.url + path, headers=headers, json=body))
            await eventually(lambda: _sends_to(stack, email), timeout_s=20)  # committed; reply lost
            (committed,) = await _sends_to(stack, email)
            await api.kill()
            killed_at = asyncio.get_running_loop().time()
            with contextlib.suppress(aiohttp.ClientError):
                await first
        r, retry_afters = await _retry_until_answered(stack.client, path, headers, body)
        after_s = asyncio.get_running_loop().time() - killed_at
    finally:
        await api.kill()
        await proxy.close()
    answer = await r.json()
    sends = await _sends_to(stack, email)
    with capsys.disabled():
        print(
            f"\n[idempotency] api kill -9 with its commit's reply lost: retry answered {r.status} "
            f"{after_s:.2f} s after the kill (lease {LEASE_S} s); sends for the key: {len(sends)}"
        )
    assert r.status == 202, answer
    assert answer["send_id"] == str(committed)
    assert after_s <= LEASE_S + MARGIN_S
    assert all(retry_afters), "a 409 for a key in flight says when to retry"
    assert sends == [committed]


async def test_v1_transactional_api_killed_after_the_commit_retry_answers_with_it(
    stack: Stack, tmp_path: Path, capsys: Any
) -> None:
    """The Transactionals API: killed after its email committed, while it rings the workers
    through a hung Redis: a retry takes the key over when the lease lapses and answers with
    that email; one email, sent once."""
    proxy, redis_url = await TcpProxy.to_redis(stack.settings.redis_url)
    api = ApiProcess(
        stack.settings.replace(redis_url=redis_url, idempotency_lease_s=LEASE_S, key_cache_ttl_s=600),
        tmp_path / "a.log",
    )
    path = "/api/v1/transactionals.json"
    email = f"v1-killed-{uuid.uuid4().hex[:8]}@example.com"
    body = {"to": email, "subject": "Hello", "body": "Your code is 9"}
    headers = {**stack.headers, "Idempotency-Key": f"k-{uuid.uuid4()}"}
    written = "SELECT count(*) FROM transactionals WHERE recipient_email = $1"
    try:
        await api.start()
        async with aiohttp.ClientSession() as http:
            # A first email takes a chunk of the org's (large) budget, so that the next request
            # needs no Redis before its commit; then Redis hangs and the doorbell waits on it.
            warm = {**body, "to": f"warm-{uuid.uuid4().hex[:8]}@example.com"}
            async with http.post(api.url + path, headers=stack.headers, json=warm) as r:
                assert r.status == 201, await r.text()
            proxy.stall()
            first = asyncio.ensure_future(http.post(api.url + path, headers=headers, json=body))
            await eventually(lambda: _count(stack, written, email), timeout_s=20)
            await api.kill()
            killed_at = asyncio.get_running_loop().time()
            with contextlib.suppress(aiohttp.ClientError):
                await first
        r, retry_afters = await _retry_until_answered(stack.client, path, headers, body)
        after_s = asyncio.get_running_loop().time() - killed_at
    finally:
        await api.kill()
        await proxy.close()
    answer = await r.json()
    ids = [
        str(row["id"])
        for row in await stack.pool.fetch("SELECT id FROM transactionals WHERE recipient_email = $1", email)
    ]
    with capsys.disabled():
        print(
            f"\n[idempotency] v1 api kill -9 after the commit: retry answered {r.status} "
            f"{after_s:.2f} s after the kill (lease {LEASE_S} s); transactionals for the key: {len(ids)}"
        )
    assert r.status == 201, answer
    assert ids == [answer["id"]]
    assert after_s <= LEASE_S + MARGIN_S
    assert all(retry_afters), "a 409 for a key in flight says when to retry"
    await stack.worker()
    await stack.settle(ids)
    result = await stack.report("v1 api kill -9 after the commit", ids, capsys)
    assert result["sent"] == 1 and result["duplicates"] == 0


async def faulty_postgres(stack: Stack) -> tuple[PostgresFaults, str]:
    proxy, dsn = await PostgresFaults.to_postgres(stack.settings.database_url)
    assert isinstance(proxy, PostgresFaults)
    # In clear, so that the proxy can tell the send pool's sessions by their startup packet.
    return proxy, dsn + ("&" if "?" in dsn else "?") + "sslmode=disable"


async def _count(stack: Stack, sql: str, *args: Any) -> int:
    return int(await stack.pool.fetchval(sql, *args))


class PostgresFaults(TcpProxy):
    """A TcpProxy to Postgres with two more faults. `stall_commits` swallows the replies on
    the links of the api's send pool only (known by its startup packet, which sets
    plan_cache_mode): a send's commit reaches Postgres and commits, and the api never learns
    it. `stop_postgres` drops every link and closes each new one at once (a server that
    stopped); `start_postgres` relays again."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.stall_commits = False
        self.replies_lost = 0  # replies swallowed on send-pool links: commits the api never heard of
        self._refuser: asyncio.Server | None = None

    async def _start(self, connect: Connect) -> None:
        async def close_at_once(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        self._refuser = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
        refuser_port = self._refuser.sockets[0].getsockname()[1]

        async def gated() -> tuple[Any, Any]:
            if self.down:
                return await asyncio.open_connection("127.0.0.1", refuser_port)
            reader, writer = await connect()
            link = _Link(self, reader, writer)
            return link, link

        await super()._start(gated)

    async def stop_postgres(self) -> None:
        self.down = True
        for w in list(self.links):
            w.close()
        self.links.clear()
        await asyncio.sleep(0.1)

    def start_postgres(self) -> None:
        self.stall_commits = self.stalled = self.down = False

    async def close(self) -> None:
        await super().close()
        if self._refuser is not None:
            self._refuser.close()


class _Link:
    """One upstream connection as the proxy's pipes see it (read, write, drain, close): notes
    whether the client side is a send-pool session, and swallows its replies when told to."""

    def __init__(self, proxy: PostgresFaults, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy, self.reader, self.writer = proxy, reader, writer
        self.send_pool = False

    async def read(self, n: int) -> bytes:
        while True:
            data = await self.reader.read(n)
            if not (data and self.send_pool and self.proxy.stall_commits):
                return data
            self.proxy.replies_lost += 1

    def write(self, data: bytes) -> None:
        self.send_pool = self.send_pool or b"plan_cache_mode" in data
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


SENDS = 80
CONCURRENCY = 16
OUTAGE_S = 4.0


@dataclasses.dataclass
class Attempt:
    request_id: str
    status: int
    elapsed_s: float
    send_id: str | None = None


async def test_postgres_outages_around_keyed_sync_sends(
    stack: Stack, settings: Settings, tmp_path: Path, capsys: Any
) -> None:
    """Keyed synchronous sends while the api's Postgres stops for a while, twice: once amid
    requests in every stage, once while a commit's reply is lost (the statement committed,
    the api never heard). No attempt whose send was committed is answered 503, and every key
    ends with exactly one send, delivered once."""
    await stack.worker()  # the worker reaches Postgres directly: only the api's link fails
    proxy, dsn = await faulty_postgres(stack)
    api_settings = stack.settings.replace(database_url=dsn, idempotency_lease_s=LEASE_S, sync_send_timeout_s=20)
    path = f"/orgs/{stack.org_id}/broadcasts/{stack.broadcast_id}/send"
    attempts: dict[str, list[Attempt]] = collections.defaultdict(list)
    answered: set[str] = set()
    loop = asyncio.get_running_loop()
    try:
        async with TestClient(TestServer(create_app(api_settings))) as client:
            sem = asyncio.Semaphore(CONCURRENCY)

            async def one(i: int) -> None:
                email = f"outage-{i}-{uuid.uuid4().hex[:6]}@example.com"
                headers = {**stack.headers, "Idempotency-Key": email}
                body = {"email": email, "variables": {"otp": str(i)}}
                deadline = loop.time() + 60
                async with sem:
                    for n in range(1000):
                        request_id = f"{email}#{n}"
                        started = loop.time()
                        r = await client.post(path, headers={**headers, "X-Request-Id": request_id}, json=body)
                        payload = await r.json()
                        attempt = Attempt(request_id, r.status, loop.time() - started, payload.get("send_id"))
                        attempts[email].append(attempt)
                        if r.status in (200, 202) or loop.time() > deadline:
                            answered.add(email)
                            return
                        assert r.status in (409, 503), payload
                        await asyncio.sleep(0.2)

            async def stop_postgres_a_while() -> int:
                """Postgres stops: requests committing, or waiting for their outcome, lose it.
                Returns how many sends were committed and not yet answered at that moment."""
                unanswered = await _count(
                    stack,
                    "SELECT count(*) FROM sends WHERE org_id = $1 AND NOT request_id = ANY($2::text[])",
                    stack.org_id,
                    [a.request_id for tries in attempts.values() for a in tries],
                )
                await proxy.stop_postgres()
                await asyncio.sleep(OUTAGE_S)
                proxy.start_postgres()
                return unanswered

            async def outage() -> tuple[int, int]:
                # First a plain stop, amid requests in every stage.
                await eventually(lambda: len(answered) >= SENDS // 4, timeout_s=60)
                mid_flight = await stop_postgres_a_while()
                # Then a commit whose reply is lost (sends keep coming: it takes moments), and
                # the stop while the api waits for that reply.
                await eventually(lambda: len(answered) >= SENDS // 2, timeout_s=60)
                proxy.stall_commits = True
                await eventually(lambda: proxy.replies_lost, timeout_s=10)
                await asyncio.sleep(0.5)
                return mid_flight, await stop_postgres_a_while()

            fault = asyncio.ensure_future(outage())
            await asyncio.gather(*(one(i) for i in range(SENDS)))
            mid_flight, reply_lost = await fault
    finally:
        await proxy.close()

    emails = list(attempts)
    rows = await stack.pool.fetch(
        "SELECT m.to_address, m.id, m.send_id, s.request_id FROM messages m JOIN sends s ON s.id = m.send_id"
        " WHERE m.to_address = ANY($1::text[])",
        emails,
    )
    sends_per_key = collections.Counter(r["to_address"] for r in rows)
    committed_by = {r["request_id"] for r in rows}
    all_attempts = [a for tries in attempts.values() for a in tries]
    statuses = collections.Counter(a.status for a in all_attempts)
    committed_503 = [a for a in all_attempts if a.status == 503 and a.request_id in committed_by]
    finals = {email: tries[-1] for email, tries in attempts.items()}
    # Answered by a later attempt than the one that committed the send: a replay or a takeover.
    from_committed = sum(1 for email, a in finals.items() if a.request_id not in committed_by)
    ids = [str(r["id"]) for r in rows]
    await stack.settle(ids)
    result = await stack.report("postgres outage around keyed sync sends", ids, capsys)
    with capsys.disabled():
        print(
            f"[idempotency] postgres stopped twice for {OUTAGE_S} s ({SENDS} keyed sync sends): "
            f"{len(all_attempts)} attempts {dict(sorted(statuses.items()))}; "
            f"commit replies lost: {proxy.replies_lost}; "
            f"sends committed and not yet answered when Postgres stopped: {mid_flight}, "
            f"then {reply_lost} with the commit's reply lost; "
            f"503 for a committed send: {len(committed_503)}; answered from a send an earlier attempt committed: "
            f"{from_committed}; keys with more than one send: {sum(1 for n in sends_per_key.values() if n > 1)}; "
            f"slowest answer {max(a.elapsed_s for a in all_attempts):.2f} s"
        )
    assert all(a.status in (200, 202) for a in finals.values()), {e: a for e, a in finals.items() if a.status > 202}
    assert not committed_503, committed_503[:5]
    assert sends_per_key == collections.Counter({email: 1 for email in emails}), sends_per_key
    assert all(a.send_id == str(r["send_id"]) for r in rows for a in [finals[r["to_address"]]])
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["sent"] == SENDS
