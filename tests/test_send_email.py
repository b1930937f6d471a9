"""The first real send, end to end: API -> Postgres (the queue) -> a worker's pump -> SMTP -> status."""

from __future__ import annotations

import email
from email.message import Message
from typing import Any

import msgspec

from api.broadcasts import schemas
from tests.helpers import eventually, make_broadcast, unique_email


def inbox_for(smtp_server: Any, address: str) -> list[Message]:
    out = []
    for m in smtp_server.messages:
        if address in m.rcpt_tos:
            out.append(email.message_from_bytes(m.raw))
    return out


async def test_sync_send_delivers_email_and_records_sent(client, org, worker, smtp_server) -> None:
    b = await make_broadcast(client, org)
    to = unique_email()
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": to, "name": "Ada", "variables": {"otp": "123456"}},
    )
    assert r.status == 200, await r.text()
    body = await r.json()
    msgspec.convert(body, schemas.SendResponse)
    (rec,) = body["recipients"]
    assert rec["status"] == "sent"
    assert rec["channel"] == "email" and rec["to"] == to
    assert rec["external_message_id"].startswith("<") and rec["external_message_id"].endswith("@tidings.test>")
    assert rec["status_url"] == f"http://tidings.test/orgs/{org.id}/messages/{rec['id']}"
    assert r.headers["RateLimit-Limit"] == "100"
    assert r.headers["X-Request-Id"]

    (mail,) = inbox_for(smtp_server, to)
    assert mail["Subject"] == "Your code is 123456"
    assert mail["Message-ID"] == rec["external_message_id"]
    assert "Tidings" in mail["From"]
    parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in mail.walk() if not p.is_multipart()}
    assert "<b>123456</b>" in parts["text/html"]
    assert "Hi Ada" in parts["text/html"]
    assert "Code 123456" in parts["text/html"]  # the hidden preheader
    assert "123456" in parts["text/plain"] and "<b>" not in parts["text/plain"]

    r = await client.get(org.path(f"/messages/{rec['id']}"), headers=org.auth("read"))
    assert r.status == 200
    msg = await r.json()
    msgspec.convert(msg, schemas.MessageOut)
    assert msg["status"] == "sent" and msg["sent_at"] and msg["attempts"] == 1 and msg["source"] == "api"
    assert [e["status"] for e in msg["events"]] == ["queued", "sending", "sent"]


async def test_background_send_answers_202_then_delivers(client, org, worker, smtp_server) -> None:
    b = await make_broadcast(client, org)
    to = unique_email()
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": to, "variables": {"otp": "654321"}, "background": True},
    )
    assert r.status == 202, await r.text()
    (rec,) = (await r.json())["recipients"]
    assert rec["status"] == "queued" and rec["external_message_id"] is None

    async def sent() -> bool:
        m = await client.get(org.path(f"/messages/{rec['id']}"), headers=org.auth("read"))
        return (await m.json())["status"] == "sent"

    await eventually(sent)
    (mail,) = inbox_for(smtp_server, to)
    assert mail["Subject"] == "Your code is 654321"


async def test_request_id_is_echoed(client, org) -> None:
    r = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert r.status == 200
    assert r.headers["X-Request-Id"] == "abc-123"
