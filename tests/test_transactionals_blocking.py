"""What transactional email never reaches: suppressed addresses (by hand or after a hard
bounce) and redacted subscribers; the suppression list and redaction endpoints."""

from __future__ import annotations

import asyncio
import datetime as dt
import urllib.parse
import uuid

import msgspec

from api.transactionals import schemas as v1_schemas
from shared import orgs, subscribers
from tests.helpers import unique_email
from tests.transactionals_helpers import (
    V1,
    fetch,
    heading,
    inbox,
    make_subscriber,
    one_mail,
    path_of,
    post_json,
    send,
    wait_status,
)


async def events_of(client, org, message_id: str) -> list[str]:
    r = await client.get(org.path(f"/messages/{message_id}"), headers=org.auth("read"))
    return [e["status"] for e in (await r.json())["events"]]


async def test_suppression_list_endpoints(client, org, pool) -> None:
    write, read = org.auth("write"), org.auth("read")
    local = uuid.uuid4().hex[:8]
    status, entry = await post_json(client, "/suppressions.json", write, {"email": f"Bounce.{local}@Example.COM"})
    assert status == 201
    msgspec.convert(entry, v1_schemas.SuppressionOut)
    assert entry["email"] == f"bounce.{local}@example.com" and entry["reason"] == "manual"
    # Already there: the first entry stands (200, not a second row).
    status, again = await post_json(
        client, "/suppressions.json", write, {"email": entry["email"], "reason": "complaint"}
    )
    assert status == 200 and again == entry
    status, complaint = await post_json(
        client, "/suppressions.json", write, {"email": unique_email("c"), "reason": "complaint"}
    )
    assert status == 201 and complaint["reason"] == "complaint"
    status, out = await post_json(client, "/suppressions.json", write, {"email": "x", "reason": "because"})
    assert status == 422 and out == {"errors": {"email": ["is invalid"], "reason": ["is not included in the list"]}}
    status, out = await post_json(client, "/suppressions.json", write, {})
    assert status == 422 and out == {"errors": {"email": ["can't be blank"]}}
    r = await client.post(f"{V1}/suppressions.json", headers=read, json={"email": unique_email()})
    assert r.status == 403

    r = await client.get(f"{V1}/suppressions.json", headers=read)
    listed = await r.json()
    msgspec.convert(listed, v1_schemas.SuppressionList)
    assert [e["email"] for e in listed["data"]] == [complaint["email"], entry["email"]]
    r = await client.get(f"{V1}/suppressions.json", headers=read, params={"reason": "complaint"})
    assert [e["email"] for e in (await r.json())["data"]] == [complaint["email"]]
    r = await client.get(f"{V1}/suppressions.json", headers=read, params={"limit": "1"})
    page = await r.json()
    assert len(page["data"]) == 1 and page["next_cursor"]
    r = await client.get(f"{V1}/suppressions.json", headers=read, params={"limit": "1", "cursor": page["next_cursor"]})
    assert [e["email"] for e in (await r.json())["data"]] == [entry["email"]]
    r = await client.get(f"{V1}/suppressions.json", headers=read, params={"reason": "spam"})
    assert r.status == 422
    r = await client.get(f"{V1}/suppressions.json", headers=read, params={"cursor": "garbage"})
    assert r.status == 422 and "cursor" in (await r.json())["errors"]

    encoded = urllib.parse.quote(entry["email"], safe="")
    r = await client.delete(f"{V1}/suppressions/{encoded}.json", headers=read)
    assert r.status == 403
    r = await client.delete(f"{V1}/suppressions/{encoded}.json", headers=write)
    assert r.status == 204
    r = await client.delete(f"{V1}/suppressions/{encoded}.json", headers=write)
    assert r.status == 404 and list((await r.json())["errors"]) == ["base"]
    r = await client.get(f"{V1}/suppressions.json", headers=read)
    assert [e["email"] for e in (await r.json())["data"]] == [complaint["email"]]

    other_id = await orgs.create_org(pool, "other")
    other = {"Authorization": f"Bearer {await orgs.create_key(pool, other_id, ['read'])}"}
    r = await client.get(f"{V1}/suppressions.json", headers=other)
    assert (await r.json())["data"] == []


async def test_suppressed_address_is_rejected_and_nothing_sent(client, org, worker, smtp_server) -> None:
    to = unique_email("suppressed")
    status, _ = await post_json(client, "/suppressions.json", org.auth("write"), {"email": to.upper()})
    assert status == 201
    out = await send(client, org, {"to": to, "subject": "s", "body": "b", "double_opt_in": True})
    assert out["status"] == "rejected" and "suppression list (manual)" in out["error"]
    assert out["confirmation_status"] is None and out["confirmation_url"] is None
    await asyncio.sleep(0.3)
    assert inbox(smtp_server, to) == []
    got = await fetch(client, org, out["id"])
    assert got["status"] == "rejected" and got["sent_at"] is None
    assert await events_of(client, org, out["id"]) == ["rejected"]

    # Taken off the list, it is sent to again.
    r = await client.delete(f"{V1}/suppressions/{urllib.parse.quote(to)}.json", headers=org.auth("write"))
    assert r.status == 204
    out = await send(client, org, {"to": to, "subject": "again", "body": "b"})
    await wait_status(client, org, out["id"], "sent")


async def test_hard_bounce_fails_and_suppresses(client, org, pool, worker, smtp_server) -> None:
    to = unique_email("bounce")
    smtp_server.reject_rcpt[to] = "550 5.1.1 <" + to + ">: user unknown"
    out = await send(client, org, {"to": to, "subject": "s", "body": "b"})
    failed = await wait_status(client, org, out["id"], "failed")
    assert failed["error"].startswith("SMTP 550") and failed["sent_at"] is None
    r = await client.get(f"{V1}/suppressions.json", headers=org.auth("read"), params={"reason": "hard_bounce"})
    assert [e["email"] for e in (await r.json())["data"]] == [to]
    out = await send(client, org, {"to": to, "subject": "s", "body": "b"})
    assert out["status"] == "rejected" and "hard_bounce" in out["error"]


async def test_suppressing_stops_a_scheduled_send(client, org, worker, smtp_server) -> None:
    to = unique_email("sched")
    queue_at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()
    out = await send(client, org, {"to": to, "subject": "s", "body": "b", "queue_at": queue_at})
    assert out["status"] == "scheduled"
    status, _ = await post_json(client, "/suppressions.json", org.auth("write"), {"email": to, "reason": "complaint"})
    assert status == 201
    got = await fetch(client, org, out["id"])
    assert got["status"] == "rejected" and "complaint" in got["error"]
    await asyncio.sleep(1.5)
    assert inbox(smtp_server, to) == []
    assert await events_of(client, org, out["id"]) == ["scheduled", "rejected"]


async def test_subscriber_endpoints(client, org, pool) -> None:
    write, read = org.auth("write"), org.auth("read")
    to = unique_email("sub")
    created = await make_subscriber(client, org, email=to, first_name=" Ada ", last_name="Lovelace")
    msgspec.convert(created, v1_schemas.SubscriberOut)
    assert created["email"] == to and created["first_name"] == "Ada" and created["last_name"] == "Lovelace"
    assert (created["confirmed"], created["unsubscribed"], created["redacted"]) == (False, False, False)
    r = await client.get(f"{V1}/subscribers/{created['id']}.json", headers=read)
    assert r.status == 200 and await r.json() == created
    # A subscriber is a contact: the Broadcasts API sees it with its full name.
    r = await client.get(org.path(f"/contacts/{created['id']}"), headers=org.auth("read"))
    assert (await r.json())["name"] == "Ada Lovelace"

    status, out = await post_json(client, "/subscribers.json", write, {"email": to})
    assert status == 422 and out == {"errors": {"email": ["has already been taken"]}}
    status, out = await post_json(client, "/subscribers.json", write, {"first_name": "x"})
    assert status == 422 and out == {"errors": {"email": ["can't be blank"]}}
    status, flagged = await post_json(
        client, "/subscribers.json", write, {"email": unique_email(), "confirmed": True, "unsubscribed": True}
    )
    assert status == 201 and flagged["confirmed"] is True and flagged["unsubscribed"] is True
    r = await client.post(f"{V1}/subscribers.json", headers=read, json={"email": unique_email()})
    assert r.status == 403

    other_id = await orgs.create_org(pool, "other")
    other = {"Authorization": f"Bearer {await orgs.create_key(pool, other_id, ['read', 'write'])}"}
    r = await client.get(f"{V1}/subscribers/{created['id']}.json", headers=other)
    assert r.status == 404
    r = await client.post(f"{V1}/subscribers/{created['id']}/redact.json", headers=other)
    assert r.status == 404
    r = await client.get(f"{V1}/subscribers/{uuid.uuid4()}.json", headers=read)
    assert r.status == 404


async def test_redaction_erases_everything_and_keeps_blocking(client, org, pool, worker, smtp_server) -> None:
    to = unique_email("Gdpr")
    sub = await make_subscriber(client, org, email=to, first_name="Greta", last_name="Private")
    headers = {**org.auth("write"), "Idempotency-Key": f"k-{uuid.uuid4()}"}
    r = await client.post(
        f"{V1}/transactionals.json",
        headers=headers,
        json={
            "to": to,
            "subject": "Hello {{ first_name }}",
            "body": "<p>{{ confirmation_url }} {{ unsubscribe_url }}</p>",
            "double_opt_in": True,
            "include_unsubscribe_link": True,
        },
    )
    sent = await r.json()
    mail = await one_mail(smtp_server, to)
    unsubscribe_url = mail.header("List-Unsubscribe").strip().strip("<>")
    await wait_status(client, org, sent["id"], "sent")
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    scheduled = await send(client, org, {"to": to, "subject": "Later", "body": "b", "queue_at": later})
    await post_json(client, "/suppressions.json", org.auth("write"), {"email": to, "reason": "complaint"})

    r = await client.post(f"{V1}/subscribers/{sub['id']}/redact.json", headers=org.auth("read"))
    assert r.status == 403
    r = await client.post(f"{V1}/subscribers/{sub['id']}/redact.json", headers=org.auth("write"))
    assert r.status == 200
    redacted = await r.json()
    msgspec.convert(redacted, v1_schemas.SubscriberOut)
    assert redacted["redacted"] is True
    assert redacted["email"] is None and redacted["first_name"] is None and redacted["last_name"] is None
    r = await client.get(f"{V1}/subscribers/{sub['id']}.json", headers=org.auth("read"))
    assert await r.json() == redacted
    r = await client.post(f"{V1}/subscribers/{sub['id']}/redact.json", headers=org.auth("write"))
    assert r.status == 200 and await r.json() == redacted  # idempotent

    # Nothing personal is left anywhere in the org; only the hash remains.
    needle = to.lower()
    contact = await pool.fetchrow("SELECT * FROM contacts WHERE id = $1", uuid.UUID(sub["id"]))
    assert contact["name"] is None and contact["first_name"] is None and contact["properties"] == {}
    for table, column in [
        ("contact_channels", "address"),
        ("messages", "coalesce(to_address, '') || coalesce(error, '') || coalesce(content::text, '')"),
        ("sends", "variables::text"),
        ("transactionals", "coalesce(recipient_email, '') || coalesce(recipient_name, '') || coalesce(subject, '')"),
        ("unsubscribe_tokens", "email"),
        ("suppressions", "email"),
        ("idempotency_keys", "convert_from(coalesce(response_body, ''), 'UTF8')"),
    ]:
        found = await pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE org_id = $1 AND lower({column}) LIKE '%' || $2 || '%'",
            org.id,
            needle,
        )
        assert found == 0, table
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM message_events e JOIN messages m ON m.id = e.message_id"
            " WHERE m.org_id = $1 AND lower(e.detail) LIKE '%' || $2 || '%'",
            org.id,
            needle,
        )
        == 0
    )
    assert await pool.fetchval("SELECT count(*) FROM confirmations WHERE contact_id = $1", uuid.UUID(sub["id"])) == 0
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM redacted_addresses WHERE org_id = $1 AND address_hash = $2",
            org.id,
            subscribers.address_hash(org.id, "email", to),
        )
        == 1
    )
    # The transactional already sent stays, erased; the scheduled one is stopped.
    got = await fetch(client, org, sent["id"])
    assert got["status"] == "sent" and got["recipient_email"] is None and got["subject"] is None
    assert got["confirmation_status"] is None and got["confirmation_url"] is None
    assert (await fetch(client, org, scheduled["id"]))["status"] == "rejected"
    # Its links stop working.
    r = await client.get(path_of(sent["confirmation_url"]))
    assert r.status == 404 and heading(await r.text()) == "This link is not valid"
    r = await client.post(path_of(unsubscribe_url), data="List-Unsubscribe=One-Click")
    assert r.status == 404

    # The address stays blocked, whatever its case: rejected, nothing stored, nothing sent.
    for address in (to, to.upper()):
        out = await send(client, org, {"to": address, "subject": "s", "body": "b", "double_opt_in": True}, expect=201)
        assert out["status"] == "rejected" and "redacted" in out["error"]
        assert out["recipient_email"] is None and out["confirmation_url"] is None
    await asyncio.sleep(0.3)
    assert len(inbox(smtp_server, to)) == 1
    assert await pool.fetchval("SELECT count(*) FROM contact_channels WHERE org_id = $1", org.id) == 0
    status, out = await post_json(client, "/subscribers.json", org.auth("write"), {"email": to})
    assert status == 422 and out == {"errors": {"email": ["has been redacted"]}}
