"""Deletes behave as the foreign keys of `messages` and `message_events` made them behave before
migration 0016 replaced four of them with statement-level triggers (one check less per row on
the accept path): a deleted broadcast or contact leaves its messages with no reference to it,
a deleted message takes its events along, and a deleted org takes its sends, messages and
events. The keys that stay still refuse a send to a contact that does not exist."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest

from shared import orgs
from shared.sql import Q
from tests.helpers import make_broadcast, unique_email


async def _send(client: Any, org: Any, broadcast_id: str, pool: asyncpg.Pool) -> dict[str, Any]:
    r = await client.post(
        org.path(f"/broadcasts/{broadcast_id}/send"),
        headers=org.auth("write"),
        json={"email": unique_email("keys"), "variables": {"otp": "1"}, "background": True},
    )
    assert r.status == 202, await r.text()
    message: dict[str, Any] = (await r.json())["recipients"][0]
    # A message accepted `queued` stores no acceptance event (0017: its created_at says it), and
    # the session's worker may not have reached it yet: one stored event each, through the
    # service's own statement, so that the checks below always see what a delete does to events.
    await pool.execute(Q.insert_events, [uuid.UUID(message["id"])], ["queued"], ["stored for this test"])
    return message


async def _message(pool: asyncpg.Pool, message_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT m.broadcast_id, m.contact_id, m.send_id, s.broadcast_id AS send_broadcast_id,"
        " s.contact_id AS send_contact_id,"
        " (SELECT count(*) FROM message_events e WHERE e.message_id = m.id) AS events"
        " FROM messages m JOIN sends s ON s.id = m.send_id WHERE m.id = $1",
        uuid.UUID(message_id),
    )


async def test_a_deleted_broadcast_or_contact_is_forgotten_by_its_messages(
    client: Any, org: Any, pool: asyncpg.Pool
) -> None:
    b = await make_broadcast(client, org)
    first, second, other = [await _send(client, org, b["id"], pool) for _ in range(3)]
    row = await _message(pool, first["id"])
    # The session's worker may already be delivering these messages (more events by the moment):
    # what is checked is that a delete never takes a message's events along.
    assert row is not None and row["broadcast_id"] == uuid.UUID(b["id"]) and row["events"] >= 1
    # One statement deleting two contacts: each message forgets its own, the third keeps its.
    contacts = [(await _message(pool, m["id"]))["contact_id"] for m in (first, second)]  # type: ignore[index]
    await pool.execute("DELETE FROM contacts WHERE id = ANY($1::uuid[])", contacts)
    for m in (first, second):
        row = await _message(pool, m["id"])
        assert row is not None and row["contact_id"] is None and row["send_contact_id"] is None
        assert row["broadcast_id"] == uuid.UUID(b["id"]) and row["events"] >= 1
    kept = await _message(pool, other["id"])
    assert kept is not None and kept["contact_id"] is not None and kept["contact_id"] == kept["send_contact_id"]

    await pool.execute("DELETE FROM broadcasts WHERE id = $1", uuid.UUID(b["id"]))
    for m in (first, second, other):
        row = await _message(pool, m["id"])
        assert row is not None and row["broadcast_id"] is None and row["send_broadcast_id"] is None
        assert row["events"] >= 1


async def test_a_deleted_message_takes_its_events_and_a_deleted_org_everything(client: Any, pool: asyncpg.Pool) -> None:
    from tests.conftest import Org

    org_id = await orgs.create_org(pool, f"keys {uuid.uuid4().hex[:6]}")
    org = Org(id=org_id, keys={"admin,read,write": await orgs.create_key(pool, org_id, ["admin", "read", "write"])})
    org.keys["write"] = org.keys["admin,read"] = org.keys["admin,read,write"]
    b = await make_broadcast(client, org)
    gone, *rest = [await _send(client, org, b["id"], pool) for _ in range(3)]
    await pool.execute("DELETE FROM messages WHERE id = $1", uuid.UUID(gone["id"]))
    left = await pool.fetchval("SELECT count(*) FROM message_events WHERE message_id = $1", uuid.UUID(gone["id"]))
    assert left == 0
    ids = [uuid.UUID(m["id"]) for m in rest]
    # Each other message keeps its own events (the session's worker may be adding some).
    for message_id in ids:
        assert await pool.fetchval("SELECT count(*) FROM message_events WHERE message_id = $1", message_id) >= 1

    await pool.execute("DELETE FROM orgs WHERE id = $1", org_id)
    assert await pool.fetchval("SELECT count(*) FROM sends WHERE org_id = $1", org_id) == 0
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE org_id = $1", org_id) == 0
    assert await pool.fetchval("SELECT count(*) FROM message_events WHERE message_id = ANY($1::uuid[])", ids) == 0


async def test_the_keys_kept_still_refuse_what_does_not_exist(org: Any, pool: asyncpg.Pool) -> None:
    send_id = uuid.uuid4()
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute(
            "INSERT INTO sends (id, org_id, contact_id, source, variables) VALUES ($1, $2, $3, 'api', '{}')",
            send_id,
            org.id,
            uuid.uuid4(),
        )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute(
            "INSERT INTO messages (id, send_id, org_id, channel, status, source)"
            " VALUES ($1, $2, $3, 'email', 'queued', 'api')",
            uuid.uuid4(),
            send_id,
            org.id,
        )
