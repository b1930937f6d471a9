"""Every rule of the send endpoint, against the real worker, SMTP server and Cloud API sandbox."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from shared.sql import Q
from tests.helpers import EMAIL_TEMPLATE, WHATSAPP_TEMPLATE, make_broadcast, unique_email, unique_phone


def delivered_to(smtp_server: Any, address: str) -> int:
    return sum(1 for m in smtp_server.messages if address in m.rcpt_tos)


def wa_delivered_to(wa_sandbox: Any, phone: str) -> int:
    digits = phone.lstrip("+")
    return sum(1 for m in wa_sandbox.messages if m["to"].lstrip("+") == digits)


async def send(client, org, broadcast_id: str, body: dict[str, Any], **headers: str):
    return await client.post(
        org.path(f"/broadcasts/{broadcast_id}/send"), headers={**org.auth("write"), **headers}, json=body
    )


async def recipients(client, org, broadcast_id: str) -> list[dict[str, Any]]:
    r = await client.get(org.path(f"/broadcasts/{broadcast_id}/recipients"), headers=org.auth("read"))
    assert r.status == 200
    data: list[dict[str, Any]] = (await r.json())["data"]
    return data


async def create_contact(client, org, **body: Any) -> dict[str, Any]:
    r = await client.post(org.path("/contacts"), headers=org.auth("admin"), json=body)
    assert r.status == 201, await r.text()
    out: dict[str, Any] = await r.json()
    return out


async def test_fan_out_to_every_reachable_channel(client, org, worker, smtp_server, wa_sandbox) -> None:
    b = await make_broadcast(client, org, templates=[EMAIL_TEMPLATE, WHATSAPP_TEMPLATE])
    email, phone = unique_email(), unique_phone()
    r = await send(client, org, b["id"], {"email": email, "phone": phone, "variables": {"otp": "777111"}})
    assert r.status == 200, await r.text()
    recs = (await r.json())["recipients"]
    assert {(x["channel"], x["status"]) for x in recs} == {("email", "sent"), ("whatsapp", "sent")}
    wa = next(x for x in recs if x["channel"] == "whatsapp")
    assert wa["external_message_id"].startswith("wamid.") and wa["to"] == phone
    assert delivered_to(smtp_server, email) == 1 and wa_delivered_to(wa_sandbox, phone) == 1
    got = next(m for m in wa_sandbox.messages if m["to"].lstrip("+") == phone.lstrip("+"))
    assert "777111" in str(got)


async def test_missing_channel_is_reported_skipped(client, org, worker, smtp_server) -> None:
    b = await make_broadcast(client, org, templates=[EMAIL_TEMPLATE, WHATSAPP_TEMPLATE])
    email = unique_email()
    r = await send(client, org, b["id"], {"email": email, "variables": {"otp": "1"}})
    assert r.status == 200
    recs = {x["channel"]: x for x in (await r.json())["recipients"]}
    assert recs["email"]["status"] == "sent"
    assert recs["whatsapp"]["status"] == "skipped" and "phone" in recs["whatsapp"]["error"]


async def test_contact_channel_id_fires_only_that_channel(client, org, worker, smtp_server, wa_sandbox) -> None:
    b = await make_broadcast(client, org, templates=[EMAIL_TEMPLATE, WHATSAPP_TEMPLATE])
    c = await create_contact(client, org, email=unique_email(), phone=unique_phone())
    wa_channel = next(ch for ch in c["channels"] if ch["type"] == "whatsapp")
    r = await send(client, org, b["id"], {"contact_channel_id": wa_channel["id"], "variables": {"otp": "2"}})
    assert r.status == 200
    recs = {x["channel"]: x for x in (await r.json())["recipients"]}
    assert recs["whatsapp"]["status"] == "sent" and recs["whatsapp"]["contact_channel_id"] == wa_channel["id"]
    assert recs["email"]["status"] == "skipped"
    assert delivered_to(smtp_server, c["email"]) == 0


async def test_identifier_precedence(client, org, worker, smtp_server) -> None:
    b = await make_broadcast(client, org)
    a = await create_contact(client, org, email=unique_email("a"))
    other = await create_contact(client, org, email=unique_email("other"))
    # contact_channel_id beats contact_id, which beats a raw email.
    r = await send(
        client,
        org,
        b["id"],
        {"contact_channel_id": a["channels"][0]["id"], "contact_id": other["id"], "variables": {"otp": "3"}},
    )
    assert (await r.json())["recipients"][0]["contact_id"] == a["id"]
    r = await send(client, org, b["id"], {"contact_id": a["id"], "variables": {"otp": "3"}})
    rec = (await r.json())["recipients"][0]
    assert rec["contact_id"] == a["id"] and rec["to"] == a["email"]


async def test_overrides_apply_to_one_send_and_never_touch_the_contact(client, org, worker, smtp_server) -> None:
    b = await make_broadcast(client, org)
    c = await create_contact(client, org, name="Stored Name", email=unique_email("stored"))
    override = unique_email("override")
    r = await send(
        client,
        org,
        b["id"],
        {"contact_id": c["id"], "email": override, "name": "Override Name", "variables": {"otp": "4"}},
    )
    assert r.status == 200
    rec = (await r.json())["recipients"][0]
    assert rec["to"] == override and rec["contact_id"] == c["id"] and rec["status"] == "sent"
    assert delivered_to(smtp_server, override) == 1 and delivered_to(smtp_server, c["email"]) == 0
    mail = next(m for m in smtp_server.messages if override in m.rcpt_tos)
    assert b"Override Name" in mail.raw
    r = await client.get(org.path(f"/contacts/{c['id']}"), headers=org.auth("read"))
    stored = await r.json()
    assert stored["name"] == "Stored Name" and stored["email"] == c["email"] and len(stored["channels"]) == 1


async def test_variable_precedence(client, org, worker, smtp_server) -> None:
    tpl = {**EMAIL_TEMPLATE, "subject": "{{ a }}|{{ b }}|{{ c }}", "html_body": "<p>{{ otp }}</p>"}
    b = await make_broadcast(
        client,
        org,
        templates=[tpl],
        variables=[
            {"name": "otp", "default": "0"},
            {"name": "a", "default": "default-a"},
            {"name": "b", "default": "default-b"},
            {"name": "c", "default": "default-c"},
        ],
    )
    c = await create_contact(client, org, email=unique_email(), properties={"a": "prop-a", "b": "prop-b"})
    r = await send(client, org, b["id"], {"contact_id": c["id"], "variables": {"a": "trigger-a"}})
    assert r.status == 200
    mail = next(m for m in smtp_server.messages if c["email"] in m.rcpt_tos)
    assert b"Subject: trigger-a|prop-b|default-c" in mail.raw


async def test_template_ids_subset(client, org, worker, smtp_server, wa_sandbox) -> None:
    b = await make_broadcast(client, org, templates=[EMAIL_TEMPLATE, WHATSAPP_TEMPLATE])
    wa_id = next(t["id"] for t in b["templates"] if t["channel"] == "whatsapp")
    email, phone = unique_email(), unique_phone()
    r = await send(
        client, org, b["id"], {"email": email, "phone": phone, "template_ids": [wa_id], "variables": {"otp": "5"}}
    )
    recs = (await r.json())["recipients"]
    assert [x["template_id"] for x in recs] == [wa_id] and recs[0]["status"] == "sent"
    assert delivered_to(smtp_server, email) == 0


async def assert_refused(client, org, b, body, status: int, code: str, smtp_server, wa_sandbox) -> None:
    before = len(await recipients(client, org, b["id"]))
    r = await send(client, org, b["id"], body)
    assert r.status == status, await r.text()
    assert (await r.json())["error"]["code"] == code
    await asyncio.sleep(0.05)
    assert len(await recipients(client, org, b["id"])) == before
    for key in ("email",):
        if body.get(key):
            assert delivered_to(smtp_server, body[key]) == 0
    if body.get("phone"):
        assert wa_delivered_to(wa_sandbox, body["phone"]) == 0


async def test_rejections_send_nothing(client, org, pool, worker, smtp_server, wa_sandbox) -> None:
    b = await make_broadcast(client, org, templates=[EMAIL_TEMPLATE, WHATSAPP_TEMPLATE])
    ok_vars = {"otp": "9"}
    await assert_refused(client, org, b, {"variables": ok_vars}, 422, "recipient_required", smtp_server, wa_sandbox)
    await assert_refused(
        client,
        org,
        b,
        {"name": "Only A Name", "variables": ok_vars},
        422,
        "recipient_required",
        smtp_server,
        wa_sandbox,
    )
    await assert_refused(
        client,
        org,
        b,
        {"email": unique_email(), "phone": unique_phone()},
        422,
        "missing_variables",
        smtp_server,
        wa_sandbox,
    )
    await assert_refused(
        client,
        org,
        b,
        {"contact_id": str(uuid.uuid4()), "variables": ok_vars},
        404,
        "contact_not_found",
        smtp_server,
        wa_sandbox,
    )
    await assert_refused(
        client,
        org,
        b,
        {"contact_channel_id": str(uuid.uuid4()), "variables": ok_vars},
        404,
        "contact_not_found",
        smtp_server,
        wa_sandbox,
    )
    await assert_refused(
        client,
        org,
        b,
        {"email": unique_email(), "template_ids": [str(uuid.uuid4())], "variables": ok_vars},
        422,
        "validation_error",
        smtp_server,
        wa_sandbox,
    )
    await assert_refused(
        client,
        org,
        b,
        {"email": "not-an-email", "variables": ok_vars},
        422,
        "validation_error",
        smtp_server,
        wa_sandbox,
    )
    unsub = await create_contact(client, org, email=unique_email(), status="unsubscribed")
    await assert_refused(
        client,
        org,
        b,
        {"email": unsub["email"], "variables": ok_vars},
        422,
        "recipient_unsubscribed",
        smtp_server,
        wa_sandbox,
    )
    blocked = await create_contact(client, org, phone=unique_phone(), status="blocked")
    await assert_refused(
        client,
        org,
        b,
        {"phone": blocked["phone"], "variables": ok_vars},
        422,
        "recipient_blocked",
        smtp_server,
        wa_sandbox,
    )

    draft = await make_broadcast(client, org, activate=False)
    await assert_refused(
        client,
        org,
        draft,
        {"email": unique_email(), "variables": ok_vars},
        409,
        "broadcast_not_active",
        smtp_server,
        wa_sandbox,
    )
    marketing = await make_broadcast(client, org, type_="marketing")
    await assert_refused(
        client,
        org,
        marketing,
        {"email": unique_email(), "variables": ok_vars},
        409,
        "not_transactional",
        smtp_server,
        wa_sandbox,
    )
    await client.post(org.path(f"/broadcasts/{b['id']}/pause"), headers=org.auth("admin"))
    await assert_refused(
        client,
        org,
        b,
        {"email": unique_email(), "variables": ok_vars},
        409,
        "broadcast_not_active",
        smtp_server,
        wa_sandbox,
    )


async def test_concurrent_triggers_for_a_new_address_make_one_contact(client, org, pool, worker) -> None:
    b = await make_broadcast(client, org)
    email = unique_email("race")
    responses = await asyncio.gather(
        *(send(client, org, b["id"], {"email": email, "variables": {"otp": "1"}, "background": True}) for _ in range(8))
    )
    assert all(r.status == 202 for r in responses)
    contact_ids = {(await r.json())["recipients"][0]["contact_id"] for r in responses}
    assert len(contact_ids) == 1
    n = await pool.fetchval("SELECT count(*) FROM contact_channels WHERE org_id = $1 AND address = $2", org.id, email)
    assert n == 1


async def test_suppressed_address_gives_rejected_record(client, org, pool, worker, smtp_server) -> None:
    b = await make_broadcast(client, org)
    email = unique_email("suppressed")
    await pool.execute(Q.insert_suppression, org.id, email, "manual", None)
    r = await send(client, org, b["id"], {"email": email, "variables": {"otp": "1"}})
    assert r.status == 200
    rec = (await r.json())["recipients"][0]
    assert rec["status"] == "rejected" and "suppression" in rec["error"]
    assert delivered_to(smtp_server, email) == 0


async def test_hard_bounce_fails_and_suppresses(client, org, pool, worker, smtp_server) -> None:
    b = await make_broadcast(client, org)
    email = unique_email("bounce")
    smtp_server.handler.reject_rcpt[email] = "550 5.1.1 user unknown"
    r = await send(client, org, b["id"], {"email": email, "variables": {"otp": "1"}})
    assert r.status == 200
    rec = (await r.json())["recipients"][0]
    assert rec["status"] == "failed" and "550" in rec["error"] and "user unknown" in rec["error"]
    assert await pool.fetchval(Q.select_suppression, org.id, email) == "hard_bounce"
    r = await send(client, org, b["id"], {"email": email, "variables": {"otp": "1"}})
    assert (await r.json())["recipients"][0]["status"] == "rejected"


async def test_transient_failure_is_retried_then_sent(client, org, worker, smtp_server) -> None:
    from tests.helpers import eventually

    b = await make_broadcast(client, org)
    email = unique_email("flaky")
    smtp_server.handler.fail_data_once[email] = "451 4.3.0 try again later"
    r = await send(client, org, b["id"], {"email": email, "variables": {"otp": "1"}})
    assert r.status == 200
    rec = (await r.json())["recipients"][0]
    assert rec["status"] == "queued" and "451" in rec["error"]

    async def sent() -> dict[str, Any] | None:
        m = await client.get(org.path(f"/messages/{rec['id']}"), headers=org.auth("read"))
        body: dict[str, Any] = await m.json()
        return body if body["status"] == "sent" else None

    msg = await eventually(sent)
    assert msg["attempts"] == 2
    assert [e["status"] for e in msg["events"]] == ["queued", "sending", "queued", "sending", "sent"]
    assert delivered_to(smtp_server, email) == 1


async def test_recipients_filters_and_summary(client, org, worker, smtp_server) -> None:
    b = await make_broadcast(client, org, templates=[EMAIL_TEMPLATE, WHATSAPP_TEMPLATE])
    for _ in range(3):
        await send(client, org, b["id"], {"email": unique_email(), "variables": {"otp": "1"}})
    rows = await recipients(client, org, b["id"])
    assert len(rows) == 6
    assert [r["created_at"] for r in rows] == sorted((r["created_at"] for r in rows), reverse=True)
    r = await client.get(
        org.path(f"/broadcasts/{b['id']}/recipients"),
        headers=org.auth("read"),
        params={"status": "skipped", "channel": "whatsapp"},
    )
    assert len((await r.json())["data"]) == 3
    r = await client.get(
        org.path(f"/broadcasts/{b['id']}/recipients"), headers=org.auth("read"), params={"status": "nope"}
    )
    assert r.status == 422
    r = await client.get(org.path(f"/broadcasts/{b['id']}"), headers=org.auth("read"))
    summary = (await r.json())["summary"]
    assert summary["messages_sent"] == 3 and summary["channels_used"] == ["email"]
    assert summary["by_status"] == {"sent": 3, "skipped": 3} and summary["status"] == "active"


async def test_recipients_pagination_is_stable_while_messages_arrive(client, org, worker) -> None:
    b = await make_broadcast(client, org)
    for _ in range(5):
        await send(client, org, b["id"], {"email": unique_email(), "variables": {"otp": "1"}, "background": True})
    r = await client.get(org.path(f"/broadcasts/{b['id']}/recipients"), headers=org.auth("read"), params={"limit": "2"})
    page1 = await r.json()
    for _ in range(3):  # newer messages arrive between pages
        await send(client, org, b["id"], {"email": unique_email(), "variables": {"otp": "1"}, "background": True})
    seen = [m["id"] for m in page1["data"]]
    cursor = page1["next_cursor"]
    while cursor:
        r = await client.get(
            org.path(f"/broadcasts/{b['id']}/recipients"),
            headers=org.auth("read"),
            params={"limit": "2", "cursor": cursor},
        )
        page = await r.json()
        seen += [m["id"] for m in page["data"]]
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 5


async def test_pause_between_prepare_and_commit_refuses_the_trigger(client, org, pool) -> None:
    """No cached view of the broadcast lets a trigger through after a pause has committed."""
    import uuid as uuid_mod

    from shared import errors, sending

    b = await make_broadcast(client, org)
    trigger = sending.Trigger(email=unique_email(), variables={"otp": "1"})
    prepared = await sending.prepare(pool, org.id, uuid_mod.UUID(b["id"]), trigger)
    r = await client.post(org.path(f"/broadcasts/{b['id']}/pause"), headers=org.auth("admin"))
    assert r.status == 200
    (refused,) = await sending.commit_many(pool, [prepared])
    assert isinstance(refused, errors.BroadcastNotActive)
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE send_id = $1", prepared.send_id) == 0


async def test_whatsapp_permanent_error_fails_with_metas_reply(client, org, worker, wa_sandbox) -> None:
    b = await make_broadcast(client, org, templates=[{**WHATSAPP_TEMPLATE, "template_name": "missing_template"}])
    r = await send(client, org, b["id"], {"phone": unique_phone(), "variables": {"otp": "1"}})
    assert r.status == 200
    rec = (await r.json())["recipients"][0]
    assert rec["status"] == "failed" and "132001" in rec["error"]


async def test_whatsapp_transient_error_is_retried_then_sent(client, org, worker, wa_sandbox) -> None:
    from tests.helpers import eventually

    b = await make_broadcast(client, org, templates=[WHATSAPP_TEMPLATE])
    phone = unique_phone()
    wa_sandbox.fail_next(phone, 1)
    r = await send(client, org, b["id"], {"phone": phone, "variables": {"otp": "1"}})
    rec = (await r.json())["recipients"][0]
    assert rec["status"] == "queued" and rec["error"]

    async def sent() -> dict[str, Any] | None:
        m = await client.get(org.path(f"/messages/{rec['id']}"), headers=org.auth("read"))
        body: dict[str, Any] = await m.json()
        return body if body["status"] == "sent" else None

    msg = await eventually(sent)
    assert msg["external_message_id"].startswith("wamid.") and msg["attempts"] == 2


async def test_unsubscribe_is_honoured_at_once_despite_the_contact_cache(client, org, worker, smtp_server) -> None:
    b = await make_broadcast(client, org)
    c = await create_contact(client, org, email=unique_email("cached"))
    r = await send(client, org, b["id"], {"email": c["email"], "variables": {"otp": "1"}})
    assert r.status == 200  # the contact is now in this process's cache
    r = await client.patch(org.path(f"/contacts/{c['id']}"), headers=org.auth("admin"), json={"status": "unsubscribed"})
    assert r.status == 200
    before = delivered_to(smtp_server, c["email"])
    r = await send(client, org, b["id"], {"email": c["email"], "variables": {"otp": "2"}})
    assert r.status == 422 and (await r.json())["error"]["code"] == "recipient_unsubscribed"
    await asyncio.sleep(0.05)
    assert delivered_to(smtp_server, c["email"]) == before
    assert len(await recipients(client, org, b["id"])) == 1
