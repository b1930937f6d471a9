"""What `tidings dev` shows of a message's end: the inbox's Bounce and Complain buttons send a
real DSN or ARF report over SMTP to a real bounce server, which moves the message; the local
webhook receiver verifies signatures with the official `standardwebhooks` library.

The email is sent by the worker's own delivery code (VERP envelope sender and all) over real
SMTP to the dev inbox; the report goes over real SMTP to `bounces.server`; Postgres is real.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import asyncpg
import orjson
import pytest
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from bounces.server import BounceServer, start
from shared import bounces
from shared.config import Settings
from shared.redis_keys import RedisKeys
from tests.conftest import Org
from tests.helpers import EMAIL_TEMPLATE
from tests.test_bounce_server import DOMAIN, SECRET, Sent, sent_message, state
from tidings.dev import reports
from tidings.dev import whatsapp_sandbox as wa
from tidings.dev.inbox import Inbox, InboxMessage, start_inbox
from tidings.dev.stack import DEV_BOUNCE_DOMAIN, DevConfig, DevError, DevState, banner, ensure_webhook_endpoint
from tidings.dev.webhook_receiver import PATH, WebhookReceiver, start_receiver
from worker.context import WorkerContext, open_channels
from worker.deliver import _deliver_one
from worker.main import serve


@pytest.fixture
async def bounce_server(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[BounceServer]:
    server = await start(settings.replace(bounce_domain=DOMAIN, bounce_secret=SECRET), pool, host="127.0.0.1", port=0)
    yield server
    await server.close()


@pytest.fixture
async def inbox(tmp_path: Path, bounce_server: BounceServer) -> AsyncIterator[Inbox]:
    target = reports.BounceTarget(bounce_server.host, bounce_server.port, DOMAIN, SECRET)
    inbox = await start_inbox("127.0.0.1", 0, "127.0.0.1", 0, tmp_path, bounce_target=target)
    yield inbox
    await inbox.close()


async def deliver_to_inbox(settings: Settings, pool: asyncpg.Pool, inbox: Inbox, sent: Sent) -> InboxMessage:
    """Send the message's email with the worker's delivery code, VERP on, to the dev inbox."""
    worker_settings = settings.replace(smtp_port=inbox.smtp_port, bounce_domain=DOMAIN, bounce_secret=SECRET)
    redis = Redis.from_url(settings.redis_url)
    ctx = WorkerContext(
        settings=worker_settings,
        pool=pool,
        redis=redis,
        keys=RedisKeys(settings.redis_prefix),
        channels=open_channels(worker_settings),
    )
    row: dict[str, Any] = {
        "id": sent.id,
        "content": EMAIL_TEMPLATE,
        "template_body": None,
        "variables": {"otp": "123456", "name": "Ada"},
        "channel": "email",
        "to_address": sent.to,
        "attempts": 1,
    }
    try:
        outcome = await _deliver_one(ctx, row)
        assert outcome.status == "sent", outcome
    finally:
        await ctx.close()
        await redis.aclose()
    (received,) = await inbox.handler.wait_for(1, rcpt=sent.to)
    return received


async def press(inbox: Inbox, number: int, action: str, **headers: str) -> tuple[int, str]:
    """Press a report button as a browser does (a form POST, then the redirect)."""
    async with aiohttp.ClientSession(inbox.web_url) as http:
        async with http.get(f"/messages/{number}") as r:
            page = await r.text()
        assert f'action="/messages/{number}/{action}"' in page
        async with http.post(f"/messages/{number}/{action}", headers=headers, allow_redirects=False) as r:
            if r.status != 303:
                return r.status, await r.text()
            assert r.headers["Location"] == f"/messages/{number}"
        async with http.get(f"/messages/{number}") as r:
            return r.status, await r.text()


async def test_bounce_button_sends_a_dsn_and_the_message_becomes_bounced(
    settings: Settings, pool: asyncpg.Pool, org: Org, inbox: Inbox
) -> None:
    sent = await sent_message(pool, org.id, "devbounce")
    received = await deliver_to_inbox(settings, pool, inbox, sent)
    # The inbox kept the envelope sender: the VERP address naming the message.
    assert received.mail_from == sent.verp

    status, page = await press(inbox, received.number, "bounce")
    assert status == 200
    assert "the bounce server accepted it: 250" in page and f"tidings message <code>{sent.id}</code>" in page
    after = await state(pool, org.id, sent)
    assert after["status"] == "bounced"
    assert after["suppression"] == "hard_bounce"
    # The index marks it.
    async with aiohttp.ClientSession(inbox.web_url) as http, http.get("/") as r:
        assert '<span class="tag">bounce sent</span>' in await r.text()


async def test_complain_button_sends_an_arf_report_and_the_message_becomes_complained(
    settings: Settings, pool: asyncpg.Pool, org: Org, inbox: Inbox
) -> None:
    sent = await sent_message(pool, org.id, "devcomplain")
    received = await deliver_to_inbox(settings, pool, inbox, sent)

    status, page = await press(inbox, received.number, "complain")
    assert status == 200 and "Spam complaint (ARF)" in page and "accepted it: 250" in page
    after = await state(pool, org.id, sent)
    assert after["status"] == "complained"
    assert after["suppression"] == "complaint"
    assert after["contact"] == "unsubscribed"


async def test_the_reports_are_standard_and_quote_the_original(
    settings: Settings, pool: asyncpg.Pool, org: Org, inbox: Inbox
) -> None:
    sent = await sent_message(pool, org.id, "devshape")
    received = await deliver_to_inbox(settings, pool, inbox, sent)
    assert received.message_id

    dsn = bounces.parse(reports.build_dsn(received))
    assert (dsn.kind, dsn.status, dsn.recipient) == (bounces.Kind.hard_bounce, "5.1.1", sent.to)
    assert dsn.original_message_id == received.message_id
    arf = bounces.parse(reports.build_arf(received))
    assert (arf.kind, arf.recipient) == (bounces.Kind.complaint, sent.to)
    assert arf.original_message_id == received.message_id

    parsed = email.message_from_bytes(reports.build_dsn(received))
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in parsed.get_payload()] == [  # type: ignore[union-attr]
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]


async def test_a_report_the_bounce_server_refuses_is_shown_and_changes_nothing(
    settings: Settings, pool: asyncpg.Pool, org: Org, inbox: Inbox
) -> None:
    # Sent without VERP: the envelope sender is the From address, not the bounce domain's.
    sent = await sent_message(pool, org.id, "devnoverp")
    message = await send_without_verp(inbox, sent)
    status, page = await press(inbox, message.number, "bounce")
    assert status == 200 and "the bounce server refused it: 550" in page
    assert (await state(pool, org.id, sent))["status"] == "sent"

    # A page elsewhere cannot make the inbox send reports; an unknown message is a 404.
    status, _ = await press(inbox, message.number, "bounce", Origin="http://evil.example")
    assert status == 403
    async with aiohttp.ClientSession(inbox.web_url) as http, http.post("/messages/999999/bounce") as r:
        assert r.status == 404


async def send_without_verp(inbox: Inbox, sent: Sent) -> InboxMessage:
    raw = (
        f"From: otp@tidings.test\r\nTo: {sent.to}\r\nSubject: plain\r\nMessage-ID: {sent.message_id_header}\r\n"
        "\r\nNo VERP here.\r\n"
    ).encode()
    await aiosmtplib.send(
        raw,
        hostname="127.0.0.1",
        port=inbox.smtp_port,
        start_tls=False,
        sender="otp@tidings.test",
        recipients=[sent.to],
    )
    (received,) = await inbox.handler.wait_for(1, rcpt=sent.to)
    return received


# ---- the local webhook receiver ----


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def signed(secret: str, body: bytes, msg_id: str | None = None) -> dict[str, str]:
    """Headers as a Standard Webhooks producer sends them, signed with the official library."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    now = dt.datetime.now(dt.UTC)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
        "Content-Type": "application/json",
    }


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, WebhookReceiver]]:
    runner, url, receiver = await start_receiver("127.0.0.1", 0)
    yield url, receiver
    await runner.cleanup()


async def test_the_receiver_verifies_a_signed_event_and_flags_a_forged_one(
    receiver: tuple[str, WebhookReceiver],
) -> None:
    url, rx = receiver
    secret = new_secret()
    rx.set_secret(secret)
    body = orjson.dumps({"type": "message.sent", "timestamp": "2026-12-03T10:00:00Z", "data": {"id": "m1"}})
    async with aiohttp.ClientSession(url) as http:
        async with http.post(PATH, data=body, headers=signed(secret, body, "evt_good")) as r:
            assert r.status == 204
        # Signed with another secret, a body changed after signing, no signature at all.
        async with http.post(PATH, data=body, headers=signed(new_secret(), body, "evt_forged")) as r:
            assert r.status == 401
        tampered = body.replace(b"m1", b"m2")
        async with http.post(PATH, data=tampered, headers=signed(secret, body, "evt_tampered")) as r:
            assert r.status == 401
        bad = signed(secret, body, "evt_garbled") | {"webhook-signature": "v1,not base64!"}
        async with http.post(PATH, data=body, headers=bad) as r:
            assert r.status == 401
        async with http.post(PATH, data=body, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 401
        async with http.get("/") as r:
            page = await r.text()
        async with http.get("/api/events") as r:
            events = (await r.json())["data"]

    assert [(e["webhook_id"], e["verified"]) for e in events] == [
        (None, False),
        ("evt_garbled", False),
        ("evt_tampered", False),
        ("evt_forged", False),
        ("evt_good", True),
    ]
    assert events[-1]["type"] == "message.sent" and events[-1]["payload"]["data"] == {"id": "m1"}
    # The page lists them newest first, each with its type, webhook-id and a ✓ or ✗.
    assert page.count("✓ verified") == 1 and page.count("✗") == 4
    assert page.index("evt_tampered") < page.index("evt_forged") < page.index("evt_good")
    assert "<code>message.sent</code>" in page


async def test_the_dev_stack_registers_the_receiver_or_says_it_cannot(
    client: Any, settings: Settings, org: Org, receiver: tuple[str, WebhookReceiver]
) -> None:
    url, rx = receiver
    dev_state = DevState(org_id=str(org.id), api_key=org.keys["admin,read,write"])
    async with aiohttp.ClientSession(str(client.make_url("")), headers=org.auth()) as http:
        registered = await ensure_webhook_endpoint(http, dev_state, url + PATH, rx)
        if not registered:
            # An api without the webhook routes (404): one log line, the stack carries on.
            assert dev_state.webhook_endpoint_id is None and not rx.secrets
            assert "no webhook routes" in rx.note
            return
        # The contract: 201 with the secret, which the receiver now verifies with.
        assert dev_state.webhook_secret and dev_state.webhook_secret.startswith("whsec_")
        assert rx.secrets == [dev_state.webhook_secret]
        # A second start reuses the endpoint; one whose port changed is pointed at the new URL.
        endpoint_id = dev_state.webhook_endpoint_id
        assert await ensure_webhook_endpoint(http, dev_state, url + PATH, rx)
        assert dev_state.webhook_endpoint_id == endpoint_id
        # A test event arrives signed by tidings, and the receiver verifies it. The session's
        # worker delivers no webhooks: a worker of this test's own does.
        stop = asyncio.Event()
        deliverer = asyncio.create_task(serve(settings.replace(**{"webhook_max_in_flight": 4}), stop))
        try:
            async with http.post(f"/orgs/{org.id}/webhooks/{endpoint_id}/test") as r:
                assert r.status == 202, await r.text()
            (event, *_) = await rx.wait_for(1, timeout_s=20)
        finally:
            stop.set()
            await asyncio.wait_for(deliverer, 30)
    assert event.event_type == "webhook.test" and event.verified, event.problem


# ---- what a newcomer is shown ----


def test_the_banner_names_the_bounce_server_and_the_webhook_receiver(tmp_path: Path) -> None:
    config = DevConfig.from_env({"DEV_BOUNCE_PORT": "3526", "DEV_WEBHOOKS_PORT": "9191"}, tmp_path)
    assert (config.bounce_port, config.webhooks_port) == (3526, 9191)
    assert DevConfig.from_env({}, tmp_path).bounce_port == 2526  # not the inbox's 2525
    with pytest.raises(DevError, match="DEV_WEBHOOKS_PORT"):
        DevConfig.from_env({"DEV_WEBHOOKS_PORT": "http"}, tmp_path)

    state = DevState(org_id=str(uuid.uuid4()), api_key="tdg_x", broadcast_id=str(uuid.uuid4()))
    receiver = WebhookReceiver()
    receiver.note = "The api has no webhook routes, so no endpoint is registered and nothing will arrive."
    text = banner(
        config,
        state,
        "http://i",
        "http://w",
        "postgresql://…",
        "redis://…",
        webhooks=("http://127.0.0.1:9191", receiver),
    )
    assert f"smtp://127.0.0.1:3526  (tidings bounces, BOUNCE_DOMAIN {DEV_BOUNCE_DOMAIN})" in text
    assert "http://127.0.0.1:9191  (no endpoint: The api has no webhook routes" in text
    assert "Bounce and Complain" in text and "sent, delivered, read" in text

    state.webhook_endpoint_id = "ep_1"
    receiver.set_secret(new_secret())
    text = banner(
        config,
        state,
        "http://i",
        "http://w",
        "postgresql://…",
        "redis://…",
        webhooks=("http://127.0.0.1:9191", receiver),
    )
    assert "http://127.0.0.1:9191  (endpoint ep_1: signed events, verified with standardwebhooks)" in text


async def test_the_sandbox_page_shows_the_status_webhooks_and_what_tidings_answered(
    client: Any, settings: Settings
) -> None:
    runner, base_url, sandbox = await wa.start_sandbox(
        access_token="t",
        phone_number_id="1",
        webhook_url=str(client.make_url("/webhooks/whatsapp")),
        app_secret=settings.whatsapp_app_secret,
        webhook_delay_s=0.01,
    )
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer t"}) as http:
            body = {
                "messaging_product": "whatsapp",
                "to": "+14155550199",
                "type": "template",
                "template": {"name": "otp_code", "language": {"code": "en_US"}},
            }
            async with http.post(f"{base_url}/v21.0/1/messages", json=body) as r:
                assert r.status == 200, await r.text()
            await sandbox.wait_for_webhooks()
            async with http.get(f"{base_url}/") as r:
                page = await r.text()
    finally:
        await runner.cleanup()
    assert "<b>sent</b>, then <b>delivered</b>, then <b>read</b>" in page
    # The real api checked each signature and acknowledged each status.
    assert "<td>read</td><td>sent 200, delivered 200, read 200</td>" in page
