"""Retention: message content (bodies, subjects, variables) past an org's retention_days is
erased by the reconciler, in small batches that skip locked rows; statuses, timestamps,
addresses and events stay."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import types
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from shared import errors, ids, orgs, retention
from shared.config import Settings
from tests.helpers import eventually, make_broadcast, unique_email
from tests.transactionals_helpers import fetch, send, wait_status


async def backdate(pool: asyncpg.Pool, message_id: uuid.UUID, days: float) -> None:
    """Age a message written by hand with a random (v4) id: its created_at says nothing of its
    partition, so any lookup by its id looks in every partition and still finds it moved."""
    assert message_id.version == 4
    await pool.execute(
        "UPDATE messages SET created_at = now() - make_interval(secs => $2) WHERE id = $1",
        uuid.UUID(str(message_id)),
        days * 86400,
    )


async def content_of(pool: asyncpg.Pool, message_id: str | uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT m.content, m.erased_at, m.status, m.sent_at, m.created_at, s.variables,"
        " (SELECT count(*) FROM message_events e WHERE e.message_id = m.id) AS events"
        " FROM messages m JOIN sends s ON s.id = m.send_id WHERE m.id = $1",
        uuid.UUID(str(message_id)),
    )
    assert row is not None
    return row


@contextlib.contextmanager
def accepted_days_ago(monkeypatch: pytest.MonkeyPatch, days: float) -> Iterator[None]:
    """Messages accepted inside are `days` old: a message's created_at is its id's time
    (shared/ids.py new_message_id), so its age is set where its id is made (a backdated
    created_at would no longer match its id, nor the partition its id names)."""
    now_s = time.time
    with monkeypatch.context() as patch:
        patch.setattr(ids, "time", types.SimpleNamespace(time=lambda: now_s() - days * 86400))
        yield


async def test_content_past_retention_is_erased_and_history_kept(
    client, org, pool, worker, smtp_server, monkeypatch
) -> None:
    await orgs.set_retention_days(pool, org.id, 1)
    with accepted_days_ago(monkeypatch, 2):
        old = await send(client, org, {"to": unique_email("old"), "subject": "Old news", "body": "Secret body"})
        await wait_status(client, org, old["id"], "sent")
        b = await make_broadcast(client, org)
        r = await client.post(
            org.path(f"/broadcasts/{b['id']}/send"),
            headers=org.auth("write"),
            json={"email": unique_email("bc"), "variables": {"otp": "424242"}},
        )
        assert r.status == 200, await r.text()
        (old_broadcast,) = (await r.json())["recipients"]
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
        scheduled = await send(
            client, org, {"to": unique_email("sched"), "subject": "Soon", "body": "Wait", "queue_at": later}
        )
    recent = await send(client, org, {"to": unique_email("new"), "subject": "Fresh", "body": "Kept"})
    await wait_status(client, org, recent["id"], "sent")
    before = {m: await content_of(pool, m) for m in (old["id"], old_broadcast["id"])}
    assert before[old["id"]]["content"] is not None
    assert before[old_broadcast["id"]]["variables"]["otp"] == "424242"

    erased = await retention.erase_expired(pool, 30, batch_rows=1)
    assert erased >= 2

    v1 = await fetch(client, org, old["id"])
    assert v1["subject"] is None and v1["body"] is None and v1["preheader"] is None
    assert v1["status"] == "sent" and v1["sent_at"] is not None and v1["recipient_email"] == old["recipient_email"]
    for m in (old["id"], old_broadcast["id"]):
        after = await content_of(pool, m)
        assert after["content"] is None and after["variables"] == {} and after["erased_at"] is not None
        # Statuses, timestamps and events are kept.
        for kept in ("status", "sent_at", "created_at", "events"):
            assert after[kept] == before[m][kept], kept
    r = await client.get(org.path(f"/messages/{old_broadcast['id']}"), headers=org.auth("read"))
    assert (await r.json())["status"] == "sent"
    r = await client.get(org.path("/messages"), headers=org.auth("read"), params={"to": old["recipient_email"]})
    assert [m["id"] for m in (await r.json())["data"]] == [old["id"]]

    # A message not yet sent keeps what it needs, however old; a recent one keeps everything.
    assert (await fetch(client, org, scheduled["id"]))["body"] is not None
    assert (await content_of(pool, scheduled["id"]))["content"] is not None
    assert (await fetch(client, org, recent["id"]))["subject"] == "Fresh"
    assert (await content_of(pool, recent["id"]))["erased_at"] is None


async def _send_with_two_messages(pool: asyncpg.Pool, org_id: uuid.UUID, *, sibling_status: str) -> list[uuid.UUID]:
    send_id, done, sibling = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await pool.execute(
        "INSERT INTO sends (id, org_id, source, variables) VALUES ($1, $2, 'api', '{\"otp\": \"1\"}')",
        send_id,
        org_id,
    )
    far = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    for mid, status in ((done, "sent"), (sibling, sibling_status)):
        await pool.execute(
            "INSERT INTO messages (id, send_id, org_id, channel, to_address, status, source, created_at,"
            " next_attempt_at) VALUES ($1, $2, $3, 'email', 'sib@example.com', $4, 'api', now() - interval '40 days',"
            " $5)",
            mid,
            send_id,
            org_id,
            status,
            far if status == "queued" else None,
        )
    return [send_id, done, sibling]


async def test_a_send_keeps_its_variables_while_a_sibling_is_on_its_way(org, pool) -> None:
    send_id, done, sibling = await _send_with_two_messages(pool, org.id, sibling_status="queued")
    await retention.erase_expired(pool, 30)
    assert (await content_of(pool, done))["erased_at"] is not None
    # The queued sibling (a retry due later) still renders from the send's variables.
    assert await pool.fetchval("SELECT variables FROM sends WHERE id = $1", send_id) == {"otp": "1"}
    assert (await content_of(pool, sibling))["erased_at"] is None

    await pool.execute("UPDATE messages SET status = 'failed', next_attempt_at = NULL WHERE id = $1", sibling)
    await retention.erase_expired(pool, 30)
    assert await pool.fetchval("SELECT variables FROM sends WHERE id = $1", send_id) == {}
    assert (await content_of(pool, sibling))["erased_at"] is not None


async def test_locked_rows_are_skipped_never_waited_for(org, pool, settings) -> None:
    _, done, sibling = await _send_with_two_messages(pool, org.id, sibling_status="sent")
    holder = await asyncpg.connect(settings.database_url)
    try:
        tx = holder.transaction()
        await tx.start()
        # A worker (or a status webhook) in the middle of updating one of them.
        await holder.execute("SELECT 1 FROM messages WHERE id = $1 FOR UPDATE", sibling)
        await asyncio.wait_for(retention.erase_expired(pool, 30), timeout=10)
        assert (await content_of(pool, done))["erased_at"] is not None
        assert (await content_of(pool, sibling))["erased_at"] is None
        await tx.rollback()
    finally:
        await holder.close()
    await retention.erase_expired(pool, 30)
    assert (await content_of(pool, sibling))["erased_at"] is not None


async def test_default_days_and_per_org_days(org, pool) -> None:
    _, done, _ = await _send_with_two_messages(pool, org.id, sibling_status="sent")
    await backdate(pool, done, 10)
    await retention.erase_expired(pool, 30)
    assert (await content_of(pool, done))["erased_at"] is None
    await orgs.set_retention_days(pool, org.id, 7)
    await retention.erase_expired(pool, 30)
    assert (await content_of(pool, done))["erased_at"] is not None

    await orgs.set_retention_days(pool, org.id, None)
    assert await pool.fetchval("SELECT retention_days FROM orgs WHERE id = $1", org.id) is None
    with pytest.raises(errors.ValidationFailed):
        await orgs.set_retention_days(pool, org.id, 0)
    with pytest.raises(errors.NotFound):
        await orgs.set_retention_days(pool, uuid.uuid4(), 5)


async def test_the_reconciler_erases(org, pool, worker, monkeypatch) -> None:
    import worker.reconcile as reconcile

    # Every reconciler run (each RECONCILE_EVERY_S) instead of once a minute.
    monkeypatch.setattr(reconcile, "RETENTION_EVERY_S", 0.0)
    await orgs.set_retention_days(pool, org.id, 1)
    _, done, _ = await _send_with_two_messages(pool, org.id, sibling_status="sent")

    async def erased() -> Any:
        return (await content_of(pool, done))["erased_at"]

    await eventually(erased, timeout_s=20, interval_s=0.2)


def test_retention_days_setting() -> None:
    assert Settings().retention_days == 30
    assert Settings.from_env({"RETENTION_DAYS": "90"}).retention_days == 90
    with pytest.raises(ValueError, match="RETENTION_DAYS"):
        Settings.from_env({"RETENTION_DAYS": "0"})


async def test_cli_org_update_retention_days(org, pool, settings) -> None:
    from tests.test_keys import _cli

    code, _, err = await _cli(settings, "org", "update", "--org", str(org.id), "--retention-days", "7")
    assert code == 0, err
    assert await pool.fetchval("SELECT retention_days FROM orgs WHERE id = $1", org.id) == 7
    code, _, err = await _cli(settings, "org", "update", "--org", str(org.id), "--retention-days", "default")
    assert code == 0, err
    assert await pool.fetchval("SELECT retention_days FROM orgs WHERE id = $1", org.id) is None
    for bad in ("0", "-3", "week", "99999999999"):
        code, _, err = await _cli(settings, "org", "update", "--org", str(org.id), "--retention-days", bad)
        assert code != 0 and "--retention-days" in err, (bad, err)
    assert await pool.fetchval("SELECT retention_days FROM orgs WHERE id = $1", org.id) is None
