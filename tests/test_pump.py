"""Delivery from Postgres: the claim (`claim_due`, SKIP LOCKED), scheduled messages, the
pump's idle check, and the api's waiter that merges a send's outcomes reported in pieces.

The claim tests run in a database of their own, so that the session's worker (which pumps
the session database) cannot take their messages; they call the claim statements directly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis

from shared import db, orgs, sending
from shared.config import Settings
from shared.redis_keys import RedisKeys
from shared.send_waiter import SendWaiter
from shared.sql import Q
from tests.helpers import EMAIL_TEMPLATE, eventually, make_broadcast, own_database_pool, unique_email
from tidings.dev.embedded import database_dsn
from worker.context import WorkerContext, open_channels
from worker.pump import Pump

LEASE_S = 60.0
# Generous bounds on waiting for something to happen; nothing here asserts on speed.
DEADLINE_S = 30.0

CONTENT: dict[str, Any] = {
    "from_email": "pump@tidings.test",
    "from_name": "Tidings",
    "subject": "Code {{ otp }}",
    "html_body": "<p>Your code is {{ otp }}.</p>",
}


@pytest.fixture
async def own_pool(admin_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A migrated database of this test's own, dropped afterwards."""
    async with own_database_pool(admin_dsn, "tidings_pump_", min_size=2, max_size=5) as pool:
        yield pool


async def insert_messages(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    per_send: list[int],
    *,
    status: str = "queued",
    queue_at_sql: str | None = None,
    to: str = "someone@example.com",
    notify: bool = False,
) -> list[uuid.UUID]:
    """Commit sends with `per_send[i]` messages each (inline email content, as the
    Transactionals API writes them) and their first event; returns the message ids."""
    message_ids: list[uuid.UUID] = []
    async with pool.acquire() as conn, conn.transaction():
        queue_at = await conn.fetchval(f"SELECT {queue_at_sql}") if queue_at_sql else None
        for n in per_send:
            send_id = uuid.uuid4()
            await conn.execute(
                Q.insert_send, send_id, org_id, None, None, "api", f"req-{send_id.hex[:8]}", {"otp": "123456"}
            )
            if notify:
                await conn.execute("UPDATE sends SET notify = true WHERE id = $1", send_id)
            for _ in range(n):
                message_id = uuid.uuid4()
                await conn.execute(
                    Q.insert_transactional_message,
                    message_id,
                    send_id,
                    org_id,
                    None,
                    None,
                    to,
                    status,
                    None,
                    CONTENT,
                    queue_at,
                    False,
                )
                message_ids.append(message_id)
        await conn.execute(Q.insert_events, message_ids, [status] * len(message_ids), [None] * len(message_ids))
    return message_ids


async def events_of(pool: asyncpg.Pool, message_id: uuid.UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT status::text, at FROM message_events WHERE message_id = $1 ORDER BY id", message_id
    )
    return rows


async def assert_claimed_once(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> None:
    rows = await pool.fetch(
        "SELECT m.status::text AS status, m.attempts, m.lease_expires_at > now() AS leased,"
        " (SELECT count(*) FROM message_events e WHERE e.message_id = m.id AND e.status = 'sending') AS sending_events"
        " FROM messages m WHERE m.id = ANY($1::uuid[])",
        ids,
    )
    assert len(rows) == len(ids)
    for row in rows:
        assert row["status"] == "sending", dict(row)
        assert row["attempts"] == 1, dict(row)
        assert row["leased"], dict(row)
        assert row["sending_events"] == 1, dict(row)


async def test_concurrent_claims_never_take_the_same_message(own_pool: asyncpg.Pool) -> None:
    org_id = await orgs.create_org(own_pool, "pump claims")
    ids = await insert_messages(own_pool, org_id, [4] * 50)  # 200 messages of 50 sends
    assert len(ids) == 200

    async with own_pool.acquire() as a, own_pool.acquire() as b:

        async def claim(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(Q.claim_due, 150, LEASE_S)
            return rows

        rows_a, rows_b = await asyncio.wait_for(asyncio.gather(claim(a), claim(b)), DEADLINE_S)

    ids_a = [r["id"] for r in rows_a]
    ids_b = [r["id"] for r in rows_b]
    assert len(set(ids_a)) == len(ids_a) and len(set(ids_b)) == len(ids_b)
    assert not set(ids_a) & set(ids_b)
    assert len(ids_a) <= 150 and len(ids_b) <= 150
    assert set(ids_a) | set(ids_b) == set(ids)
    # What the pump needs comes back with each row.
    for row in [*rows_a, *rows_b]:
        assert row["attempts"] == 1
        assert row["notify"] is False
        assert row["request_id"].startswith("req-")
        assert row["variables"] == {"otp": "123456"}
        assert row["content"] == CONTENT and row["template_body"] is None
    await assert_claimed_once(own_pool, ids)
    # Nothing is left to claim, and a further claim takes nothing twice.
    assert await own_pool.fetch(Q.claim_due, 150, LEASE_S) == []
    assert await own_pool.fetchval(Q.select_next_due) is None


async def test_a_claim_skips_rows_held_by_an_uncommitted_claim(own_pool: asyncpg.Pool) -> None:
    """The overlap forced: one claim's transaction stays open while the other runs."""
    org_id = await orgs.create_org(own_pool, "pump skip locked")
    ids = await insert_messages(own_pool, org_id, [1] * 200)

    async with own_pool.acquire() as a, own_pool.acquire() as b:
        tx = a.transaction()
        await tx.start()
        try:
            rows_a = await a.fetch(Q.claim_due, 150, LEASE_S)
            assert len(rows_a) == 150
            # Without SKIP LOCKED this would wait on a's row locks until a commits (never).
            rows_b = await asyncio.wait_for(b.fetch(Q.claim_due, 150, LEASE_S), DEADLINE_S)
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()

    ids_a = {r["id"] for r in rows_a}
    ids_b = {r["id"] for r in rows_b}
    assert len(rows_b) == 50
    assert not ids_a & ids_b
    assert ids_a | ids_b == set(ids)
    await assert_claimed_once(own_pool, ids)


async def test_scheduled_message_is_claimed_only_when_due(own_pool: asyncpg.Pool) -> None:
    assert await own_pool.fetchval(Q.select_next_due) is None  # nothing waiting at all
    org_id = await orgs.create_org(own_pool, "pump scheduled")
    (message_id,) = await insert_messages(
        own_pool, org_id, [1], status="scheduled", queue_at_sql="now() + interval '1 hour'"
    )

    assert await own_pool.fetch(Q.claim_due, 10, LEASE_S) == []
    wait_s = await own_pool.fetchval(Q.select_next_due)
    assert wait_s is not None and 3500.0 < wait_s <= 3600.0
    row = await own_pool.fetchrow("SELECT status::text, attempts FROM messages WHERE id = $1", message_id)
    assert row is not None and row["status"] == "scheduled" and row["attempts"] == 0

    # Its time comes a second from now (by the database's clock): claims before it find nothing.
    queue_at = await own_pool.fetchval(
        "UPDATE messages SET queue_at = clock_timestamp() + interval '1 second' WHERE id = $1 RETURNING queue_at",
        message_id,
    )

    async def claimed() -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await own_pool.fetch(Q.claim_due, 10, LEASE_S)
        return rows

    rows = await eventually(claimed, timeout_s=DEADLINE_S, interval_s=0.05)
    assert [r["id"] for r in rows] == [message_id]
    assert rows[0]["attempts"] == 1
    events = await events_of(own_pool, message_id)
    assert [e["status"] for e in events] == ["scheduled", "queued", "sending"]
    assert events[1]["at"] <= events[2]["at"]
    assert events[2]["at"] >= queue_at  # not claimed before its time
    await assert_claimed_once(own_pool, [message_id])
    assert await own_pool.fetchval(Q.select_next_due) is None  # the queue is empty again


async def test_retry_waits_for_its_next_attempt(own_pool: asyncpg.Pool) -> None:
    """A queued message with a next attempt ahead is neither claimed nor lost from sight."""
    org_id = await orgs.create_org(own_pool, "pump retry")
    (message_id,) = await insert_messages(own_pool, org_id, [1])
    await own_pool.execute(
        "UPDATE messages SET next_attempt_at = now() + interval '10 minutes' WHERE id = $1", message_id
    )
    assert await own_pool.fetch(Q.claim_due, 10, LEASE_S) == []
    wait_s = await own_pool.fetchval(Q.select_next_due)
    assert wait_s is not None and 500.0 < wait_s <= 600.0
    await own_pool.execute(
        "UPDATE messages SET next_attempt_at = now() - interval '1 second' WHERE id = $1", message_id
    )
    rows = await own_pool.fetch(Q.claim_due, 10, LEASE_S)
    assert [r["id"] for r in rows] == [message_id]
    assert await own_pool.fetchval("SELECT next_attempt_at FROM messages WHERE id = $1", message_id) is None


async def test_expired_leases_come_back_and_a_stale_claim_changes_nothing(own_pool: asyncpg.Pool) -> None:
    """An expired lease is taken back (queued, or failed once out of attempts), and the
    outcome or release of the claim that lost it is fenced off."""
    org_id = await orgs.create_org(own_pool, "pump leases")
    again, spent = await insert_messages(own_pool, org_id, [1, 1])
    rows = await own_pool.fetch(Q.claim_due, 10, LEASE_S)
    assert {r["id"] for r in rows} == {again, spent}
    await own_pool.execute("UPDATE messages SET attempts = 5 WHERE id = $1", spent)
    await own_pool.execute("UPDATE messages SET lease_expires_at = now() - interval '1 second'")
    assert await own_pool.fetchval(Q.reclaim_expired_leases, 5, 0.0) == 2
    status = dict(await own_pool.fetch("SELECT id, status FROM messages"))
    assert status == {again: "queued", spent: "failed"}
    assert [e["status"] for e in await events_of(own_pool, spent)][-1] == "failed"

    (reclaimed,) = await own_pool.fetch(Q.claim_due, 10, LEASE_S)  # claimed again: attempt 2
    assert reclaimed["id"] == again and reclaimed["attempts"] == 2
    # The first claim (attempt 1) finishing late: its outcome and its release change nothing.
    await own_pool.fetch(Q.record_outcomes, [again], ["sent"], ["x"], [None], [None], [1])
    assert await own_pool.fetchval(Q.release_claims, [again], [1]) == 0
    assert await own_pool.fetchval("SELECT status FROM messages WHERE id = $1", again) == "sending"
    await own_pool.fetch(Q.record_outcomes, [again], ["sent"], ["y"], [None], [None], [2])
    assert await own_pool.fetchval("SELECT external_message_id FROM messages WHERE id = $1", again) == "y"


async def test_send_committed_without_a_ring_is_delivered(
    client: Any, org: Any, pool: asyncpg.Pool, worker: Any, smtp_server: Any
) -> None:
    b = await make_broadcast(client, org)
    # First a send through the api (which rings), so the pump is running and then idle.
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": unique_email("warm"), "variables": {"otp": "1"}},
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["recipients"][0]["status"] == "sent"

    to = unique_email("silent")
    prepared = await sending.prepare(
        pool,
        org.id,
        uuid.UUID(b["id"]),
        sending.Trigger(email=to, variables={"otp": "424242"}),
        source="manual",
        request_id="test-no-doorbell",
    )
    await sending.commit(pool, prepared)  # and no doorbell.ring: only the idle check can find it
    (record,) = prepared.records
    assert record.status == "queued"

    async def sent() -> bool:
        status = await pool.fetchval("SELECT status::text FROM messages WHERE id = $1", record.id)
        return bool(status == "sent")

    await eventually(sent, timeout_s=DEADLINE_S, interval_s=0.05)
    received = [m for m in smtp_server.messages if to in m.rcpt_tos]
    assert len(received) == 1
    assert email.message_from_bytes(received[0].raw)["Subject"] == "Your code is 424242"


@pytest.fixture
async def waiter(settings: Settings) -> AsyncIterator[tuple[SendWaiter, Redis, RedisKeys]]:
    keys = RedisKeys(f"tidings-test-pump:{uuid.uuid4().hex[:8]}:")
    redis = Redis.from_url(settings.redis_url)
    w = SendWaiter(redis, keys)
    await w.start()
    try:
        yield w, redis, keys
    finally:
        await w.close()
        await redis.aclose()


def outcome(status: str = "sent") -> dict[str, Any]:
    return {"status": status, "external_message_id": f"<{uuid.uuid4().hex}@tidings.test>", "error": None}


async def publish(redis: Redis, keys: RedisKeys, send_id: str, payload: dict[str, Any]) -> None:
    receivers = await redis.publish(keys.send_done_channel(send_id), orjson.dumps(payload))
    assert receivers >= 1  # the waiter's subscription heard it


async def sync(w: SendWaiter, redis: Redis, keys: RedisKeys) -> None:
    """Return once the waiter has handled everything published before: pub/sub keeps order."""
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    fut = w.register(marker, ["m"])
    await publish(redis, keys, marker, {"m": outcome()})
    await asyncio.wait_for(fut, DEADLINE_S)


async def test_send_waiter_merges_partial_outcomes(waiter: tuple[SendWaiter, Redis, RedisKeys]) -> None:
    w, redis, keys = waiter
    send_id = str(uuid.uuid4())
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    fut = w.register(send_id, [first, second])

    one = outcome()
    await publish(redis, keys, send_id, {first: one})
    await sync(w, redis, keys)
    assert not fut.done()  # one of two reported: still waiting

    # Another send's outcome does not count towards this one.
    await publish(redis, keys, str(uuid.uuid4()), {second: outcome("failed")})
    await sync(w, redis, keys)
    assert not fut.done()

    two = outcome("failed")
    await publish(redis, keys, send_id, {second: two})
    got = await asyncio.wait_for(fut, DEADLINE_S)
    assert got == {first: one, second: two}


async def test_send_waiter_expect_narrows_to_what_was_reported(waiter: tuple[SendWaiter, Redis, RedisKeys]) -> None:
    w, redis, keys = waiter
    send_id = str(uuid.uuid4())
    kept, rejected = str(uuid.uuid4()), str(uuid.uuid4())
    fut = w.register(send_id, [kept, rejected])
    result = outcome()
    await publish(redis, keys, send_id, {kept: result})
    await sync(w, redis, keys)
    assert not fut.done()
    w.expect(send_id, [kept])  # the commit rejected the other: nothing will come for it
    assert fut.done()
    assert fut.result() == {kept: result}

    # Narrowed before anything was reported: it resolves with the one that is expected.
    later = str(uuid.uuid4())
    fut2 = w.register(later, [kept, rejected])
    w.expect(later, [kept])
    assert not fut2.done()
    await publish(redis, keys, later, {kept: result})
    assert await asyncio.wait_for(fut2, DEADLINE_S) == {kept: result}


async def test_a_send_settled_in_two_batches_reaches_its_waiter_in_two_pieces(
    settings: Settings, own_pool: asyncpg.Pool, smtp_server: Any
) -> None:
    """A real pump taking one message per claim: the send's two messages are delivered by
    two groups, each publishing its part; the api's waiter merges them."""
    run = uuid.uuid4().hex[:8]
    # The pump works on the context's pool (this test's database), not on settings.database_url.
    own_settings = settings.replace(
        redis_prefix=f"tidings-test-pump:{run}:",
        queue_name=f"tidings-test-pump:{run}:queue",
    )
    keys = RedisKeys(own_settings.redis_prefix)
    redis = Redis.from_url(settings.redis_url)
    ctx = WorkerContext(
        settings=own_settings,
        pool=own_pool,
        redis=redis,
        keys=keys,
        channels=open_channels(own_settings),
    )
    w = SendWaiter(redis, keys)
    await w.start()
    pump = Pump(ctx, capacity=2, batch_size=1)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        org_id = await orgs.create_org(own_pool, "pump pieces")
        to = unique_email("pieces")
        ids = await insert_messages(own_pool, org_id, [2], to=to, notify=True)
        send_id = await own_pool.fetchval("SELECT send_id FROM messages WHERE id = $1", ids[0])
        await pubsub.subscribe(keys.send_done_channel(send_id))
        fut = w.register(str(send_id), [str(i) for i in ids])
        await pump.start()
        got = await asyncio.wait_for(fut, DEADLINE_S)
        assert set(got) == {str(i) for i in ids}
        assert all(v["status"] == "sent" for v in got.values())

        pieces: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + DEADLINE_S
        while len(pieces) < 2 and asyncio.get_running_loop().time() < deadline:
            # None: the subscription's confirmation, or nothing yet.
            message = await pubsub.get_message(timeout=1.0)
            if message is not None:
                pieces.append(orjson.loads(message["data"]))
        assert sorted(len(p) for p in pieces) == [1, 1]  # one message per claim, one piece each
        statuses = await own_pool.fetch("SELECT status::text FROM messages WHERE id = ANY($1::uuid[])", ids)
        assert [r["status"] for r in statuses] == ["sent", "sent"]
        assert len([m for m in smtp_server.messages if to in m.rcpt_tos]) == 2
    finally:
        await pump.stop(5.0)
        await ctx.close()
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        await w.close()
        await redis.aclose()


async def test_background_false_with_two_templates_answers_both_sent(
    client: Any, org: Any, worker: Any, smtp_server: Any
) -> None:
    second = {**EMAIL_TEMPLATE, "subject": "Second copy: {{ otp }}"}
    b = await make_broadcast(client, org, templates=[EMAIL_TEMPLATE, second])
    to = unique_email("both")
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": to, "variables": {"otp": "909090"}, "background": False},
    )
    assert r.status == 200, await r.text()
    recs = (await r.json())["recipients"]
    assert len(recs) == 2
    assert [x["status"] for x in recs] == ["sent", "sent"]
    assert all(x["external_message_id"] and x["to"] == to for x in recs)
    assert len({x["template_id"] for x in recs}) == 2
    subjects = sorted(email.message_from_bytes(m.raw)["Subject"] for m in smtp_server.messages if to in m.rcpt_tos)
    assert subjects == ["Second copy: 909090", "Your code is 909090"]


async def test_a_reclaimed_message_waits_for_the_worker_that_still_holds_it(own_pool: asyncpg.Pool) -> None:
    """Leases also expire while Postgres is away with their worker alive. A reclaimed message
    is due only after the grace, and until someone claims it again the worker that held it
    can still write its outcome (it went out) or take it back (it is still sending it)."""
    org_id = await orgs.create_org(own_pool, "pump reclaim grace")
    sent_late, still_sending, spent = await insert_messages(own_pool, org_id, [1, 1, 1])
    rows = await own_pool.fetch(Q.claim_due, 10, LEASE_S)
    assert {r["id"] for r in rows} == {sent_late, still_sending, spent}
    await own_pool.execute("UPDATE messages SET attempts = 5 WHERE id = $1", spent)
    await own_pool.execute("UPDATE messages SET lease_expires_at = now() - interval '1 second'")
    assert await own_pool.fetchval(Q.reclaim_expired_leases, 5, 60.0) == 3
    status = dict(await own_pool.fetch("SELECT id, status::text FROM messages"))
    assert status == {sent_late: "queued", still_sending: "queued", spent: "failed"}
    # Not due before the grace is over: nobody claims them meanwhile.
    assert await own_pool.fetch(Q.claim_due, 10, LEASE_S) == []

    # The holder is back: the outcome of the one it sent lands, fenced by the same attempt...
    await own_pool.fetch(
        Q.record_outcomes, [sent_late, spent], ["sent"] * 2, ["a", "c"], [None] * 2, [None] * 2, [1, 5]
    )
    row = await own_pool.fetchrow(
        "SELECT status::text, external_message_id, lease_expires_at FROM messages WHERE id = $1", sent_late
    )
    assert row is not None and dict(row) == {"status": "sent", "external_message_id": "a", "lease_expires_at": None}
    assert await own_pool.fetchval("SELECT status::text FROM messages WHERE id = $1", spent) == "sent"
    # ... and only once: the same write again (a retry after an unknown result) changes nothing.
    assert await own_pool.fetch(Q.record_outcomes, [sent_late], ["sent"], ["b"], [None], [None], [1]) == []
    assert [e["status"] for e in await events_of(own_pool, sent_late)] == ["queued", "sending", "queued", "sent"]

    # The one still at the provider is taken back by the holder's renewal, and logged so.
    assert await own_pool.fetchval(Q.renew_leases, [still_sending, sent_late], [1, 1], LEASE_S) == 1
    row = await own_pool.fetchrow(
        "SELECT status::text, next_attempt_at, error, lease_expires_at > now() AS leased FROM messages WHERE id = $1",
        still_sending,
    )
    assert row is not None and dict(row) == {
        "status": "sending",
        "next_attempt_at": None,
        "error": None,
        "leased": True,
    }
    assert [e["status"] for e in await events_of(own_pool, still_sending)] == ["queued", "sending", "queued", "sending"]
    # A renewal of a lease that is still its own takes nothing back.
    assert await own_pool.fetchval(Q.renew_leases, [still_sending], [1], LEASE_S) == 0

    # Once claimed again by someone else, the old claim's outcome and renewal are fenced off.
    await own_pool.execute(
        "UPDATE messages SET lease_expires_at = now() - interval '1 second' WHERE id = $1", still_sending
    )
    assert await own_pool.fetchval(Q.reclaim_expired_leases, 5, 0.0) == 1
    (again,) = await own_pool.fetch(Q.claim_due, 10, LEASE_S)
    assert again["id"] == still_sending and again["attempts"] == 2
    assert await own_pool.fetchval(Q.renew_leases, [still_sending], [1], LEASE_S) == 0
    assert await own_pool.fetch(Q.record_outcomes, [still_sending], ["sent"], ["x"], [None], [None], [1]) == []
    assert await own_pool.fetchval("SELECT attempts FROM messages WHERE id = $1", still_sending) == 2


class ProxiedPump:
    """A real pump on this test's database through a TcpProxy the test cuts, sending to an
    SMTP server of its own that takes SMTP_LATENCY_S per message, four connections at once."""

    SMTP_LATENCY_S = 0.3

    def __init__(self, pump: Pump, ctx: WorkerContext, proxy: Any, smtp: Any) -> None:
        self.pump, self.ctx, self.proxy, self.smtp = pump, ctx, proxy, smtp

    def received(self) -> collections.Counter[str]:
        """Message ids received by the SMTP server, each with how many times (the Message-ID
        is <message id@domain>)."""
        return collections.Counter(email.message_from_bytes(m.raw)["Message-ID"][1:37] for m in self.smtp.messages)


@contextlib.asynccontextmanager
async def proxied_pump(settings: Settings, own_pool: asyncpg.Pool, admin_dsn: str) -> AsyncIterator[ProxiedPump]:
    from tests.test_faults import TcpProxy
    from tidings.dev.inbox import start_smtp

    smtp = await start_smtp("127.0.0.1", 0)
    receive = smtp.handler.handle_DATA

    async def slow(server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(ProxiedPump.SMTP_LATENCY_S)
        return str(await receive(server, session, envelope))

    smtp.handler.handle_DATA = slow
    name = await own_pool.fetchval("SELECT current_database()")
    proxy, proxied = await TcpProxy.to_postgres(database_dsn(admin_dsn, name))
    run = uuid.uuid4().hex[:8]
    own_settings = settings.replace(
        redis_prefix=f"tidings-test-pump:{run}:",
        queue_name=f"tidings-test-pump:{run}:queue",
        smtp_port=smtp.port,
        smtp_pool_size=4,
        lease_s=1.5,
        retry_max_attempts=5,
    )
    redis = Redis.from_url(settings.redis_url)
    pump_pool = await db.create_pool(proxied, min_size=1, max_size=4)
    ctx = WorkerContext(
        settings=own_settings,
        pool=pump_pool,
        redis=redis,
        keys=RedisKeys(own_settings.redis_prefix),
        channels=open_channels(own_settings),
    )
    pump = Pump(ctx, capacity=20, batch_size=20)
    try:
        yield ProxiedPump(pump, ctx, proxy, smtp)
    finally:
        await proxy.resume()  # whatever the test left cut, so that the stop below is quick
        await pump.stop(5.0)
        await ctx.close()
        await pump_pool.close()
        await redis.aclose()
        await proxy.close()
        await smtp.close()


async def insert_to_distinct_addresses(pool: asyncpg.Pool, n: int, tag: str) -> list[uuid.UUID]:
    org_id = await orgs.create_org(pool, tag)
    ids: list[uuid.UUID] = []
    for i in range(n):
        ids += await insert_messages(pool, org_id, [1], to=f"{tag.replace(' ', '-')}-{i}@example.com")
    return ids


async def test_a_pump_cut_off_from_postgres_past_its_lease_sends_nothing_twice(
    settings: Settings, own_pool: asyncpg.Pool, admin_dsn: str
) -> None:
    """A real pump whose Postgres goes away for longer than its lease while it sends through
    a slow SMTP server; another worker's reconciler reclaims its messages meanwhile. Back, the
    pump writes the outcomes it kept and takes back what it still sends: each message goes
    out once, and the pump claims nothing before it has caught up."""
    async with proxied_pump(settings, own_pool, admin_dsn) as p:
        ids = await insert_to_distinct_addresses(own_pool, 40, "pump outage")
        await p.pump.start()
        await p.smtp.wait_for(8, timeout_s=DEADLINE_S)
        await p.proxy.cut()
        await asyncio.sleep(p.ctx.settings.lease_s + 1.0)  # every lease held has expired
        # Another worker's reconciler, which still reaches Postgres, takes them back.
        reclaimed = await own_pool.fetchval(Q.reclaim_expired_leases, p.ctx.settings.retry_max_attempts, 30.0)
        assert reclaimed > 0
        await asyncio.sleep(2.5)  # past the 3.5 s after which outcome writes used to give up
        await p.proxy.resume()

        async def all_sent() -> bool:
            n = await own_pool.fetchval("SELECT count(*) FROM messages WHERE id = ANY($1) AND status = 'sent'", ids)
            return bool(n == len(ids))

        # Within the grace (30 s): what was reclaimed is written or taken back, never claimed again.
        await eventually(all_sent, timeout_s=DEADLINE_S, interval_s=0.1)
        received = p.received()
        assert {str(i): 1 for i in ids} == dict(received), [k for k, n in received.items() if n > 1]
        attempts = await own_pool.fetch("SELECT attempts FROM messages WHERE id = ANY($1)", ids)
        assert {r["attempts"] for r in attempts} == {1}
        taken_back = await own_pool.fetchval(
            "SELECT count(*) FROM message_events WHERE message_id = ANY($1) AND detail LIKE 'taken back%'", ids
        )
        print(f"\n[pump outage] reclaimed while cut off: {reclaimed}, taken back: {taken_back}, sent once: {len(ids)}")


async def test_a_pump_stopped_while_postgres_is_away_writes_what_it_sent_once_it_is_back(
    settings: Settings, own_pool: asyncpg.Pool, admin_dsn: str
) -> None:
    """SIGTERM while Postgres is away, back within the drain: the pump keeps trying, writes
    the outcome of every message it sent, gives back only what it never sent, and none is
    left `sending` (to be sent again when its lease expires)."""
    async with proxied_pump(settings, own_pool, admin_dsn) as p:
        ids = await insert_to_distinct_addresses(own_pool, 40, "pump stop outage")
        await p.pump.start()
        await p.smtp.wait_for(4, timeout_s=DEADLINE_S)
        await p.proxy.cut()
        # The claims in hand (20, four at a time at the server) all finish within the drain.
        stopping = asyncio.create_task(p.pump.stop(10.0))
        await asyncio.sleep(5.0)  # past the 3.5 s after which outcome writes used to give up
        assert not stopping.done()  # still trying to write what it sent
        await p.proxy.resume()
        await asyncio.wait_for(stopping, DEADLINE_S)
        rows = await own_pool.fetch("SELECT id::text, status::text FROM messages WHERE id = ANY($1)", ids)
        status = {r["id"]: r["status"] for r in rows}
        received = p.received()
        assert {i for i, s in status.items() if s == "sent"} == set(received), status
        assert set(status.values()) <= {"sent", "queued"}, status
        assert max(received.values()) == 1


async def test_a_pump_stopped_while_postgres_stays_away_ends_within_its_drain(
    settings: Settings, own_pool: asyncpg.Pool, admin_dsn: str
) -> None:
    """Postgres never comes back: outcome writes, retried without end while the worker runs,
    give up at the end of the drain (plus STOP_WRITE_MIN_S), so a stop never hangs."""
    from worker.pump import STOP_WRITE_MIN_S

    async with proxied_pump(settings, own_pool, admin_dsn) as p:
        await insert_to_distinct_addresses(own_pool, 10, "pump stop dead")
        await p.pump.start()
        await p.smtp.wait_for(2, timeout_s=DEADLINE_S)
        await p.proxy.cut()
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(p.pump.stop(1.0), DEADLINE_S)
        elapsed_s = asyncio.get_running_loop().time() - started
        assert elapsed_s < 1.0 + STOP_WRITE_MIN_S + 2.0, elapsed_s
