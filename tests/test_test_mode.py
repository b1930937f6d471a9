"""Test mode end to end with the real worker: a test key's messages run the whole pipeline,
reach no SMTP server nor WhatsApp, end as their address's local part says, never touch the
suppression list or a contact's status, and are seen only by test keys (and live ones only by
live keys)."""

from __future__ import annotations

import uuid
from typing import Any

from api.broadcasts import schemas
from api.transactionals import schemas as v1_schemas
from tests.helpers import WHATSAPP_TEMPLATE, eventually, make_broadcast, unique_phone

V1 = "/api/v1"


async def _test_key(client: Any, org: Any, scopes: list[str] | None = None) -> dict[str, str]:
    r = await client.post(
        org.path("/keys"), headers=org.auth("admin"), json={"scopes": scopes or ["read", "write"], "mode": "test"}
    )
    assert r.status == 201, await r.text()
    return {"Authorization": f"Bearer {(await r.json())['key']}"}


def _domain() -> str:
    return f"t{uuid.uuid4().hex[:12]}.example.com"


def _delivered_to(smtp_server: Any, domain: str) -> list[Any]:
    return [m for m in smtp_server.messages if any(r.endswith("@" + domain) for r in m.rcpt_tos)]


async def _message(client: Any, org: Any, headers: dict[str, str], message_id: str) -> dict[str, Any]:
    r = await client.get(org.path(f"/messages/{message_id}"), headers=headers)
    assert r.status == 200, await r.text()
    out: dict[str, Any] = await r.json()
    schemas.MessageOut(**{**out, "events": [schemas.Event(**e) for e in out["events"]]})
    return out


async def test_local_part_picks_the_outcome(client, org, pool, worker, smtp_server) -> None:
    test = await _test_key(client, org)
    b = await make_broadcast(client, org)
    domain = _domain()
    expected = {"bounce": "bounced", "complaint": "complained", "fail": "failed", "ok": "sent", "Bounce": "bounced"}
    message_ids: dict[str, str] = {}
    for local in expected:
        r = await client.post(
            org.path(f"/broadcasts/{b['id']}/send"),
            headers=test,
            json={"email": f"{local}@{domain}", "variables": {"otp": "123456"}},
        )
        assert r.status == 200, await r.text()
        (record,) = (await r.json())["recipients"]
        assert record["test"] is True
        # The synchronous answer already says how it ended.
        assert record["status"] == expected[local], record
        message_ids[local] = record["id"]

    for local, status in expected.items():
        m = await _message(client, org, test, message_ids[local])
        assert m["test"] is True and m["status"] == status
        timeline = [e["status"] for e in m["events"]]
        if status == "failed":
            assert timeline == ["queued", "sending", "failed"] and m["external_message_id"] is None
            assert "test mode" in m["error"]
        else:
            assert m["external_message_id"].startswith("test-") and m["sent_at"] is not None
            assert timeline == ["queued", "sending", "sent"] + ([status] if status != "sent" else [])

    # Nothing reached the mail server; nothing was suppressed; the contacts are still subscribed.
    assert _delivered_to(smtp_server, domain) == []
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE org_id = $1", org.id) == 0
    statuses = await pool.fetch(
        "SELECT DISTINCT c.status::text FROM contacts c JOIN contact_channels ch ON ch.contact_id = c.id"
        " WHERE ch.org_id = $1 AND ch.address LIKE $2",
        org.id,
        f"%@{domain}",
    )
    assert [r["status"] for r in statuses] == ["subscribed"]
    # A second send to the bounced address is not rejected: test bounces suppress nothing.
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=test,
        json={"email": f"bounce@{domain}", "variables": {"otp": "1"}},
    )
    assert (await r.json())["recipients"][0]["status"] == "bounced"


async def test_whatsapp_test_message_is_sent_then_delivered(client, org, worker, wa_sandbox) -> None:
    test = await _test_key(client, org)
    b = await make_broadcast(client, org, templates=[WHATSAPP_TEMPLATE])
    phone = unique_phone()
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"), headers=test, json={"phone": phone, "variables": {"otp": "42"}}
    )
    assert r.status == 200, await r.text()
    (record,) = (await r.json())["recipients"]
    assert record["status"] == "delivered" and record["external_message_id"].startswith("test-")
    m = await _message(client, org, test, record["id"])
    assert [e["status"] for e in m["events"]] == ["queued", "sending", "sent", "delivered"]
    assert wa_sandbox.messages_to(phone) == []


async def test_v1_transactional_in_test_mode(client, org, pool, worker, smtp_server) -> None:
    test = await _test_key(client, org)
    domain = _domain()
    r = await client.post(
        f"{V1}/transactionals.json",
        headers=test,
        json={"to": f"complaint@{domain}", "subject": "Hello", "body": "<p>Hello</p>"},
    )
    assert r.status == 201, await r.text()
    created = await r.json()
    assert created["test"] is True
    v1_schemas.TransactionalOut(**created)

    async def status() -> str | None:
        r = await client.get(f"{V1}/transactionals/{created['id']}.json", headers=test)
        assert r.status == 200
        s: str = (await r.json())["status"]
        return s if s == "complained" else None

    assert await eventually(status, timeout_s=10) == "complained"
    assert _delivered_to(smtp_server, domain) == []
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE org_id = $1", org.id) == 0
    # The same message through the Broadcasts surface, with its timeline.
    m = await _message(client, org, test, created["id"])
    assert m["test"] is True and [e["status"] for e in m["events"]][-2:] == ["sent", "complained"]

    # A live key never sees it: 404 on both surfaces.
    live = org.auth("read", "write")
    assert (await client.get(f"{V1}/transactionals/{created['id']}.json", headers=live)).status == 404
    assert (await client.get(org.path(f"/messages/{created['id']}"), headers=live)).status == 404


async def test_live_and_test_never_see_each_other(client, org, worker, smtp_server) -> None:
    test = await _test_key(client, org)
    live = org.auth("read", "write")
    b = await make_broadcast(client, org)
    domain = _domain()
    sent: dict[str, str] = {}
    for mode, headers in (("live", live), ("test", test)):
        r = await client.post(
            org.path(f"/broadcasts/{b['id']}/send"),
            headers=headers,
            json={"email": f"{mode}@{domain}", "variables": {"otp": "7"}},
        )
        assert r.status == 200, await r.text()
        (record,) = (await r.json())["recipients"]
        assert record["status"] == "sent" and record["test"] is (mode == "test")
        sent[mode] = record["id"]
    # Only the live one reached the mail server.
    assert [m.rcpt_tos for m in _delivered_to(smtp_server, domain)] == [(f"live@{domain}",)]

    live_message = await _message(client, org, live, sent["live"])
    assert live_message["test"] is False and not live_message["external_message_id"].startswith("test-")
    assert (await _message(client, org, test, sent["test"]))["test"] is True
    assert (await client.get(org.path(f"/messages/{sent['test']}"), headers=live)).status == 404
    assert (await client.get(org.path(f"/messages/{sent['live']}"), headers=test)).status == 404

    async def listed(headers: dict[str, str]) -> list[str]:
        r = await client.get(org.path(f"/broadcasts/{b['id']}/recipients"), headers=headers)
        assert r.status == 200
        return [m["id"] for m in (await r.json())["data"]]

    assert await listed(live) == [sent["live"]]
    assert await listed(test) == [sent["test"]]

    # /api/v1: each mode reads only its own.
    ids: dict[str, str] = {}
    for mode, headers in (("live", live), ("test", test)):
        r = await client.post(
            f"{V1}/transactionals.json",
            headers=headers,
            json={"to": f"v1-{mode}@{domain}", "subject": "Hi", "body": "<p>Hi</p>"},
        )
        assert r.status == 201
        ids[mode] = (await r.json())["id"]
    assert (await client.get(f"{V1}/transactionals/{ids['live']}.json", headers=test)).status == 404
    assert (await client.get(f"{V1}/transactionals/{ids['test']}.json", headers=live)).status == 404
    r = await client.get(f"{V1}/transactionals/{ids['live']}.json", headers=live)
    assert r.status == 200 and (await r.json())["test"] is False


async def test_test_and_live_keys_share_the_orgs_rate_budget(client, org, pool, worker) -> None:
    from shared import orgs

    await orgs.set_rate_limit(pool, org.id, (2, 3600))
    test = await _test_key(client, org)
    statuses = []
    for headers in (org.auth("write"), test, test):
        r = await client.post(
            f"{V1}/transactionals.json",
            headers=headers,
            json={"to": f"ok@{_domain()}", "subject": "Hi", "body": "<p>Hi</p>"},
        )
        statuses.append(r.status)
    assert statuses == [201, 201, 429]


async def test_an_idempotency_key_never_replays_across_modes(client, org, worker) -> None:
    # The org's keys share its Idempotency-Keys: a test key reusing a live request's key gets
    # "another request" (422), never the live send's answer.
    test = await _test_key(client, org)
    body = {"to": f"ok@{_domain()}", "subject": "Hi", "body": "<p>Hi</p>"}
    idem = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    r = await client.post(f"{V1}/transactionals.json", headers={**org.auth("write"), **idem}, json=body)
    assert r.status == 201
    r = await client.post(f"{V1}/transactionals.json", headers={**test, **idem}, json=body)
    assert r.status == 422, await r.text()
