"""Meta's webhooks against the full app and Postgres: the handshake, the signature, and how
status updates move messages (never backwards; `failed` after sent/delivered) with events."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import time
import uuid
from typing import Any

import asyncpg
import orjson
from aiohttp.test_utils import TestClient

# Importing registers the routes before the session's app is built (api.app may not import it yet).
import api.whatsapp_webhooks  # noqa: F401
from shared.config import Settings
from tests.helpers import eventually, unique_phone
from tidings.dev.whatsapp_sandbox import start_sandbox
from worker.channels.base import RenderedWhatsApp
from worker.channels.whatsapp import WhatsAppChannel

PATH = "/webhooks/whatsapp"


async def create_message(
    pool: asyncpg.Pool,
    org_id: uuid.UUID,
    *,
    status: str = "sent",
    wamid: str | None = None,
    to: str | None = None,
    channel: str = "whatsapp",
) -> tuple[uuid.UUID, str]:
    """A message row as the worker leaves it after the provider accepted it (WhatsApp unless
    `channel` says otherwise); returns (id, external id)."""
    wamid = wamid or f"wamid.test-{uuid.uuid4().hex}"
    send_id, message_id = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO sends (id, org_id, source, variables) VALUES ($1, $2, 'api', $3)", send_id, org_id, {}
        )
        await conn.execute(
            """INSERT INTO messages (id, send_id, org_id, channel, to_address, status, source,
                                     external_message_id, sent_at)
               VALUES ($1, $2, $3, $4, $5, $6, 'api', $7, now())""",
            message_id,
            send_id,
            org_id,
            channel,
            to or (unique_phone() if channel == "whatsapp" else f"{uuid.uuid4().hex}@example.com"),
            status,
            wamid,
        )
    return message_id, wamid


def status(wamid: str, name: str, at: int, **extra: Any) -> dict[str, Any]:
    return {"id": wamid, "status": name, "timestamp": str(at), "recipient_id": "14155550123", **extra}


def payload(*statuses: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "102290129340398",
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {"display_phone_number": "15550783881", "phone_number_id": "1000001"},
                                "statuses": list(statuses),
                            },
                            "field": "messages",
                        }
                    ],
                }
            ],
        }
    )


def signed(raw: bytes, secret: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest(),
    }


async def post(client: TestClient[Any, Any], settings: Settings, raw: bytes) -> dict[str, Any]:
    r = await client.post(PATH, data=raw, headers=signed(raw, settings.whatsapp_app_secret))
    assert r.status == 200, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def message_row(pool: asyncpg.Pool, message_id: uuid.UUID) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT status, error, updated_at FROM messages WHERE id = $1", message_id)
    assert row is not None
    return row


async def events(pool: asyncpg.Pool, message_id: uuid.UUID) -> list[tuple[str, datetime.datetime, str | None]]:
    rows = await pool.fetch(
        "SELECT status, at, detail FROM message_events WHERE message_id = $1 ORDER BY id", message_id
    )
    return [(r["status"], r["at"], r["detail"]) for r in rows]


def utc(ts: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


# -- the verification handshake -------------------------------------------------------------


async def test_handshake_echoes_the_challenge(client: TestClient[Any, Any], settings: Settings) -> None:
    r = await client.get(
        PATH,
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": settings.whatsapp_verify_token,
            "hub.challenge": "1158201444",
        },
    )
    assert r.status == 200
    assert r.content_type == "text/plain"
    assert await r.text() == "1158201444"


async def test_handshake_with_a_wrong_token_is_forbidden(client: TestClient[Any, Any]) -> None:
    r = await client.get(
        PATH, params={"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1158201444"}
    )
    assert r.status == 403
    text = await r.text()
    assert "1158201444" not in text
    assert orjson.loads(text)["error"]["code"] == "forbidden"


async def test_handshake_needs_the_subscribe_mode(client: TestClient[Any, Any], settings: Settings) -> None:
    r = await client.get(PATH, params={"hub.verify_token": settings.whatsapp_verify_token, "hub.challenge": "1"})
    assert r.status == 403


# -- the signature --------------------------------------------------------------------------


async def test_unsigned_or_wrongly_signed_updates_are_refused(
    client: TestClient[Any, Any], pool: asyncpg.Pool, org: Any
) -> None:
    message_id, wamid = await create_message(pool, org.id)
    raw = payload(status(wamid, "delivered", int(time.time())))
    for headers in (
        {},
        signed(raw, "not-the-secret"),
        {"X-Hub-Signature-256": "sha1=abc"},
        {"X-Hub-Signature-256": signed(raw + b" ", "x")["X-Hub-Signature-256"]},
    ):
        r = await client.post(PATH, data=raw, headers=headers)
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthorized"
    assert (await message_row(pool, message_id))["status"] == "sent"


async def test_signed_garbage_is_a_bad_request(client: TestClient[Any, Any], settings: Settings) -> None:
    raw = b"{not json"
    r = await client.post(PATH, data=raw, headers=signed(raw, settings.whatsapp_app_secret))
    assert r.status == 400
    assert (await r.json())["error"]["code"] == "invalid_json"


# -- applying statuses ----------------------------------------------------------------------


async def test_delivered_then_read_are_applied_with_metas_timestamps(
    client: TestClient[Any, Any], settings: Settings, pool: asyncpg.Pool, org: Any
) -> None:
    message_id, wamid = await create_message(pool, org.id)
    before = (await message_row(pool, message_id))["updated_at"]
    t = int(time.time()) - 60

    assert await post(client, settings, payload(status(wamid, "delivered", t))) == {"received": 1, "applied": 1}
    row = await message_row(pool, message_id)
    assert row["status"] == "delivered" and row["updated_at"] > before
    assert await post(client, settings, payload(status(wamid, "read", t + 5))) == {"received": 1, "applied": 1}
    assert (await message_row(pool, message_id))["status"] == "read"
    assert await events(pool, message_id) == [("delivered", utc(t), None), ("read", utc(t + 5), None)]

    # The timeline is visible through the monitoring API too.
    r = await client.get(org.path(f"/messages/{message_id}"), headers=org.auth("read"))
    assert r.status == 200
    body = await r.json()
    assert body["status"] == "read"
    assert [e["status"] for e in body["events"]] == ["delivered", "read"]


async def test_a_status_naming_an_emails_message_id_moves_nothing(
    client: TestClient[Any, Any], settings: Settings, pool: asyncpg.Pool, org: Any
) -> None:
    # An email's external id is its Message-ID; a signed WhatsApp status that names it (by
    # accident or forged) must not move the email: the webhook speaks for WhatsApp only.
    message_id, message_id_header = await create_message(
        pool, org.id, channel="email", wamid=f"<{uuid.uuid4()}@example.com>"
    )
    raw = payload(status(message_id_header, "read", int(time.time())))
    assert await post(client, settings, raw) == {"received": 1, "applied": 0}
    assert (await message_row(pool, message_id))["status"] == "sent"
    assert await events(pool, message_id) == []


async def test_statuses_never_move_backwards(
    client: TestClient[Any, Any], settings: Settings, pool: asyncpg.Pool, org: Any
) -> None:
    message_id, wamid = await create_message(pool, org.id, status="read")
    t = int(time.time())
    for late in ("delivered", "sent"):
        assert await post(client, settings, payload(status(wamid, late, t))) == {"received": 1, "applied": 0}
    assert (await message_row(pool, message_id))["status"] == "read"
    assert await events(pool, message_id) == []


async def test_a_repeated_webhook_changes_nothing_the_second_time(
    client: TestClient[Any, Any], settings: Settings, pool: asyncpg.Pool, org: Any
) -> None:
    message_id, wamid = await create_message(pool, org.id)
    raw = payload(status(wamid, "delivered", int(time.time())))
    assert (await post(client, settings, raw))["applied"] == 1
    assert (await post(client, settings, raw))["applied"] == 0
    assert [e[0] for e in await events(pool, message_id)] == ["delivered"]


async def test_failed_after_sent_is_applied_with_metas_error(
    client: TestClient[Any, Any], settings: Settings, pool: asyncpg.Pool, org: Any
) -> None:
    message_id, wamid = await create_message(pool, org.id)
    t = int(time.time())
    failed = status(
        wamid,
        "failed",
        t,
        errors=[
            {
                "code": 131026,
                "title": "Message undeliverable",
                "message": "Message undeliverable",
                "error_data": {"details": "Message Undeliverable."},
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }
        ],
    )
    assert (await post(client, settings, payload(failed)))["applied"] == 1
    row = await message_row(pool, message_id)
    assert row["status"] == "failed"
    assert row["error"] == "whatsapp error 131026: Message undeliverable - Message Undeliverable."
    assert await events(pool, message_id) == [("failed", utc(t), row["error"])]


async def test_failed_after_delivered_is_applied_but_not_after_read(
    client: TestClient[Any, Any], settings: Settings, pool: asyncpg.Pool, org: Any
) -> None:
    delivered_id, delivered_wamid = await create_message(pool, org.id, status="delivered")
    read_id, read_wamid = await create_message(pool, org.id, status="read")
    t = int(time.time())
    errors = [{"code": 131000, "title": "Something went wrong"}]
    body = await post(
        client,
        settings,
        payload(status(delivered_wamid, "failed", t, errors=errors), status(read_wamid, "failed", t, errors=errors)),
    )
    assert body == {"received": 2, "applied": 1}
    assert (await message_row(pool, delivered_id))["status"] == "failed"
    assert (await message_row(pool, delivered_id))["error"] == "whatsapp error 131000: Something went wrong"
    assert (await message_row(pool, read_id))["status"] == "read"


async def test_unknown_wamids_are_acknowledged_and_ignored(client: TestClient[Any, Any], settings: Settings) -> None:
    raw = payload(status(f"wamid.unknown-{uuid.uuid4().hex}", "delivered", int(time.time())))
    assert await post(client, settings, raw) == {"received": 1, "applied": 0}


async def test_payloads_without_statuses_are_acknowledged(client: TestClient[Any, Any], settings: Settings) -> None:
    inbound = orjson.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "1",
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "messages": [
                                    {"from": "14155550123", "id": "wamid.in", "type": "text", "text": {"body": "hi"}}
                                ],
                            },
                            "field": "messages",
                        }
                    ],
                }
            ],
        }
    )
    assert await post(client, settings, inbound) == {"received": 0, "applied": 0}


async def test_a_batch_is_applied_per_message_in_progress_order(
    client: TestClient[Any, Any], settings: Settings, pool: asyncpg.Pool, org: Any
) -> None:
    a_id, a_wamid = await create_message(pool, org.id)
    b_id, b_wamid = await create_message(pool, org.id)
    t = int(time.time()) - 30
    # Meta batches under load, and the order inside a batch is not guaranteed.
    raw = payload(
        status(a_wamid, "read", t + 2),
        status(a_wamid, "sent", t),
        status(a_wamid, "delivered", t + 1),
        status(b_wamid, "delivered", t + 3),
        status(b_wamid, "delivered", t + 3),
    )
    assert await post(client, settings, raw) == {"received": 5, "applied": 2}
    assert (await message_row(pool, a_id))["status"] == "read"
    assert await events(pool, a_id) == [("delivered", utc(t + 1), None), ("read", utc(t + 2), None)]
    assert (await message_row(pool, b_id))["status"] == "delivered"
    assert await events(pool, b_id) == [("delivered", utc(t + 3), None)]


# -- end to end: the sandbox's own signed webhooks into the app ------------------------------


async def test_sandbox_webhooks_carry_a_sent_message_to_read(
    client: TestClient[Any, Any], settings: Settings, pool: asyncpg.Pool, org: Any
) -> None:
    runner, base_url, sandbox = await start_sandbox(
        "127.0.0.1",
        0,
        access_token="e2e-token",
        phone_number_id="2000002",
        webhook_url=str(client.make_url(PATH)),
        app_secret=settings.whatsapp_app_secret,
        # Long enough for the row below to hold the wamid before `delivered` arrives.
        webhook_delay_s=0.2,
    )
    channel = WhatsAppChannel(
        settings.replace(
            whatsapp_api_base_url=base_url, whatsapp_access_token="e2e-token", whatsapp_phone_number_id="2000002"
        )
    )
    try:
        to = unique_phone()
        result = await channel.send(
            RenderedWhatsApp(
                to=to,
                template_name="otp_code",
                language="en_US",
                body_parameters=["123456"],
                button_parameters=["123456"],
            )
        )
        message_id, _ = await create_message(pool, org.id, wamid=result.external_message_id, to=to)

        async def is_read() -> bool:
            return bool((await message_row(pool, message_id))["status"] == "read")

        await eventually(is_read, timeout_s=5.0)
        await sandbox.wait_for_webhooks()
    finally:
        await channel.close()
        await runner.cleanup()
    assert [e[0] for e in await events(pool, message_id)] == ["delivered", "read"]
    assert all(w["http_status"] == 200 for w in sandbox.webhooks)
