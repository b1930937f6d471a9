"""POST /orgs/{org_id}/messages/{id}/cancel: a scheduled message -> canceled, anything else 409
not_cancelable; and racing the worker's claim, never both canceled and sent."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import uuid
from typing import Any

import msgspec

from api.broadcasts import schemas
from shared import orgs
from shared.domain import KeyMode
from tests.helpers import eventually, unique_email
from tests.transactionals_helpers import fetch, inbox, send, wait_status

ROUNDS = 50
PER_ROUND = 2


@dataclasses.dataclass
class BusyOrg:
    """An org whose send budget a 100-message race cannot exhaust."""

    id: uuid.UUID
    key: str

    def auth(self, *scopes: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def path(self, rest: str = "") -> str:
        return f"/orgs/{self.id}{rest}"


async def cancel(client: Any, org: Any, message_id: str, *scopes: str) -> tuple[int, Any]:
    r = await client.post(org.path(f"/messages/{message_id}/cancel"), headers=org.auth(*(scopes or ("write",))))
    return r.status, await r.json()


async def test_cancel_a_scheduled_message(client, org, worker, smtp_server) -> None:
    to = unique_email("later")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    out = await send(client, org, {"to": to, "subject": "Later", "body": "Hi", "queue_at": later.isoformat()})
    assert out["status"] == "scheduled"

    status, body = await cancel(client, org, out["id"])
    assert status == 200, body
    msgspec.convert(body, schemas.MessageOut)
    assert body["id"] == out["id"] and body["status"] == "canceled"
    assert body["channel"] == "email" and body["source"] == "api" and body["to"] == to

    # The same message everywhere: its /api/v1 object, its timeline, the search.
    assert (await fetch(client, org, out["id"]))["status"] == "canceled"
    r = await client.get(org.path(f"/messages/{out['id']}"), headers=org.auth("read"))
    events = (await r.json())["events"]
    assert [e["status"] for e in events] == ["scheduled", "canceled"]
    r = await client.get(org.path("/messages"), headers=org.auth("read"), params={"status": "canceled", "to": to})
    assert [m["id"] for m in (await r.json())["data"]] == [out["id"]]

    # Final: a second cancel is refused, and says why.
    status, body = await cancel(client, org, out["id"])
    assert status == 409, body
    assert body["error"]["code"] == "not_cancelable" and body["error"]["status"] == "canceled"


async def test_only_scheduled_messages_can_be_canceled(client, org, worker, smtp_server) -> None:
    out = await send(client, org, {"to": unique_email("now"), "subject": "Now", "body": "Hi"})
    await wait_status(client, org, out["id"], "sent")
    status, body = await cancel(client, org, out["id"])
    assert status == 409, body
    assert body["error"]["code"] == "not_cancelable" and body["error"]["status"] == "sent"
    assert (await fetch(client, org, out["id"]))["status"] == "sent"


async def test_cancel_refusals(client, org, pool) -> None:
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    out = await send(client, org, {"to": unique_email("mine"), "subject": "S", "body": "B", "queue_at": later})
    status, body = await cancel(client, org, str(uuid.uuid4()))
    assert status == 404 and body["error"]["code"] == "not_found"
    r = await client.post(org.path("/messages/not-an-id/cancel"), headers=org.auth("write"))
    assert r.status == 404
    status, _ = await cancel(client, org, out["id"], "read")
    assert status == 403
    # Another org cannot see it, let alone cancel it.
    other = await orgs.create_org(pool, "other")
    key = await orgs.create_key(pool, other, ["write"])
    r = await client.post(f"/orgs/{other}/messages/{out['id']}/cancel", headers={"Authorization": f"Bearer {key}"})
    assert r.status == 404
    await pool.execute("DELETE FROM orgs WHERE id = $1", other)
    assert (await fetch(client, org, out["id"]))["status"] == "scheduled"
    status, _ = await cancel(client, org, out["id"])
    assert status == 200


async def test_cancel_racing_the_claim_never_both(client, pool, worker, smtp_server) -> None:
    """Messages fall due while the running worker claims them and the API cancels them at
    about the same instant (a little before or after, by a seeded jitter). Each ends either
    canceled (200) and never handed to SMTP, or claimed, sent and its cancel answered 409."""
    org_id = await orgs.create_org(pool, "race", rate_limit_requests=100_000, rate_limit_window_s=60)
    org = BusyOrg(org_id, await orgs.create_key(pool, org_id, ["read", "write"]))
    jitter = random.Random(16)
    canceled: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    try:
        for _ in range(ROUNDS):
            due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.3)
            made = [
                await send(
                    client,
                    org,
                    {"to": unique_email("race"), "subject": "Race", "body": "Hi", "queue_at": due.isoformat()},
                )
                for _ in range(PER_ROUND)
            ]
            delay_s = (due - dt.datetime.now(dt.UTC)).total_seconds() + jitter.uniform(-0.03, 0.03)
            await asyncio.sleep(max(delay_s, 0))
            answers = await asyncio.gather(*(cancel(client, org, m["id"]) for m in made))
            for m, (status, body) in zip(made, answers, strict=True):
                assert status in (200, 409), body
                if status == 200:
                    assert body["status"] == "canceled"
                    canceled.append(m)
                else:
                    assert body["error"]["code"] == "not_cancelable", body
                    refused.append(m)
        assert len(canceled) + len(refused) == ROUNDS * PER_ROUND

        # Each refused one was claimed: it is sent, once.
        for m in refused:
            await wait_status(client, org, m["id"], "sent")
            await smtp_server.wait_for(1, rcpt=m["recipient_email"])
        # Each canceled one stays canceled, was never claimed, and never reached SMTP (the
        # refused ones, due at the same moments, have all arrived by now).
        for m in canceled:
            row = await pool.fetchrow("SELECT status, attempts FROM messages WHERE id = $1", uuid.UUID(m["id"]))
            assert row["status"] == "canceled" and row["attempts"] == 0, (m, row)
            events = await pool.fetch(
                "SELECT status FROM message_events WHERE message_id = $1 ORDER BY id", uuid.UUID(m["id"])
            )
            assert [e["status"] for e in events] == ["scheduled", "canceled"]
            assert inbox(smtp_server, m["recipient_email"]) == []
        for m in refused:
            assert len(inbox(smtp_server, m["recipient_email"])) == 1
        # Nothing is left in flight for this org (no claim still holding a canceled message).
        await eventually(
            lambda: _settled(pool, org_id),
            timeout_s=10,
        )
    finally:
        await pool.execute("DELETE FROM orgs WHERE id = $1", org_id)
    print(f"race: {len(canceled)} canceled, {len(refused)} sent")


async def _settled(pool: Any, org_id: uuid.UUID) -> bool:
    busy = await pool.fetchval(
        "SELECT count(*) FROM messages WHERE org_id = $1 AND status IN ('queued', 'sending', 'scheduled')", org_id
    )
    return bool(busy == 0)


async def test_a_key_sees_and_cancels_only_its_own_mode(client, org, pool) -> None:
    """Test and live keys share the org, not its messages: search, the /api/v1 list and cancel
    each see only the key's own mode (another mode's message is 404)."""
    test_key = await orgs.create_key(pool, org.id, ["read", "write"], mode=KeyMode.test)
    test_auth = {"Authorization": f"Bearer {test_key}"}
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    to = unique_email("modes")
    live = await send(client, org, {"to": to, "subject": "Live", "body": "B", "queue_at": later})
    r = await client.post(
        "/api/v1/transactionals.json",
        headers=test_auth,
        json={"to": to, "subject": "Test", "body": "B", "queue_at": later},
    )
    assert r.status == 201, await r.text()
    test = await r.json()

    async def found(headers: dict[str, str]) -> list[str]:
        r = await client.get(org.path("/messages"), headers=headers, params={"to": to})
        assert r.status == 200
        return [m["id"] for m in (await r.json())["data"]]

    async def listed(headers: dict[str, str]) -> list[str]:
        r = await client.get("/api/v1/transactionals.json", headers=headers, params={"limit": 100})
        assert r.status == 200
        return [t["id"] for t in (await r.json())["data"]]

    assert await found(org.auth("read")) == [live["id"]]
    assert await found(test_auth) == [test["id"]]
    assert live["id"] in await listed(org.auth("read")) and test["id"] not in await listed(org.auth("read"))
    assert await listed(test_auth) == [test["id"]]

    r = await client.post(org.path(f"/messages/{test['id']}/cancel"), headers=org.auth("write"))
    assert r.status == 404
    r = await client.post(org.path(f"/messages/{live['id']}/cancel"), headers=test_auth)
    assert r.status == 404
    r = await client.post(org.path(f"/messages/{test['id']}/cancel"), headers=test_auth)
    body = await r.json()
    assert r.status == 200 and body["status"] == "canceled" and body["test"] is True
    assert (await fetch(client, org, live["id"]))["status"] == "scheduled"
