"""Messages and their events partitioned by time (shared/migrations/0017, shared/partitions.py):
an expired partition is dropped with exactly its messages, their events and transactionals,
and nothing else; one still holding a message that may go out is kept; partitions are made
ahead; and each hot-path statement (shared/sql, run as the service runs it) reads only the
partitions it needs, each through an index.

Each test has a database of its own: dropping partitions of the session's database would take
other tests' rows (and the partition their backdated rows go to) with them."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from shared import ids, messages, partitions
from shared.sql import Q
from tests.helpers import own_database_pool
from tests.test_search import partition_index_parents

DAY = dt.timedelta(days=1)
WEEK = dt.timedelta(days=7)
# Rows per past partition for the plan tests: enough that the planner reads a partition
# through its index rather than whole.
FILL_ROWS = 4_000


@pytest.fixture
async def own_pool(admin_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    async with own_database_pool(admin_dsn, "tidings_part_", min_size=1, max_size=4) as pool:
        yield pool


def this_week() -> dt.datetime:
    """Monday 00:00 UTC of this week: where the migration's first weekly partition begins."""
    now = dt.datetime.now(dt.UTC)
    return dt.datetime.combine(now.date() - dt.timedelta(days=now.weekday()), dt.time(), tzinfo=dt.UTC)


async def weeks_back(pool: asyncpg.Pool, n: int) -> list[str]:
    """Re-cut the (empty) partition below the weeks into n weekly partitions before this week
    and one below them: names of the weekly ones, oldest first."""
    w0 = this_week()
    await pool.execute("ALTER TABLE messages DETACH PARTITION messages_p_min")
    await pool.execute("ALTER TABLE message_events DETACH PARTITION message_events_p_min")
    await pool.execute("DROP TABLE messages_p_min, message_events_p_min")
    first = w0 - n * WEEK
    await pool.execute(
        f"CREATE TABLE messages_p_min PARTITION OF messages FOR VALUES FROM (MINVALUE) TO ('{first.isoformat()}')"
    )
    await pool.execute(
        "CREATE TABLE message_events_p_min PARTITION OF message_events"
        f" FOR VALUES FROM (MINVALUE) TO ('{first.isoformat()}')"
    )
    names = []
    for i in range(n):
        lower, upper = first + i * WEEK, first + (i + 1) * WEEK
        suffix = lower.strftime("%Y%m%d")
        for parent, prefix in (("messages", "messages_p"), ("message_events", "message_events_p")):
            await pool.execute(
                f"CREATE TABLE {prefix}{suffix} PARTITION OF {parent}"
                f" FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
            )
        names.append(f"messages_p{suffix}")
    return names


async def new_org(pool: asyncpg.Pool) -> tuple[uuid.UUID, uuid.UUID]:
    org_id, send_id = uuid.uuid4(), uuid.uuid4()
    await pool.execute("INSERT INTO orgs (id, name) VALUES ($1, 'partitions')", org_id)
    await pool.execute(
        "INSERT INTO sends (id, org_id, source, variables) VALUES ($1, $2, 'api', '{}')", send_id, org_id
    )
    return org_id, send_id


async def add_message(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    send_id: uuid.UUID,
    at: dt.datetime,
    *,
    status: str = "sent",
    transactional: bool = False,
    v4: bool = False,
) -> uuid.UUID:
    """A message accepted at `at` (its id's time, as the service writes it; a v4 id: an old
    message written before 0017), with a timeline of two events, and a transactional row."""
    mid = uuid.uuid4() if v4 else ids.new_message_id(at.timestamp())
    await pool.execute(
        "INSERT INTO messages (id, send_id, org_id, channel, to_address, status, source, created_at)"
        " VALUES ($1, $2, $3, 'email', 'p@example.com', $4, 'api', $5)",
        mid,
        send_id,
        org_id,
        status,
        at if v4 else await pool.fetchval("SELECT uuid_v7_time($1)", mid),
    )
    await pool.execute(Q.insert_events, [mid, mid], ["sending", "sent"], [None, None])
    if transactional:
        await pool.execute(
            "INSERT INTO transactionals"
            " (id, org_id, recipient_email, include_unsubscribe_link, double_opt_in, queue_at)"
            " VALUES ($1, $2, 'p@example.com', false, false, now())",
            mid,
            org_id,
        )
    return mid


async def present(pool: asyncpg.Pool, mids: list[uuid.UUID]) -> dict[str, set[uuid.UUID]]:
    return {
        "messages": {r[0] for r in await pool.fetch("SELECT id FROM messages WHERE id = ANY($1)", mids)},
        "events": {
            r[0] for r in await pool.fetch("SELECT message_id FROM message_events WHERE message_id = ANY($1)", mids)
        },
        "transactionals": {r[0] for r in await pool.fetch("SELECT id FROM transactionals WHERE id = ANY($1)", mids)},
    }


async def event_partitions(pool: asyncpg.Pool) -> set[str]:
    rows = await pool.fetch("SELECT relname FROM pg_class WHERE relname LIKE 'message_events_p%' AND relkind = 'r'")
    return {r[0] for r in rows}


def history_days_cutting_at(week_start: dt.datetime) -> int:
    """MESSAGE_HISTORY_DAYS that expires every partition ending at or before `week_start`
    and none ending a week later (the cut-off falls inside the week after it)."""
    now = dt.datetime.now(dt.UTC)
    return (now - week_start).days


# ---- Dropping ----


async def test_dropping_an_expired_partition_removes_exactly_its_messages(own_pool: asyncpg.Pool) -> None:
    pool = own_pool
    w3, w2, w1 = await weeks_back(pool, 3)
    org_id, send_id = await new_org(pool)
    w0 = this_week()
    mid = dt.timedelta(days=3, hours=12)
    expired = [
        await add_message(pool, org_id, send_id, w0 - 5 * WEEK),  # below the weeks
        await add_message(pool, org_id, send_id, w0 - 3 * WEEK + mid, transactional=True),
        await add_message(pool, org_id, send_id, w0 - 2 * WEEK + mid, transactional=True),
        await add_message(pool, org_id, send_id, w0 - 2 * WEEK + mid, v4=True),
        # The last moment of the newest expired week.
        await add_message(pool, org_id, send_id, w0 - WEEK - dt.timedelta(milliseconds=1)),
    ]
    kept = [
        # The first moment of the oldest kept week.
        await add_message(pool, org_id, send_id, w0 - WEEK, transactional=True),
        await add_message(pool, org_id, send_id, w0 - WEEK + mid, v4=True),
        await add_message(pool, org_id, send_id, dt.datetime.now(dt.UTC), transactional=True),
    ]
    before = await present(pool, expired + kept)
    assert before["messages"] == set(expired + kept) and before["events"] == set(expired + kept)

    out = await partitions.drop_expired(pool, history_days_cutting_at(w0 - WEEK))

    assert sorted(out.dropped) == sorted(["messages_p_min", w3, w2]) and not out.kept and not out.busy
    after = await present(pool, expired + kept)
    assert after["messages"] == set(kept)
    assert after["events"] == set(kept)
    assert after["transactionals"] == before["transactionals"] - set(expired)
    # Nothing else: the kept messages' timelines are whole, the send is still there, and the
    # partitions left are the kept week onwards (the events' with them).
    assert await pool.fetchval("SELECT count(*) FROM message_events WHERE message_id = ANY($1)", kept) == 2 * len(kept)
    assert await pool.fetchval("SELECT count(*) FROM sends WHERE id = $1", send_id) == 1
    names = [r["name"] for r in await partitions.listing(pool)]
    assert names[0] == w1 and not {"messages_p_min", w3, w2} & set(names)
    events = await event_partitions(pool)
    assert events == {"message_events_" + n.removeprefix("messages_") for n in names}
    # Running again drops nothing more.
    again = await partitions.drop_expired(pool, history_days_cutting_at(w0 - WEEK))
    assert again.dropped == [] and await present(pool, kept) == after


async def test_a_partition_holding_an_unsettled_message_is_kept(own_pool: asyncpg.Pool) -> None:
    pool = own_pool
    w2, w1 = await weeks_back(pool, 2)
    org_id, send_id = await new_org(pool)
    w0 = this_week()
    settled = await add_message(pool, org_id, send_id, w0 - 2 * WEEK + DAY)
    for status in ("queued", "scheduled", "sending"):
        waiting = await add_message(pool, org_id, send_id, w0 - 2 * WEEK + 2 * DAY, status=status)
        out = await partitions.drop_expired(pool, history_days_cutting_at(w0 - WEEK))
        # The week is kept whole, and the one below it (empty) goes.
        assert out.kept == {w2: 1} and out.dropped == ["messages_p_min"], (status, out)
        assert (await present(pool, [settled, waiting]))["messages"] == {settled, waiting}
        await pool.execute("UPDATE messages SET status = 'failed' WHERE id = $1", waiting)
        out = await partitions.drop_expired(pool, history_days_cutting_at(w0 - WEEK))
        assert out.dropped == [w2] and not out.kept, out
        assert (await present(pool, [settled, waiting]))["messages"] == set()
        # The next round: the same week again, made anew.
        await pool.execute(
            f"CREATE TABLE {w2} PARTITION OF messages FOR VALUES FROM ('{(w0 - 2 * WEEK).isoformat()}')"
            f" TO ('{(w0 - WEEK).isoformat()}')"
        )
        await pool.execute(
            f"CREATE TABLE message_events_{w2.removeprefix('messages_')} PARTITION OF message_events"
            f" FOR VALUES FROM ('{(w0 - 2 * WEEK).isoformat()}') TO ('{(w0 - WEEK).isoformat()}')"
        )
        await pool.execute(
            f"CREATE TABLE messages_p_min PARTITION OF messages FOR VALUES FROM (MINVALUE)"
            f" TO ('{(w0 - 2 * WEEK).isoformat()}')"
        )
        await pool.execute(
            f"CREATE TABLE message_events_p_min PARTITION OF message_events FOR VALUES FROM (MINVALUE)"
            f" TO ('{(w0 - 2 * WEEK).isoformat()}')"
        )
        settled = await add_message(pool, org_id, send_id, w0 - 2 * WEEK + DAY)
    assert w1 in [r["name"] for r in await partitions.listing(pool)]


async def test_partitions_are_made_ahead(own_pool: asyncpg.Pool, settings: Any) -> None:
    pool = own_pool
    before = await partitions.listing(pool)
    # The migration made four weeks ahead.
    assert before[-1]["upper_bound"] >= dt.datetime.now(dt.UTC) + dt.timedelta(days=28)
    made = await partitions.make_ahead(pool, 7, 70)
    assert made >= 5
    after = await partitions.listing(pool)
    assert after[-1]["upper_bound"] >= dt.datetime.now(dt.UTC) + dt.timedelta(days=70)
    # Contiguous: each begins where the one before ends, a week wide, events beside them.
    for lower, upper in itertools.pairwise(after):
        assert upper["lower_bound"] == lower["upper_bound"]
        assert upper["upper_bound"] - upper["lower_bound"] == WEEK
    events = await event_partitions(pool)
    assert events == {"message_events_" + r["name"].removeprefix("messages_") for r in after}
    assert await partitions.make_ahead(pool, 7, 70) == 0
    # A message accepted far ahead (a clock set wrong) lands in its partition, with its events.
    org_id, send_id = await new_org(pool)
    far = await add_message(pool, org_id, send_id, dt.datetime.now(dt.UTC) + dt.timedelta(days=60))
    assert (await present(pool, [far]))["events"] == {far}
    # Another width from then on: the next partitions are that wide.
    assert await partitions.make_ahead(pool, 3, 80) >= 3
    last = (await partitions.listing(pool))[-1]
    assert last["upper_bound"] - last["lower_bound"] == dt.timedelta(days=3)
    # The reconciler's settings: a week, four ahead, 180 days of history.
    assert (settings.message_partition_days, settings.message_partitions_ahead_days) == (7, 28)
    assert settings.message_history_days == 180


async def test_the_reconciler_makes_and_drops(own_pool: asyncpg.Pool, settings: Any, monkeypatch: Any) -> None:
    import worker.reconcile as reconcile
    from worker.context import WorkerContext

    pool = own_pool
    await weeks_back(pool, 1)
    org_id, send_id = await new_org(pool)
    old = await add_message(pool, org_id, send_id, this_week() - 2 * WEEK)
    calls: list[str] = []
    real_make, real_drop = partitions.make_ahead, partitions.drop_expired

    async def make(pool: asyncpg.Pool, width: int, ahead: int) -> int:
        calls.append(f"make {width} {ahead}")
        return await real_make(pool, width, ahead)

    async def drop(pool: asyncpg.Pool, days: int) -> partitions.Dropped:
        calls.append(f"drop {days}")
        return await real_drop(pool, days)

    monkeypatch.setattr(partitions, "make_ahead", make)
    monkeypatch.setattr(partitions, "drop_expired", drop)
    monkeypatch.setattr(reconcile, "_last_run_s", {})
    ctx = WorkerContext.__new__(WorkerContext)
    ctx.pool = pool
    ctx.settings = settings.replace(message_partitions_ahead_days=50, message_history_days=1)
    ctx.redis = None
    ctx.keys = None
    monkeypatch.setattr(reconcile.doorbell, "ring", _no_ring)
    await reconcile.reconcile({"tidings": ctx})
    assert calls == ["make 7 50", "drop 1"]
    assert (await present(pool, [old]))["messages"] == set()
    assert (await partitions.listing(pool))[-1]["upper_bound"] >= dt.datetime.now(dt.UTC) + dt.timedelta(days=50)


async def _no_ring(*args: Any) -> None:
    return None


# ---- The timeline ----


async def test_acceptance_events_only_where_they_say_something(own_pool: asyncpg.Pool) -> None:
    """A message accepted `queued` stores no acceptance event: its timeline still begins with
    `queued` at its created_at. One accepted otherwise (scheduled, rejected...) stores it,
    stamped with its created_at, and nothing is added."""
    pool = own_pool
    org_id, send_id = await new_org(pool)
    now = dt.datetime.now(dt.UTC)
    plain = await add_message(pool, org_id, send_id, now, status="queued")
    row = await pool.fetchrow("SELECT * FROM messages WHERE id = $1", plain)
    stored = await pool.fetch(Q.select_message_events, plain, row["created_at"])
    shown = messages.timeline(row, stored)
    assert [e["status"] for e in shown] == ["queued", "sending", "sent"]
    assert shown[0]["at"] == row["created_at"] and shown[0]["detail"] is None
    await pool.execute(
        "INSERT INTO message_events (message_id, status, detail, at, message_created_at)"
        " VALUES ($1, 'scheduled', NULL, $2, $2)",
        plain,
        row["created_at"],
    )
    stored = await pool.fetch(Q.select_message_events, plain, row["created_at"])
    assert [e["status"] for e in messages.timeline(row, stored)] == ["sending", "sent", "scheduled"]


# ---- The plans ----


def _nodes(plan: dict[str, Any], under: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every node with the name of the CTE or subplan it is under ('' : the statement itself)."""
    under = plan.get("Subplan Name", under)
    out = [(under, plan)]
    for child in plan.get("Plans", []):
        out += _nodes(child, under)
    return out


async def _touched(
    pool: asyncpg.Pool, statement: str, args: list[Any], *, generic: bool
) -> list[tuple[str, dict[str, Any]]]:
    """The scan nodes of `statement` that ran (EXPLAIN ANALYZE, rolled back: nothing is
    written), as planned for these values or generically (as a prepared statement may be
    after its fifth execution)."""
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            if generic:
                await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            stmt = await conn.prepare("EXPLAIN (ANALYZE, FORMAT JSON, TIMING OFF, SUMMARY OFF) " + statement)
            raw = await stmt.fetchval(*args)
        finally:
            await tx.rollback()
    doc = json.loads(raw) if isinstance(raw, str) else raw
    return [
        (under, n)
        for under, n in _nodes(doc[0]["Plan"])
        if "Relation Name" in n and n.get("Actual Loops", 0) > 0 and n["Node Type"] != "ModifyTable"
    ]


def _partitions_read(nodes: list[tuple[str, dict[str, Any]]], parent: str, under: str | None = None) -> set[str]:
    prefix = parent + "_p"
    return {
        n["Relation Name"] for u, n in nodes if n["Relation Name"].startswith(prefix) and (under is None or u == under)
    }


async def test_hot_path_statements_read_only_the_partitions_they_need(own_pool: asyncpg.Pool) -> None:
    """With four weeks of history, each statement that names messages by id (or by ids) reads
    only their partition, whatever plan it runs: the claim and the reclaim look in every
    partition for due or expired messages, each through its partial index, and update only
    the partitions of those they took."""
    pool = own_pool
    names = await weeks_back(pool, 4)
    org_id, send_id = await new_org(pool)
    w0 = this_week()
    # History: every past week full of settled messages, so that a partition read whole
    # would be seen (and cost something to the planner).
    await pool.execute(
        """
        WITH s AS (
            INSERT INTO sends (id, org_id, source, variables)
            SELECT gen_random_uuid(), $1, 'api', '{}' FROM generate_series(1, $3)
            RETURNING id
        )
        INSERT INTO messages (id, send_id, org_id, channel, to_address, status, source, created_at)
        SELECT gen_random_uuid(), s.id, $1, 'email', 'h' || i || '@example.com', 'sent', 'api',
               $2::timestamptz + make_interval(secs => i * (4 * 7 * 86400.0 / $3))
        FROM (SELECT id, row_number() OVER () - 1 AS i FROM s) AS s
        """,
        org_id,
        w0 - 4 * WEEK,
        4 * FILL_ROWS,
    )
    target_at = w0 - 2 * WEEK + dt.timedelta(days=3, hours=12)
    target_partition = names[2]
    target_events = "message_events_" + target_partition.removeprefix("messages_")

    async def message(status: str, **extra: Any) -> tuple[uuid.UUID, dt.datetime]:
        mid = await add_message(pool, org_id, send_id, target_at, status=status)
        if extra:
            sets = ", ".join(f"{k} = ${i + 2}" for i, k in enumerate(extra))
            await pool.execute(f"UPDATE messages SET {sets} WHERE id = $1", mid, *extra.values())
        created_at: dt.datetime = await pool.fetchval("SELECT created_at FROM messages WHERE id = $1", mid)
        return mid, created_at

    sending, sending_at = await message("sending", attempts=1, lease_expires_at=dt.datetime.now(dt.UTC) + DAY)
    expired, _ = await message("sending", attempts=1, lease_expires_at=dt.datetime.now(dt.UTC) - DAY)
    due, _ = await message("queued")
    scheduled, _ = await message("scheduled", queue_at=dt.datetime.now(dt.UTC) + DAY)
    test_sent, _ = await message("sent", test=True, external_message_id="test-1")
    # As autovacuum would: the partitions that hold rows are analyzed, the empty ones (made
    # ahead) never are, so that the planner takes their size as unknown, not as nothing.
    for name in names:
        await pool.execute(f"ANALYZE {name}")
        await pool.execute(f"ANALYZE message_events_{name.removeprefix('messages_')}")
    everything = {r["name"] for r in await partitions.listing(pool)}
    parents = await partition_index_parents(pool)
    one = {target_partition}

    by_id: list[tuple[str, str, list[Any]]] = [
        ("select_message", Q.select_message, [sending, org_id, False]),
        ("select_message_of_mode", Q.select_message_of_mode, [sending, org_id, False]),
        ("cancel_scheduled_message", Q.cancel_scheduled_message, [scheduled, org_id, False]),
        (
            "record_outcomes",
            Q.record_outcomes,
            [[sending], ["sent"], ["<x@y>"], [None], [None], [1]],
        ),
        ("record_test_follow_ups", Q.record_test_follow_ups, [[test_sent], ["bounced"], ["test-1"], ["550"]]),
        ("renew_leases", Q.renew_leases, [[sending], [1], 60.0]),
        ("release_claims", Q.release_claims, [[sending], [1]]),
        ("select_transactional", Q.select_transactional, [sending, org_id, False]),
        ("select_transactionals_by_ids", Q.select_transactionals_by_ids, [[sending]]),
        ("insert_events", Q.insert_events, [[sending], ["sending"], [None]]),
    ]
    for generic in (False, True):
        for name, statement, args in by_id:
            nodes = await _touched(pool, statement, args, generic=generic)
            read = _partitions_read(nodes, "messages")
            assert read <= one, (name, generic, read)
            if name not in ("select_transactional", "select_transactionals_by_ids"):  # no transactional row
                assert read == one, (name, generic, read)
            assert all(n["Node Type"] != "Seq Scan" for _, n in nodes if n["Relation Name"] in read), (name, nodes)
        # The timeline: its events' partition only.
        nodes = await _touched(pool, Q.select_message_events, [sending, sending_at], generic=generic)
        assert _partitions_read(nodes, "message_events") == {target_events}, nodes

        # The claim: every partition that may hold a due message, each through messages_due...
        nodes = await _touched(pool, Q.claim_due, [10, 60.0], generic=generic)
        looked = [n for u, n in nodes if u == "CTE due" and n["Relation Name"].startswith("messages_p")]
        assert {n["Relation Name"] for n in looked} == everything, looked
        assert all(n["Node Type"] == "Index Scan" for n in looked), looked
        assert {parents[n["Index Name"]] for n in looked} == {"messages_due"}, looked
        # ...and the update only the partition of the message it claimed.
        assert _partitions_read(nodes, "messages", "CTE claimed") == one, nodes
        # The reclaim: every partition's messages_leased, and the update only where it found one.
        nodes = await _touched(pool, Q.reclaim_expired_leases, [5, 5.0], generic=generic)
        looked = [n for u, n in nodes if u == "CTE expired" and n["Relation Name"].startswith("messages_p")]
        assert {n["Relation Name"] for n in looked} == everything, looked
        assert all(n["Node Type"] == "Index Scan" for n in looked), looked
        assert {parents[n["Index Name"]] for n in looked} == {"messages_leased"}, looked
        assert _partitions_read(nodes, "messages", "CTE reclaimed") == one, nodes
    # The webhook trigger's probe (0017's webhook_message_events): each event's message by its
    # whole key, one partition per event however many there are.
    probe = """
        SELECT m.id FROM unnest($1::uuid[], $2::timestamptz[]) AS r(message_id, message_created_at)
        CROSS JOIN LATERAL (
            SELECT * FROM messages WHERE id = r.message_id AND created_at = r.message_created_at LIMIT 1
        ) m
    """
    nodes = await _touched(pool, probe, [[sending], [sending_at]], generic=False)
    assert _partitions_read(nodes, "messages") == one, nodes
    # Guard: the test's messages are where it thinks (and `due`, `expired` were claimable).
    assert {due, expired} <= {r[0] for r in await pool.fetch(f"SELECT id FROM {target_partition}")}
