"""GET /orgs/{org_id}/messages: every message of the org across both surfaces, newest first,
filtered, keyset-paginated while messages keep arriving; and the indexes behind it (the plans
are asserted on a table with enough rows to make the planner choose)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import asyncpg
import msgspec

from api.broadcasts import schemas
from api.transactionals import schemas as v1_schemas
from shared import db, orgs
from shared.sql import Q
from tests.helpers import make_broadcast, unique_email
from tests.transactionals_helpers import send as send_transactional

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


async def insert_messages(pool: asyncpg.Pool, org_id: uuid.UUID, rows: list[dict[str, Any]]) -> list[uuid.UUID]:
    """Messages with chosen times, addresses and statuses, under one send (test data only)."""
    send_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO sends (id, org_id, source, variables) VALUES ($1, $2, 'api', '{}')", send_id, org_id
    )
    ids = []
    for r in rows:
        mid = r.get("id") or uuid.uuid4()
        ids.append(mid)
        await pool.execute(
            "INSERT INTO messages (id, send_id, org_id, broadcast_id, channel, to_address, status, source,"
            " created_at, test) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            mid,
            send_id,
            org_id,
            r.get("broadcast_id"),
            r.get("channel", "email"),
            r.get("to", "someone@example.com"),
            r.get("status", "sent"),
            r.get("source", "api"),
            r["created_at"],
            r.get("test", False),
        )
    return ids


async def search(client: Any, org: Any, **params: Any) -> tuple[int, Any]:
    r = await client.get(org.path("/messages"), headers=org.auth("read"), params=params)
    return r.status, await r.json()


async def walk(client: Any, org: Any, **params: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        status, body = await search(client, org, **params, **({"cursor": cursor} if cursor else {}))
        assert status == 200, body
        msgspec.convert(body, schemas.MessageList)
        ids += [m["id"] for m in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids


async def test_both_surfaces_newest_first(client, org, worker, smtp_server) -> None:
    b = await make_broadcast(client, org)
    to = unique_email("both")
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": to, "variables": {"otp": "1"}},
    )
    assert r.status == 200, await r.text()
    (broadcast_message,) = (await r.json())["recipients"]
    transactional = await send_transactional(client, org, {"to": to.upper(), "subject": "Hi", "body": "Hello"})

    status, body = await search(client, org, to=to)
    assert status == 200, body
    msgspec.convert(body, schemas.MessageList)
    assert [m["id"] for m in body["data"]] == [transactional["id"], broadcast_message["id"]]
    v1 = body["data"][0]
    # An /api/v1 transactional is a message like any other: email, its recipient, source api.
    assert v1["channel"] == "email" and v1["source"] == "api" and v1["broadcast_id"] is None
    assert v1["to"].lower() == to
    assert body["data"][1]["broadcast_id"] == b["id"]
    assert body["next_cursor"] is None

    status, body = await search(client, org, to=to, broadcast_id=b["id"])
    assert [m["id"] for m in body["data"]] == [broadcast_message["id"]]


async def test_filters_and_time_bounds(client, org, pool) -> None:
    other_broadcast = uuid.uuid4()
    await pool.execute(
        "INSERT INTO broadcasts (id, org_id, name, type) VALUES ($1, $2, 'b', 'transactional')",
        other_broadcast,
        org.id,
    )
    at = [T0 + dt.timedelta(minutes=i) for i in range(6)]
    ids = await insert_messages(
        pool,
        org.id,
        [
            {"created_at": at[0], "to": "Ada@Example.com", "status": "failed"},
            {"created_at": at[1], "to": "ada@example.com", "status": "sent", "source": "manual"},
            {"created_at": at[2], "to": "+14155550100", "channel": "whatsapp", "status": "delivered"},
            {"created_at": at[3], "to": "bob@example.com", "status": "failed", "broadcast_id": other_broadcast},
            {"created_at": at[4], "to": "ada@example.com", "status": "canceled"},
            # A test-mode message: a live key never sees it.
            {"created_at": at[5], "to": "ada@example.com", "status": "sent", "test": True},
        ],
    )
    iso = [t.isoformat().replace("+00:00", "Z") for t in at]

    async def found(**params: Any) -> list[uuid.UUID]:
        status, body = await search(client, org, **params)
        assert status == 200, body
        return [uuid.UUID(m["id"]) for m in body["data"]]

    assert await found() == [ids[4], ids[3], ids[2], ids[1], ids[0]]
    assert await found(to="ADA@example.com") == [ids[4], ids[1], ids[0]]
    assert await found(to=" ada@example.com ", status="failed") == [ids[0]]
    assert await found(status="failed") == [ids[3], ids[0]]
    assert await found(channel="whatsapp") == [ids[2]]
    assert await found(to="+14155550100") == [ids[2]]
    assert await found(broadcast_id=str(other_broadcast)) == [ids[3]]
    assert await found(source="manual") == [ids[1]]
    assert await found(status="failed", source="manual") == []
    assert await found(to="bob@example.com", broadcast_id=str(other_broadcast)) == [ids[3]]
    assert await found(to="ada@example.com", broadcast_id=str(other_broadcast)) == []
    assert await found(status="failed", broadcast_id=str(other_broadcast)) == [ids[3]]
    # since inclusive, until exclusive, on created_at; offsets other than Z are understood.
    assert await found(since=iso[1], until=iso[3]) == [ids[2], ids[1]]
    assert await found(since=(at[4]).astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat()) == [ids[4]]
    assert await found(until=iso[0]) == []
    assert await found(status="failed", since=iso[1]) == [ids[3]]
    # Another org sees none of them.
    other = await orgs.create_org(pool, "other")
    key = await orgs.create_key(pool, other, ["read"])
    r = await client.get(f"/orgs/{other}/messages", headers={"Authorization": f"Bearer {key}"})
    assert (await r.json())["data"] == []
    await pool.execute("DELETE FROM orgs WHERE id = $1", other)


async def test_pages_stay_correct_while_messages_arrive(client, org, pool) -> None:
    # Several messages share a created_at: the id breaks the tie, so none is skipped or repeated.
    times = [T0 + dt.timedelta(seconds=i // 3) for i in range(20)]
    ids = await insert_messages(pool, org.id, [{"created_at": t, "to": "walk@example.com"} for t in times])
    expected = sorted(zip(times, ids, strict=True), key=lambda p: (p[0], p[1]), reverse=True)

    seen: list[str] = []
    cursor = None
    arrived = 0
    while True:
        params: dict[str, Any] = {"to": "walk@example.com", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        status, body = await search(client, org, **params)
        assert status == 200, body
        assert len(body["data"]) <= 3
        seen += [m["id"] for m in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # New messages arrive between pages (newer than everything, and one in the past
        # page's exact second): they never shift the pages being walked.
        await insert_messages(
            pool,
            org.id,
            [
                {"created_at": dt.datetime.now(dt.UTC), "to": "walk@example.com"},
                {"created_at": T0 + dt.timedelta(days=1), "to": "walk@example.com"},
            ],
        )
        arrived += 2
    assert seen == [str(i) for _, i in expected]
    assert len(set(seen)) == len(seen) == 20
    # A fresh walk sees the newcomers too, first.
    everything = await walk(client, org, to="walk@example.com", limit=100)
    assert len(everything) == 20 + arrived
    assert everything[arrived:] == seen


async def test_bad_filters_are_422_naming_the_filter(client, org) -> None:
    cases = {
        "status": "lost",
        "channel": "pigeon",
        "broadcast_id": "not-a-uuid",
        "source": "fax",
        "since": "yesterday",
        "until": "2026-13-01T00:00:00Z",
        "limit": "101",
        "cursor": "!!!",
        "to": "a\x00b@example.com",
    }
    for name, value in cases.items():
        status, body = await search(client, org, **{name: value})
        assert status == 422, (name, body)
        assert body["error"]["code"] == "validation_error", body
        assert list(body["error"]["fields"]) == [name], body
    for limit in ("0", "x"):
        status, body = await search(client, org, limit=limit)
        assert status == 422 and "limit" in body["error"]["fields"]
    status, body = await search(client, org, since="9999-12-31T23:59:59-14:00")
    assert status == 422 and list(body["error"]["fields"]) == ["since"], body
    r = await client.get(org.path("/messages"), headers=org.auth("write"))
    assert r.status == 403


# ---- The plans ----

ROWS = 40_000
NEIGHBOURS = 200
NEIGHBOUR_ROWS = 20


async def partition_index_parents(pool: asyncpg.Pool) -> dict[str, str]:
    """Each partition's index -> the partitioned index it is a copy of (messages_org_recent...)."""
    rows = await pool.fetch(
        "SELECT c.relname AS child, p.relname AS parent FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent WHERE c.relkind = 'i'"
    )
    return {r["child"]: r["parent"] for r in rows}


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out += _plan_nodes(child)
    return out


def _literal(value: Any) -> str:
    """A test value as an SQL literal (EXECUTE takes no bind parameters)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dt.datetime):
        if value == dt.datetime.max.replace(tzinfo=dt.UTC):
            return "'infinity'"
        if value == dt.datetime.min.replace(tzinfo=dt.UTC):
            return "'-infinity'"
        return f"'{value.isoformat()}'"
    return f"'{value}'"


async def _explain(conn: asyncpg.Connection, statement: str, args: list[Any], *, generic: bool) -> list[dict[str, Any]]:
    """The plan of `statement` with `args`: as planned for these values (custom), or the
    generic plan of the prepared statement, planned for any values ($1, $2, ... in its
    conditions), which Postgres may switch to after a prepared statement's fifth execution."""
    if not generic:
        raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + statement, *args)
    else:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute("PREPARE search_plan AS " + statement)
        try:
            values = ", ".join(_literal(a) for a in args)
            raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE search_plan({values})")
        finally:
            await conn.execute("DEALLOCATE search_plan")
            await conn.execute("RESET plan_cache_mode")
    doc = json.loads(raw) if isinstance(raw, str) else raw
    return _plan_nodes(doc[0]["Plan"])


async def test_each_search_walks_its_index(pool) -> None:
    """On an org of 40,000 messages (ANALYZEd), each search statement reads its index in order:
    no sequential scan, no sort, the cursor and time bounds as index conditions; in a custom
    plan (the first executions of a prepared statement) and in the generic plan Postgres may
    switch to later. docs/design.md shows the same plans."""
    org_id = await orgs.create_org(pool, "plans")
    broadcast_id = uuid.uuid4()
    # Neighbours: many small orgs without broadcasts, as a shared database has (and as the
    # session's other tests may or may not leave behind). They make `org_id = $1` look more
    # selective than `broadcast_id = $11` to the generic plan (1/n_distinct against the share of
    # rows with a broadcast); without them the plans below would depend on the tests run before.
    neighbours: list[uuid.UUID] = []
    try:
        neighbours += [await orgs.create_org(pool, f"neighbour {i}") for i in range(NEIGHBOURS)]
        await pool.execute(
            """
            WITH s AS (
                INSERT INTO sends (id, org_id, source, variables)
                SELECT gen_random_uuid(), o, 'api', '{}' FROM unnest($1::uuid[]) AS o
                RETURNING id, org_id
            )
            INSERT INTO messages (id, send_id, org_id, channel, to_address, status, source, created_at)
            SELECT gen_random_uuid(), s.id, s.org_id, 'email', 'n' || i || '@example.com', 'sent', 'api',
                   now() - make_interval(secs => i)
            FROM s, generate_series(1, $2::int) AS i
            """,
            neighbours,
            NEIGHBOUR_ROWS,
        )
        await pool.execute(
            "INSERT INTO broadcasts (id, org_id, name, type) VALUES ($1, $2, 'b', 'transactional')",
            broadcast_id,
            org_id,
        )
        send_id = uuid.uuid4()
        await pool.execute(
            "INSERT INTO sends (id, org_id, source, variables) VALUES ($1, $2, 'api', '{}')", send_id, org_id
        )
        # 2,000 addresses, 1 % failed, a tenth from one broadcast, a message a second.
        await pool.execute(
            """
            INSERT INTO messages (id, send_id, org_id, broadcast_id, channel, to_address, status, source, created_at)
            SELECT gen_random_uuid(), $1, $2, CASE WHEN i % 10 = 0 THEN $3::uuid END, 'email',
                   'user' || (i % 2000) || '@example.com',
                   (CASE WHEN i % 100 = 0 THEN 'failed' ELSE 'sent' END)::message_status, 'api',
                   now() - make_interval(secs => i)
            FROM generate_series(1, $4::int) AS i
            """,
            send_id,
            org_id,
            broadcast_id,
            ROWS,
        )
        await pool.execute("ANALYZE messages")
        cursor_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=ROWS // 2)
        base: list[Any] = [
            org_id,
            False,
            cursor_at,
            uuid.UUID(int=(1 << 128) - 1),
            dt.datetime.min.replace(tzinfo=dt.UTC),
            dt.datetime.max.replace(tzinfo=dt.UTC),
            None,
            None,
            None,
            51,
        ]
        failed = [*base[:6], "failed", *base[7:]]
        # Each statement's index, and the equality its index condition must carry: the filter is
        # what narrows the walk; as a Filter it would be checked on every row of the org's timeline.
        # A broadcast's page may take either broadcast index (0014's, with org and mode, or 0001's,
        # without them: a broadcast's rows are one org's, so the org and mode filters drop next to
        # nothing); which is cheaper depends on how many orgs the table holds, i.e. on what the
        # session's other tests left in it. Never messages_org_recent: that walks the org's history.
        cases = [
            (Q.search_messages, [*base, None, None], {"messages_org_recent"}, "org_id = "),
            (Q.search_messages_by_status, [*failed, None, None], {"messages_org_status_recent"}, "status = "),
            (
                Q.search_messages_by_to,
                [*base, None, "USER7@example.com"],
                {"messages_org_to_recent"},
                "lower(to_address) = ",
            ),
            (
                Q.search_messages_by_broadcast,
                [*base, broadcast_id, None],
                {"messages_org_broadcast_recent", "messages_broadcast_recent"},
                "broadcast_id = ",
            ),
        ]
        # messages is partitioned by time (0017): each index is one per partition, and a page
        # reads the partitions newest first (an ordered Append), each through its own copy of
        # the statement's index. The service plans these statements for their values, never
        # generically (db.fetch_custom_planned: test_searches_are_planned_for_their_values):
        # a generic plan is made for every partition at once, and with the made-ahead
        # partitions empty it may read them all and sort.
        parents = await partition_index_parents(pool)
        holding = {
            r["relname"]
            for r in await pool.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'messages'::regclass AND c.reltuples > $1",
                ROWS // 10,
            )
        }
        assert holding
        async with pool.acquire() as conn:
            for statement, args, index, equality in cases:
                nodes = await _explain(conn, statement, args, generic=False)
                scans = [n for n in nodes if n["Node Type"] == "Index Scan"]
                # A partition that holds the org's history is never read whole (an empty or a
                # nearly empty one may be: a few pages, whatever the filter), and the page is
                # read in order: a Sort only where the planner knows the filter leaves fewer
                # rows than the page (it reads them all anyway), never in front of an org's or
                # a broadcast's history.
                seq = [n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"]
                assert not set(seq) & holding, (index, seq)
                sorts = [n for n in nodes if n["Node Type"] in ("Sort", "Merge Append")]
                assert all(n["Plan Rows"] < args[9] for n in sorts), (index, nodes)
                assert {n["Relation Name"] for n in scans} >= holding, (index, nodes)
                assert scans and {parents.get(n["Index Name"], n["Index Name"]) for n in scans} <= index, (index, nodes)
                assert len({parents.get(n["Index Name"]) for n in scans}) == 1, (index, nodes)
                for scan in scans:
                    cond = scan["Index Cond"]
                    assert equality in cond, (index, cond)
                    # The keyset cursor is part of the index condition (a page costs LIMIT rows,
                    # however deep), not a filter applied to every row before it.
                    assert "ROW(created_at, id) < ROW(" in cond, (index, cond)
                    assert "created_at >= " in cond and "created_at < " in cond, (index, cond)
            # Retention's scan reads its partial index too, never the table.
            nodes = await _explain(
                conn, Q.erase_expired_content, [org_id, dt.datetime.now(dt.UTC), 1000], generic=False
            )
            # (transactionals, a few rows in the test's database, may be read whole: at scale
            # its 10-odd ids of a batch go through its primary key like the others.)
            scanned = [n.get("Relation Name") for n in nodes if n["Node Type"] == "Seq Scan"]
            assert "messages" not in scanned and "sends" not in scanned, nodes
            assert "messages_unerased" in [parents.get(n.get("Index Name", "")) for n in nodes], nodes
    finally:
        await pool.execute("DELETE FROM orgs WHERE id = ANY($1::uuid[])", [org_id, *neighbours])


async def test_searches_are_planned_for_their_values(client, org, pool, monkeypatch) -> None:
    """Searches, a broadcast's recipients and the console's chart run planned for their values
    (plan_cache_mode = force_custom_plan in their transaction), so the plans above are the ones
    they run, however often they are executed."""
    assert await db.fetch_custom_planned(pool, "SELECT current_setting('plan_cache_mode') AS m") == [
        ("force_custom_plan",)
    ]
    assert await pool.fetchval("SELECT current_setting('plan_cache_mode')") == "auto"
    ran: list[str] = []
    real = db.fetch_custom_planned

    async def spy(pool: asyncpg.Pool, statement: str, *args: Any) -> list[asyncpg.Record]:
        ran.append(statement)
        return await real(pool, statement, *args)

    monkeypatch.setattr(db, "fetch_custom_planned", spy)
    b = await make_broadcast(client, org)
    for params in ({}, {"to": "a@example.com"}, {"status": "failed"}, {"broadcast_id": b["id"]}):
        status, body = await search(client, org, **params)
        assert status == 200, body
    r = await client.get(org.path(f"/broadcasts/{b['id']}/recipients"), headers=org.auth("read"))
    assert r.status == 200, await r.text()
    assert set(ran) == {
        Q.search_messages,
        Q.search_messages_by_to,
        Q.search_messages_by_status,
        Q.search_messages_by_broadcast,
        Q.select_recipients_page,
    }


# ---- GET /api/v1/transactionals.json ----


async def test_v1_list_newest_first_and_paginated(client, org, pool) -> None:
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    made = [
        await send_transactional(
            client, org, {"to": unique_email(f"list{i}"), "subject": f"S{i}", "body": "B", "queue_at": later}
        )
        for i in range(5)
    ]
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/api/v1/transactionals.json", headers=org.auth("read"), params=params)
        body = await r.json()
        assert r.status == 200, body
        msgspec.convert(body, v1_schemas.TransactionalList)
        assert len(body["data"]) <= 2
        seen += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # Arrivals meanwhile do not shift the pages.
        await send_transactional(client, org, {"to": unique_email("late"), "subject": "L", "body": "B"})
    assert [t["id"] for t in seen] == [t["id"] for t in reversed(made)]
    assert [t["subject"] for t in seen] == ["S4", "S3", "S2", "S1", "S0"]
    assert seen[0]["status"] == "scheduled" and seen[0]["status_url"].endswith(
        f"/api/v1/transactionals/{made[4]['id']}.json"
    )

    # Another org lists none of them; bad paging is a 422 in the Rails shape; read scope needed.
    other = await orgs.create_org(pool, "other")
    key = await orgs.create_key(pool, other, ["read"])
    r = await client.get("/api/v1/transactionals.json", headers={"Authorization": f"Bearer {key}"})
    assert (await r.json()) == {"data": [], "next_cursor": None}
    await pool.execute("DELETE FROM orgs WHERE id = $1", other)
    for params in ({"limit": "101"}, {"limit": "0"}, {"cursor": "%%%"}):
        r = await client.get("/api/v1/transactionals.json", headers=org.auth("read"), params=params)
        body = await r.json()
        assert r.status == 422, body
        assert list(body["errors"]) == list(params), body
    r = await client.get("/api/v1/transactionals.json", headers=org.auth("write"))
    assert r.status == 403 and "base" in (await r.json())["errors"]
