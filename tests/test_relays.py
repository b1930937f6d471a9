"""The relay pool and the throughput ceilings, against real SMTP sinks, the WhatsApp sandbox,
Redis and real `tidings worker` processes.

- `SMTP_RELAYS` parses, or the command exits with one line naming the relay.
- Failover: the first relay refusing connections (a closed port), every message arrives at
  the second, none counted as a retry (attempts 1, no error); a relay that went down is
  skipped for its cooldown, then tried again; relays are named host:port in metrics, never
  with their credentials; every relay down is a transient failure, as one relay down was.
- Ceilings hold across two worker processes together: 200 emails through a relay with
  `max_per_s=20` take at least 9.5 s; WhatsApp likewise with WHATSAPP_MAX_PER_S; with Redis
  unreachable a worker keeps its equal share, and never blocks.

The process tests run on a database of their own (as tests/test_faults.py does): the
session's in-process worker would otherwise deliver their messages through its own relays.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import prometheus_client
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from api.app import create_app
from shared import db, orgs
from shared.config import Settings
from shared.migrate import migrate
from shared.relays import Relay, parse_relays
from tests.helpers import EMAIL_TEMPLATE, WHATSAPP_TEMPLATE, unique_phone
from tests.procs import WorkerProcess
from tests.test_config_errors import one_line, run
from tidings.dev.embedded import create_database, drop_database
from tidings.dev.inbox import start_smtp
from worker.channels.base import RenderedEmail, TransientDeliveryError
from worker.channels.email import EmailChannel
from worker.throughput import Throughput


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens here once the socket is closed


def rendered(to: str) -> RenderedEmail:
    return RenderedEmail(
        message_id=f"<{uuid.uuid4().hex}@tidings.test>",
        from_email="otp@tidings.test",
        from_name=None,
        to=to,
        to_name=None,
        reply_to=None,
        subject="relay test",
        html=None,
        text="hello",
    )


# ---- SMTP_RELAYS parses, or says what is wrong ----


def test_relays_parse_in_order_with_their_options() -> None:
    first, second, third = parse_relays(
        "smtp://mailer:p%40ss%2Cword@smtp-a.example.com:587?tls=starttls&max_per_s=20,"
        " smtp://smtp-b.example.com:465?tls=tls , smtp://[::1]:2525?tls=none&max_per_s=0.5"
    )
    assert first == Relay("smtp-a.example.com", 587, "starttls", "mailer", "p@ss,word", 20.0)
    assert second == Relay("smtp-b.example.com", 465, "tls")
    assert third == Relay("::1", 2525, "none", max_per_s=0.5)
    assert (first.name, third.name) == ("smtp-a.example.com:587", "[::1]:2525")
    assert "p@ss" not in repr(first)  # the password stays out of reprs (and so out of logs)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("smtp://a.test:25,", "relay 2: is empty"),
        ("smtps://u:secret@a.test:465", "relay 1 (a.test:465): must start with smtp:// (not smtps://)"),
        ("smtp://a.test:25,smtp://u:secret@b.test", "relay 2 (b.test): has no port"),
        ("smtp://u:secret@b.test:99999", "relay 1 (b.test:99999): the port must be a number"),
        ("smtp://b.test:25?tls=ssl", "relay 1 (b.test:25): tls must be none, starttls or tls, not 'ssl'"),
        ("smtp://b.test:25?max_per_s=fast", "relay 1 (b.test:25): max_per_s must be a positive number"),
        ("smtp://b.test:25?max_per_s=0", "max_per_s must be a positive number, not '0'"),
        ("smtp://b.test:25?pool=3", "relay 1 (b.test:25): unknown option 'pool'"),
        ("smtp://b.test:25/path", "relay 1 (b.test:25): takes no path"),
        ("smtp://b.test:25,smtp://u:secret@b.test:25", "relay 2 (b.test:25) is listed twice"),
    ],
)
def test_a_relay_that_does_not_parse_is_named_without_its_credentials(value: str, expected: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_relays(value)
    message = str(caught.value)
    assert message.startswith("SMTP_RELAYS: ") and expected in message
    assert "secret" not in message


def test_bad_smtp_relays_stop_the_worker_with_one_line(database_url: str, redis_url: str) -> None:
    line = one_line(
        run(
            ["worker"],
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            SMTP_RELAYS="smtp://relay-a.test:587,smtp://mailer:s3cret@relay-b.test:587?tls=sometimes",
        )
    )
    assert line.startswith("configuration error: SMTP_RELAYS: relay 2 (relay-b.test:587): tls must be")
    assert "s3cret" not in line


# ---- failover, in one channel ----


class ClosingServer:
    """Accepts TCP connections and closes them at once (a relay that is down), counting them."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_a_relay_down_is_skipped_for_its_cooldown_then_tried_again(settings: Settings) -> None:
    down = ClosingServer()
    down_port = await down.start()
    sink = await start_smtp("127.0.0.1", 0)
    relays = f"smtp://mailer:hunter22@127.0.0.1:{down_port}?tls=none,smtp://127.0.0.1:{sink.port}?tls=none"
    channel = EmailChannel(settings.replace(smtp_relays=relays, smtp_relay_cooldown_s=1.0))
    try:
        for i in range(5):
            await channel.send(rendered(f"cool-{i}@example.com"))
        # The first send found it down; the next four went straight to the second relay.
        assert down.connections == 1
        assert len(sink.messages) == 5
        await asyncio.sleep(1.1)  # the cooldown is over: the first relay is tried again
        await channel.send(rendered("after@example.com"))
        assert down.connections == 2
        assert len(sink.messages) == 6
    finally:
        await channel.close()
        await sink.close()
        await down.close()
    exposition = prometheus_client.generate_latest().decode()
    assert f'tidings_smtp_relay_down_total{{relay="127.0.0.1:{down_port}"}} 2.0' in exposition
    assert f'tidings_smtp_relay_messages_total{{relay="127.0.0.1:{sink.port}",result="accepted"}} 6.0' in exposition
    assert "hunter22" not in exposition and "mailer" not in exposition


async def test_a_kept_connection_the_relay_closed_is_replaced_not_taken_for_a_relay_down(settings: Settings) -> None:
    first = await start_smtp("127.0.0.1", 0)
    port = first.port
    second = await start_smtp("127.0.0.1", 0)
    relays = f"smtp://127.0.0.1:{port}?tls=none,smtp://127.0.0.1:{second.port}?tls=none"
    channel = EmailChannel(settings.replace(smtp_relays=relays))
    try:
        await channel.send(rendered("kept-1@example.com"))  # its connection is kept for reuse
        await first.close()  # closes that connection, as a relay does with an idle one
        first = await start_smtp("127.0.0.1", port)
        await channel.send(rendered("kept-2@example.com"))
        assert [m.rcpt_tos for m in first.messages] == [("kept-2@example.com",)]
        assert second.messages == [] and channel.relays[0].is_up(asyncio.get_running_loop().time())
    finally:
        await channel.close()
        await first.close()
        await second.close()


async def test_every_relay_down_is_a_transient_failure(settings: Settings) -> None:
    a, b = closed_port(), closed_port()
    relays = f"smtp://127.0.0.1:{a}?tls=none,smtp://127.0.0.1:{b}?tls=none"
    channel = EmailChannel(settings.replace(smtp_relays=relays))
    try:
        with pytest.raises(TransientDeliveryError, match=f"127.0.0.1:{a}.*127.0.0.1:{b}"):
            await channel.send(rendered("nobody@example.com"))
        # Both cooling down: the next message still tries them (and fails as before), never hangs.
        with pytest.raises(TransientDeliveryError, match="SMTP connection failed"):
            await channel.send(rendered("nobody@example.com"))
    finally:
        await channel.close()


# ---- Redis unreachable: an equal share, never a hang ----


async def test_with_redis_unreachable_a_worker_keeps_its_equal_share(settings: Settings) -> None:
    dead = Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=0.2, socket_timeout=0.2)
    throughput = Throughput(dead, f"tidings-test:{uuid.uuid4().hex[:8]}:")
    ceiling = throughput.ceiling("whatsapp", 20.0)
    assert ceiling is not None
    ceiling.live_workers = 2  # the last count Redis gave: this worker's share is 10 a second
    started = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(ceiling.take() for _ in range(12))), 10)
    finally:
        await throughput.close()
    # A burst of one token, then 10 a second: the twelfth comes 1.1 s after the first.
    assert time.monotonic() - started >= 1.0
    # The pump holds what the share sends in 2 s (20), less the 3 it holds already.
    throughput.governs("whatsapp", lambda: ceiling)
    assert throughput.claim_limit({"whatsapp": 3, "email": 50}) == 17


# ---- the whole path: the API, two `tidings worker` processes, real sinks ----


class Stack:
    def __init__(self, settings: Settings, client: TestClient[Any, Any], pool: asyncpg.Pool, tmp: Path) -> None:
        self.settings = settings
        self.client = client
        self.pool = pool
        self.tmp = tmp
        self.workers: list[WorkerProcess] = []
        self.headers: dict[str, str] = {}
        self.org_id: uuid.UUID | None = None

    async def start_workers(self, settings: Settings, n: int = 2) -> None:
        for _ in range(n):
            w = WorkerProcess(settings, self.tmp / f"worker-{len(self.workers)}.log")
            await w.start()
            self.workers.append(w)

    async def broadcast(self, template: dict[str, Any]) -> str:
        if self.org_id is None:
            self.org_id = await orgs.create_org(self.pool, "relays", rate_limit_requests=100_000)
            key = await orgs.create_key(self.pool, self.org_id, ["admin", "read", "write"])
            self.headers = {"Authorization": f"Bearer {key}"}
        base = f"/orgs/{self.org_id}/broadcasts"
        r = await self.client.post(
            base, headers=self.headers, json={"name": "r", "type": "transactional", "variables": [{"name": "otp"}]}
        )
        broadcast_id: str = (await r.json())["id"]
        r = await self.client.post(f"{base}/{broadcast_id}/templates", headers=self.headers, json=template)
        assert r.status == 201, await r.text()
        r = await self.client.post(f"{base}/{broadcast_id}/activate", headers=self.headers)
        assert r.status == 200, await r.text()
        return broadcast_id

    async def burst(self, broadcast_id: str, recipients: list[dict[str, Any]]) -> list[str]:
        sem = asyncio.Semaphore(20)

        async def one(i: int, to: dict[str, Any]) -> str:
            async with sem:
                r = await self.client.post(
                    f"/orgs/{self.org_id}/broadcasts/{broadcast_id}/send",
                    headers=self.headers,
                    json={**to, "variables": {"otp": str(i)}, "background": True},
                )
                assert r.status == 202, await r.text()
                message_id: str = (await r.json())["recipients"][0]["id"]
                return message_id

        return list(await asyncio.gather(*(one(i, to) for i, to in enumerate(recipients))))

    async def settle(self, ids: list[str], timeout_s: float) -> list[asyncpg.Record]:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = await self.pool.fetch("SELECT status, attempts, error FROM messages WHERE id = ANY($1::uuid[])", ids)
            if all(r["status"] in ("sent", "failed") for r in rows) or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.05)

    async def claims(self, ids: list[str]) -> int:
        """`sending` events of these messages: one per claim (a message given back and claimed
        again would have two)."""
        count: int = await self.pool.fetchval(
            "SELECT count(*) FROM message_events WHERE message_id = ANY($1::uuid[]) AND status = 'sending'", ids
        )
        return count

    def delivered_by_each_worker(self) -> list[bool]:
        return ['"delivered"' in w.log_path.read_text() for w in self.workers]


@pytest.fixture
async def stack(settings: Settings, admin_dsn: str, tmp_path: Path) -> AsyncIterator[Stack]:
    run_id = uuid.uuid4().hex[:8]
    db_name = f"tidings_relays_{run_id}"
    database_url = await create_database(admin_dsn, db_name)
    await migrate(database_url)
    pool = await db.create_pool(database_url, min_size=1, max_size=5)
    own = settings.replace(
        database_url=database_url,
        queue_name=f"tidings-relays:{run_id}:queue",
        redis_prefix=f"tidings-relays:{run_id}:",
        log_level="INFO",
    )
    try:
        async with TestClient(TestServer(create_app(own))) as client:
            s = Stack(own, client, pool, tmp_path)
            try:
                yield s
            finally:
                for w in s.workers:
                    await w.stop(timeout_s=10)
                redis = Redis.from_url(own.redis_url)
                keys = [k async for k in redis.scan_iter(match=f"tidings-relays:{run_id}:*")]
                if keys:
                    await redis.delete(*keys)
                await redis.aclose()
    finally:
        await pool.close()
        await drop_database(admin_dsn, db_name)


async def test_the_first_relay_refusing_every_message_arrives_at_the_second_without_a_retry(stack: Stack) -> None:
    sink = await start_smtp("127.0.0.1", 0)
    try:
        relays = f"smtp://127.0.0.1:{closed_port()}?tls=none,smtp://127.0.0.1:{sink.port}?tls=none"
        await stack.start_workers(stack.settings.replace(smtp_relays=relays), n=1)
        broadcast_id = await stack.broadcast(EMAIL_TEMPLATE)
        recipients = [{"email": f"failover-{i}-{uuid.uuid4().hex[:6]}@example.com"} for i in range(30)]
        ids = await stack.burst(broadcast_id, recipients)
        rows = await stack.settle(ids, timeout_s=30)
        assert [(r["status"], r["attempts"], r["error"]) for r in rows] == [("sent", 1, None)] * len(ids)
        received = {rcpt for m in sink.messages for rcpt in m.rcpt_tos}
        assert received == {r["email"] for r in recipients}
        assert await stack.claims(ids) == len(ids)
    finally:
        await sink.close()


async def test_a_relay_ceiling_holds_across_two_worker_processes(stack: Stack) -> None:
    sink = await start_smtp("127.0.0.1", 0, max_messages=10_000)
    try:
        relays = f"smtp://127.0.0.1:{sink.port}?tls=none&max_per_s=20"
        await stack.start_workers(stack.settings.replace(smtp_relays=relays), n=2)
        broadcast_id = await stack.broadcast(EMAIL_TEMPLATE)
        recipients = [{"email": f"ceiling-{i}-{uuid.uuid4().hex[:6]}@example.com"} for i in range(200)]
        started = time.monotonic()
        ids = await stack.burst(broadcast_id, recipients)
        arrived = asyncio.ensure_future(sink.wait_for(200, timeout_s=40))
        most_held = 0
        while not arrived.done():
            held = await stack.pool.fetchval("SELECT count(*) FROM messages WHERE status = 'sending'")
            most_held = max(most_held, held)
            await asyncio.wait([arrived], timeout=0.2)
        await arrived
        elapsed_s = time.monotonic() - started
        # Each worker holds what its share sends in about 2 s, not all it could claim (200).
        assert most_held <= 100, most_held
        # 20 a second for both workers together (each alone would allow 20): at least 9.5 s.
        assert elapsed_s >= 9.5, elapsed_s
        rows = await stack.settle(ids, timeout_s=10)
        # Waiting for a token is no attempt, and nothing was given back and claimed again.
        assert [(r["status"], r["attempts"], r["error"]) for r in rows] == [("sent", 1, None)] * len(ids)
        assert await stack.claims(ids) == len(ids)
        assert stack.delivered_by_each_worker() == [True, True]
    finally:
        await sink.close()


async def test_the_whatsapp_ceiling_holds_across_two_worker_processes(stack: Stack) -> None:
    await stack.start_workers(stack.settings.replace(whatsapp_max_per_s=10.0), n=2)
    broadcast_id = await stack.broadcast(WHATSAPP_TEMPLATE)
    started = time.monotonic()
    ids = await stack.burst(broadcast_id, [{"phone": unique_phone()} for _ in range(40)])
    rows = await stack.settle(ids, timeout_s=30)
    elapsed_s = time.monotonic() - started
    assert [(r["status"], r["attempts"], r["error"]) for r in rows] == [("sent", 1, None)] * len(ids)
    # One token at once, then 10 a second across both workers: the 40th leaves 3.9 s after the first.
    assert elapsed_s >= 3.5, elapsed_s
    assert await stack.claims(ids) == len(ids)


async def test_a_worker_cut_off_from_redis_keeps_sending_at_its_share(stack: Stack) -> None:
    # Its Redis is unreachable from the start: it counts itself alone (the whole ceiling), and
    # never waits on Redis for a token.
    cut_off = stack.settings.replace(redis_url=f"redis://127.0.0.1:{closed_port()}/0", whatsapp_max_per_s=10.0)
    await stack.start_workers(cut_off, n=1)
    broadcast_id = await stack.broadcast(WHATSAPP_TEMPLATE)
    started = time.monotonic()
    ids = await stack.burst(broadcast_id, [{"phone": unique_phone()} for _ in range(12)])
    rows = await stack.settle(ids, timeout_s=30)
    assert [(r["status"], r["attempts"], r["error"]) for r in rows] == [("sent", 1, None)] * len(ids)
    assert time.monotonic() - started >= 1.0  # 10 a second, locally
    assert "throughput_local_share" in stack.workers[0].log_path.read_text()
