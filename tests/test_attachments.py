"""Attachments end to end: both APIs -> Postgres -> the worker -> the real SMTP sink, and back.

A file must arrive byte for byte with its name (a non-ASCII one RFC 2231-encoded), be
refused with a 422 naming `attachments` (nothing sent) when it is unsafe, never reach a
WhatsApp message, and leave no bytes behind once its send is settled.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email
import email.policy
import io
import os
import uuid
from email.message import EmailMessage
from typing import Any

import asyncpg
import orjson
import pytest

from shared import attachments
from shared.config import Settings
from tests.helpers import EMAIL_TEMPLATE, WHATSAPP_TEMPLATE, eventually, make_broadcast, unique_email, unique_phone
from tests.transactionals_helpers import send as v1_send
from tests.transactionals_helpers import wait_status
from worker.attachments import AttachmentParts, reserved_bytes
from worker.channels.email import attachment_part

V1_SEND = "/api/v1/transactionals.json"
NON_ASCII_NAME = "Résumé - 履歴書.txt"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def parsed(mail: Any) -> EmailMessage:
    message = email.message_from_bytes(mail.raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def files_of(message: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    return [(p.get_filename(), p.get_content_type(), p.get_payload(decode=True)) for p in message.iter_attachments()]


async def post_large(client: Any, path: str, headers: dict[str, str], body: Any) -> Any:
    """POST a large JSON body (aiohttp wants a stream for one, not bytes)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post(path, headers={**headers, "Content-Type": "application/json"}, data=io.BytesIO(data))


async def send_id_of(pool: asyncpg.Pool, message_id: str) -> uuid.UUID:
    send_id: uuid.UUID = await pool.fetchval("SELECT send_id FROM messages WHERE id = $1", uuid.UUID(message_id))
    return send_id


async def stored(pool: asyncpg.Pool, send_id: uuid.UUID) -> int:
    return await attachments.count_for_send(pool, send_id)


async def messages_to(pool: asyncpg.Pool, address: str) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM messages WHERE to_address = $1", address)
    return count


# ---- the Transactionals API ----


async def test_transactional_attachments_arrive_byte_identical_then_are_erased(
    client: Any, org: Any, worker: Any, smtp_server: Any, pool: asyncpg.Pool
) -> None:
    to = unique_email()
    pdf, text = os.urandom(70_000), "Grüße\n".encode()
    out = await v1_send(
        client,
        org,
        {
            "to": to,
            "subject": "Your documents",
            "body": "<p>Attached.</p>",
            "attachments": [
                {"filename": "report.pdf", "content": b64(pdf)},
                {"filename": NON_ASCII_NAME, "content": b64(text), "content_type": "Text/Plain; charset=utf-8"},
            ],
        },
    )
    await wait_status(client, org, out["id"], "sent")
    (mail,) = await smtp_server.wait_for(1, rcpt=to)
    message = parsed(mail)
    assert message.get_content_type() == "multipart/mixed"
    body = message.get_body(("html",))
    assert body is not None and "Attached." in body.get_content()
    first = message.get_payload()[0]
    assert first.get_content_type() == "multipart/alternative"
    assert files_of(message) == [("report.pdf", "application/pdf", pdf), (NON_ASCII_NAME, "text/plain", text)]
    dispositions = [p["Content-Disposition"] for p in message.iter_attachments()]
    assert all(d.startswith("attachment") for d in dispositions)
    assert b"filename*=utf-8''" in mail.raw or b"filename*0*=utf-8''" in mail.raw

    # Settled: the bytes are gone (erased by the outcome write that made it final).
    send_id = await send_id_of(pool, out["id"])
    assert await stored(pool, send_id) == 0


async def test_a_scheduled_send_keeps_one_copy_until_final_and_the_sweep_erases_it(
    client: Any, org: Any, pool: asyncpg.Pool
) -> None:
    to = unique_email()
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    out = await v1_send(
        client,
        org,
        {
            "to": to,
            "subject": "Later",
            "body": "later",
            "queue_at": later,
            "attachments": [{"filename": "a.txt", "content": b64(b"a")}, {"filename": "b.txt", "content": b64(b"b")}],
        },
    )
    assert out["status"] == "scheduled"
    send_id = await send_id_of(pool, out["id"])
    assert await stored(pool, send_id) == 2
    sizes = await pool.fetch(
        "SELECT filename, content_type, size_bytes FROM attachments WHERE send_id = $1 ORDER BY position", send_id
    )
    assert [tuple(r) for r in sizes] == [("a.txt", "text/plain", 1), ("b.txt", "text/plain", 1)]
    # Still scheduled: the reconciler's sweep keeps them.
    await attachments.sweep_settled(pool)
    assert await stored(pool, send_id) == 2
    # Final without an outcome write (as a cancel is): the sweep erases them.
    await pool.execute("UPDATE messages SET status = 'canceled' WHERE id = $1", uuid.UUID(out["id"]))
    assert await attachments.sweep_settled(pool) >= 2
    assert await stored(pool, send_id) == 0


async def test_a_failed_message_erases_its_attachments(
    client: Any, org: Any, worker: Any, smtp_server: Any, pool: asyncpg.Pool
) -> None:
    to = unique_email("refused")
    smtp_server.reject_rcpt[to] = "550 5.1.1 no such user"
    try:
        out = await v1_send(
            client,
            org,
            {"to": to, "subject": "s", "body": "b", "attachments": [{"filename": "a.txt", "content": b64(b"x")}]},
        )
        await wait_status(client, org, out["id"], "failed")
    finally:
        smtp_server.reject_rcpt.pop(to, None)
    assert await stored(pool, await send_id_of(pool, out["id"])) == 0


# ---- refusals, on both surfaces ----

GOOD = {"filename": "ok.txt", "content": b64(b"ok")}
REFUSED = {
    "eleven files": [GOOD] * 11,
    "an .exe": [{"filename": "setup.exe", "content": b64(b"MZ")}],
    "a .JS, upper case": [{"filename": "run.JS", "content": b64(b"x")}],
    "an .exe with a trailing dot": [{"filename": "setup.exe.", "content": b64(b"MZ")}],
    "a .ps1 among good ones": [GOOD, {"filename": "x.ps1", "content": b64(b"x")}],
    "an executable content type": [
        {"filename": "notes.txt", "content": b64(b"MZ"), "content_type": "application/x-msdownload"}
    ],
    "bad base64": [{"filename": "a.txt", "content": "not base64!"}],
    "base64 missing its padding": [{"filename": "a.txt", "content": "YWJjZA"}],
    "an empty filename": [{"filename": "", "content": b64(b"x")}],
    "no filename": [{"content": b64(b"x")}],
    "a path": [{"filename": "../etc/passwd", "content": b64(b"x")}],
    "a Windows path": [{"filename": "C:\\temp\\a.txt", "content": b64(b"x")}],
    "a control character": [{"filename": "a\r\nb.txt", "content": b64(b"x")}],
    "a bidi override": [{"filename": "invoice\u202etxt.pdf", "content": b64(b"x")}],
    "no content": [{"filename": "a.txt"}],
    "a content type that is not one": [
        {"filename": "a.txt", "content": b64(b"x"), "content_type": "text/plain\r\nBcc: x@y.z"}
    ],
    "a content type with a non-ASCII parameter": [
        {"filename": "a.txt", "content": b64(b"x"), "content_type": 'text/plain; name="é"'}
    ],
    "an executable content type with parameters": [
        {"filename": "a.txt", "content": b64(b"x"), "content_type": "Application/X-MSDownload; x=y"}
    ],
    "not a list": {"filename": "a.txt"},
    "an unknown field": [{"filename": "a.txt", "content": b64(b"x"), "size": 1}],
}


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_transactional_refusals_name_attachments_and_send_nothing(
    client: Any, org: Any, pool: asyncpg.Pool, case: str
) -> None:
    to = unique_email()
    r = await client.post(
        V1_SEND,
        headers=org.auth("write"),
        json={"to": to, "subject": "s", "body": "b", "attachments": REFUSED[case]},
    )
    body = await r.json()
    assert r.status == 422, body
    assert list(body["errors"]) == ["attachments"], body
    assert await messages_to(pool, to) == 0


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_broadcast_refusals_name_attachments_and_send_nothing(
    client: Any, org: Any, pool: asyncpg.Pool, case: str
) -> None:
    b = await make_broadcast(client, org)
    to = unique_email()
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": to, "variables": {"otp": "1"}, "attachments": REFUSED[case]},
    )
    body = await r.json()
    assert r.status == 422, body
    assert body["error"]["code"] == "validation_error"
    assert list(body["error"]["fields"]) == ["attachments"], body
    assert "attachments" in body["error"]["message"]
    assert await messages_to(pool, to) == 0
    # Refused before the recipient was looked up: no contact was made for the address either.
    assert await pool.fetchval("SELECT count(*) FROM contact_channels WHERE address = $1", to) == 0


async def test_v1_reports_attachments_with_the_other_problems(client: Any, org: Any) -> None:
    r = await client.post(
        V1_SEND,
        headers=org.auth("write"),
        json={"to": unique_email(), "body": "b", "attachments": [{"filename": "x.bat", "content": b64(b"x")}]},
    )
    body = await r.json()
    assert r.status == 422
    assert set(body["errors"]) == {"subject", "attachments"}
    assert body["errors"]["attachments"] == ["attachments[0].filename is an executable type, which is never attached"]


# ---- the Broadcasts API: every email that fires carries them, WhatsApp ignores them ----


async def test_broadcast_emails_carry_the_attachments_and_whatsapp_ignores_them(
    client: Any, org: Any, worker: Any, smtp_server: Any, wa_sandbox: Any, pool: asyncpg.Pool
) -> None:
    second = {**EMAIL_TEMPLATE, "subject": "Second {{ otp }}"}
    b = await make_broadcast(client, org, templates=[EMAIL_TEMPLATE, second, WHATSAPP_TEMPLATE])
    to, phone = unique_email(), unique_phone()
    data = os.urandom(200_000)
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={
            "email": to,
            "phone": phone,
            "variables": {"otp": "42"},
            "attachments": [
                {"filename": "scan.png", "content": b64(data)},
                {"filename": NON_ASCII_NAME, "content": b64(b"hi")},
            ],
        },
    )
    out = await r.json()
    assert r.status == 200, out
    assert sorted(rec["status"] for rec in out["recipients"]) == ["sent", "sent", "sent"]
    mails = await smtp_server.wait_for(2, rcpt=to)
    for mail in mails:
        assert files_of(parsed(mail)) == [("scan.png", "image/png", data), (NON_ASCII_NAME, "text/plain", b"hi")]
    assert len(wa_sandbox.messages_to(phone)) == 1
    # Erased by the outcome write that settled the last email, or else by the reconciler's sweep.
    send_id = uuid.UUID(out["send_id"])

    async def erased() -> bool:
        return await stored(pool, send_id) == 0

    await eventually(erased, timeout_s=15)


async def test_a_whatsapp_only_send_stores_nothing(client: Any, org: Any, worker: Any, pool: asyncpg.Pool) -> None:
    b = await make_broadcast(client, org, templates=[WHATSAPP_TEMPLATE])
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"phone": unique_phone(), "variables": {"otp": "7"}, "background": True, "attachments": [GOOD]},
    )
    out = await r.json()
    assert r.status == 202, out
    assert await stored(pool, uuid.UUID(out["send_id"])) == 0


# ---- the size limits ----


async def test_ten_megabytes_are_accepted_and_delivered_one_byte_more_is_refused(
    client: Any, org: Any, worker: Any, smtp_server: Any, settings: Settings
) -> None:
    limit = settings.max_attachment_bytes
    assert limit == 10 * 1024 * 1024
    data = os.urandom(limit)
    to = unique_email()
    big = {"to": to, "subject": "big", "body": "big", "attachments": [{"filename": "big.bin", "content": b64(data)}]}
    r = await post_large(client, V1_SEND, org.auth("write"), big)
    out = await r.json()
    assert r.status == 201, out
    await wait_status(client, org, out["id"], "sent", timeout_s=60)
    (mail,) = await smtp_server.wait_for(1, rcpt=to)
    ((name, _, got),) = files_of(parsed(mail))
    assert name == "big.bin" and got == data
    del got, mail

    over = data + b"!"
    one_more = {**big, "to": unique_email(), "attachments": [{"filename": "big.bin", "content": b64(over)}]}
    r = await post_large(client, V1_SEND, org.auth("write"), one_more)
    body = await r.json()
    assert r.status == 422, body
    assert "attachments" in body["errors"]

    # Split over files, the total counts.
    half = b64(data[: limit // 2 + 1])
    b = await make_broadcast(client, org)
    split = {
        "email": unique_email(),
        "variables": {"otp": "1"},
        "attachments": [{"filename": "a.bin", "content": half}, {"filename": "b.bin", "content": half}],
    }
    r = await post_large(client, org.path(f"/broadcasts/{b['id']}/send"), org.auth("write"), split)
    body = await r.json()
    assert r.status == 422 and list(body["error"]["fields"]) == ["attachments"], body


async def test_the_body_limit_grows_by_the_attachments_base64_and_no_further(
    client: Any, org: Any, settings: Settings
) -> None:
    limit = attachments.body_limit_bytes(settings.max_body_bytes, settings.max_attachment_bytes)
    assert limit == 262144 + 13981016 + 40
    # A body just over it is refused before it is decoded.
    r = await post_large(client, V1_SEND, org.auth("write"), b" " * (limit + 1))
    assert r.status == 413, await r.text()
    # One byte less is read and decoded (spaces are not JSON: 400, not 413).
    r = await post_large(client, V1_SEND, org.auth("write"), b" " * limit)
    assert r.status == 400, await r.text()
    # Other routes keep MAX_BODY_BYTES.
    r = await post_large(client, org.path("/contacts"), org.auth(), b" " * (settings.max_body_bytes + 1))
    assert r.status == 413


# ---- the worker shares one load per send ----


async def test_the_messages_of_a_send_share_one_encoded_copy(client: Any, org: Any, pool: asyncpg.Pool) -> None:
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
    out = await v1_send(
        client,
        org,
        {"to": unique_email(), "subject": "s", "body": "b", "queue_at": later, "attachments": [GOOD]},
    )
    send_id = await send_id_of(pool, out["id"])
    parts = AttachmentParts(pool)

    async def deliver() -> tuple[bytes, ...]:
        async with parts.hold(send_id, 2) as files:
            await asyncio.sleep(0.05)
            return files

    first, second = await asyncio.gather(deliver(), deliver())
    assert len(first) == 1 and first[0] is second[0]
    assert b'filename="ok.txt"' in first[0] and first[0].endswith(b64(b"ok").encode())
    assert len(parts) == 0 and parts.budget.used_bytes == 0  # let go once no message holds them

    # A spent budget makes the next message wait its turn (one always goes, however large).
    small = AttachmentParts(pool, budget_bytes=reserved_bytes(2))
    entered = asyncio.Event()

    async def second_message() -> None:
        async with small.hold(send_id, 2):
            entered.set()

    async with small.hold(send_id, 2):
        waiting = asyncio.create_task(second_message())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not entered.is_set()
    await asyncio.wait_for(waiting, 5)
    assert entered.is_set() and small.budget.used_bytes == 0

    await pool.execute("UPDATE messages SET status = 'canceled' WHERE id = $1", uuid.UUID(out["id"]))
    await attachments.sweep_settled(pool)


# ---- the MIME part itself ----


def test_filenames_are_quoted_or_rfc2231_encoded() -> None:
    short = attachment_part("été.pdf", "application/pdf", b"%PDF")
    assert b"Content-Disposition: attachment;\r\n filename*=utf-8''%C3%A9t%C3%A9.pdf\r\n" in short
    plain = attachment_part('a "quoted" name.txt', "text/plain", b"x")
    assert b'filename="a \\"quoted\\" name.txt"' in plain
    long_name = "ü" * 100 + ".txt"
    long = attachment_part(long_name, "text/plain", b"x")
    header_lines = long.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    assert all(len(line) <= 78 for line in header_lines), header_lines
    message = email.message_from_bytes(
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + long + b"\r\n--b--\r\n",
        policy=email.policy.default,
    )
    assert isinstance(message, EmailMessage)
    ((name, _, content),) = files_of(message)
    assert name == long_name and content == b"x"
