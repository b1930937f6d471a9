"""`tidings bounces` over real SMTP: DSNs and ARF reports written into fixtures, sent with
aiosmtplib to the bounce server, move the message and the suppression list; soft bounces,
auto-replies, forged tokens and mail for anyone else change nothing."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiosmtplib
import asyncpg
import pytest

from bounces.server import BounceServer, start
from shared import verp
from shared.config import Settings
from shared.sql import Q
from tests.helpers import unique_email
from tests.test_bounce_parsing import fixture

DOMAIN = "bounce.tidings.test"
SECRET = "bounce-server-test-secret-0123456789"
CONTENT: dict[str, Any] = {"from_email": "otp@tidings.test", "subject": "Code", "text_body": "Your code."}


@pytest.fixture
async def bounce_server(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[BounceServer]:
    server = await start(
        settings.replace(bounce_domain=DOMAIN, bounce_secret=SECRET, bounce_max_message_bytes=200_000),
        pool,
        host="127.0.0.1",
        port=0,
    )
    yield server
    await server.close()


@dataclasses.dataclass
class Sent:
    id: uuid.UUID
    to: str
    message_id_header: str
    contact_id: uuid.UUID

    @property
    def verp(self) -> str:
        return verp.envelope_sender(self.id, domain=DOMAIN, secret=SECRET)


async def insert_message(
    pool: asyncpg.Pool, org_id: uuid.UUID, to: str, status: str, contact_id: uuid.UUID | None
) -> uuid.UUID:
    message_id, send_id = uuid.uuid4(), uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.insert_send, send_id, org_id, None, contact_id, "api", f"req-{send_id.hex[:8]}", {})
        queue_at = await conn.fetchval("SELECT now() + interval '1 day'") if status == "scheduled" else None
        await conn.execute(
            Q.insert_transactional_message,
            message_id,
            send_id,
            org_id,
            contact_id,
            None,
            to,
            status,
            None,
            CONTENT,
            queue_at,
            False,
        )
        if status == "sent":
            await conn.execute(
                "UPDATE messages SET external_message_id = $2, sent_at = now() WHERE id = $1",
                message_id,
                f"<{message_id}@tidings.test>",
            )
    return message_id


async def sent_message(pool: asyncpg.Pool, org_id: uuid.UUID, tag: str) -> Sent:
    to = unique_email(tag)
    contact_id = uuid.uuid4()
    await pool.execute(Q.insert_contact, contact_id, org_id, "Ada", "subscribed", {})
    message_id = await insert_message(pool, org_id, to, "sent", contact_id)
    return Sent(message_id, to, f"<{message_id}@tidings.test>", contact_id)


async def deliver_report(server: BounceServer, raw: bytes, rcpt: str) -> None:
    """As a reporting MTA sends it: the null sender (`MAIL FROM:<>`), one recipient."""
    async with aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False) as smtp:
        await smtp.mail("")
        await smtp.rcpt(rcpt)
        await smtp.data(raw)


def report(name: str, sent: Sent, *, verp_address: str | None = None) -> bytes:
    return fixture(name, verp=verp_address or sent.verp, rcpt=sent.to, message_id=sent.message_id_header)


async def state(pool: asyncpg.Pool, org_id: uuid.UUID, sent: Sent) -> dict[str, Any]:
    return {
        "status": await pool.fetchval("SELECT status::text FROM messages WHERE id = $1", sent.id),
        "suppression": await pool.fetchval(
            "SELECT reason FROM suppressions WHERE org_id = $1 AND email = $2", org_id, sent.to.lower()
        ),
        "contact": await pool.fetchval("SELECT status::text FROM contacts WHERE id = $1", sent.contact_id),
        "events": [
            r["status"]
            for r in await pool.fetch(
                "SELECT status::text FROM message_events WHERE message_id = $1 ORDER BY id", sent.id
            )
        ],
    }


@pytest.mark.parametrize(
    "name", ["postfix_hard.eml", "gmail_hard.eml", "microsoft_hard.eml", "exim_hard.eml", "qmail_hard.eml"]
)
async def test_a_hard_bounce_bounces_the_message_and_suppresses_the_address(
    bounce_server: BounceServer, pool: asyncpg.Pool, org: Any, name: str
) -> None:
    sent = await sent_message(pool, org.id, "hard")
    waiting = await insert_message(pool, org.id, sent.to, "scheduled", None)
    raw = report(name, sent)

    await deliver_report(bounce_server, raw, sent.verp)
    after = await state(pool, org.id, sent)
    assert after["status"] == "bounced" and after["suppression"] == "hard_bounce"
    assert after["events"][-1] == "bounced" and after["contact"] == "subscribed"
    detail = await pool.fetchval(
        "SELECT detail FROM message_events WHERE message_id = $1 AND status = 'bounced'", sent.id
    )
    assert "5.1.1" in detail or "5.1.10" in detail
    assert await pool.fetchval("SELECT status::text FROM messages WHERE id = $1", waiting) == "rejected"

    # Read twice: nothing changes the second time.
    await deliver_report(bounce_server, raw, sent.verp)
    assert await state(pool, org.id, sent) == after


async def test_a_complaint_after_delivery_complains_and_unsubscribes(
    bounce_server: BounceServer, pool: asyncpg.Pool, org: Any
) -> None:
    sent = await sent_message(pool, org.id, "arf")
    raw = report("arf_complaint.eml", sent)
    await deliver_report(bounce_server, raw, sent.verp)
    after = await state(pool, org.id, sent)
    assert after["status"] == "complained" and after["suppression"] == "complaint"
    assert after["contact"] == "unsubscribed" and after["events"][-1] == "complained"
    await deliver_report(bounce_server, raw, sent.verp)
    assert await state(pool, org.id, sent) == after


async def test_a_complaint_may_follow_a_bounce_never_the_other_way(
    bounce_server: BounceServer, pool: asyncpg.Pool, org: Any
) -> None:
    sent = await sent_message(pool, org.id, "order")
    await pool.execute("UPDATE messages SET status = 'read' WHERE id = $1", sent.id)
    await deliver_report(bounce_server, report("postfix_hard.eml", sent), sent.verp)
    assert (await state(pool, org.id, sent))["status"] == "read"  # a final status: no bounce after it
    await deliver_report(bounce_server, report("arf_complaint.eml", sent), sent.verp)
    assert (await state(pool, org.id, sent))["status"] == "complained"


@pytest.mark.parametrize("name", ["postfix_delayed.eml", "exim_delay_warning.eml", "auto_reply.eml"])
async def test_soft_bounces_and_auto_replies_change_nothing(
    bounce_server: BounceServer, pool: asyncpg.Pool, org: Any, name: str
) -> None:
    sent = await sent_message(pool, org.id, "soft")
    before = await state(pool, org.id, sent)
    await deliver_report(bounce_server, report(name, sent), sent.verp)
    assert await state(pool, org.id, sent) == before == {**before, "status": "sent", "suppression": None}


async def test_a_forged_token_falls_back_to_the_quoted_message_id(
    bounce_server: BounceServer, pool: asyncpg.Pool, org: Any
) -> None:
    sent = await sent_message(pool, org.id, "forged")
    other = await sent_message(pool, org.id, "victim")
    # A token made without the secret for another message: not that message.
    forged = f"bounces+{verp.token_for(other.id, 'not-the-secret')}@{DOMAIN}"
    raw = report("postfix_hard.eml", sent, verp_address=forged)
    await deliver_report(bounce_server, raw, forged)
    assert (await state(pool, org.id, other))["status"] == "sent"
    # ...the report quotes the original Message-ID of `sent`, which tidings did send.
    assert (await state(pool, org.id, sent))["status"] == "bounced"

    # Neither a valid token nor a Message-ID tidings sent: accepted, nothing changes.
    stranger = await sent_message(pool, org.id, "stranger")
    raw = fixture("postfix_hard.eml", verp=forged, rcpt=stranger.to, message_id="<nobody@elsewhere.test>")
    await deliver_report(bounce_server, raw, forged)
    assert (await state(pool, org.id, stranger))["status"] == "sent"


async def test_other_recipients_malformed_and_huge_mail_are_refused_or_ignored(
    bounce_server: BounceServer, pool: asyncpg.Pool, org: Any
) -> None:
    sent = await sent_message(pool, org.id, "refused")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await deliver_report(bounce_server, report("postfix_hard.eml", sent), "someone@bounce.tidings.test")
    assert refused.value.code == 550
    with pytest.raises(aiosmtplib.SMTPRecipientRefused):
        await deliver_report(bounce_server, report("postfix_hard.eml", sent), "bounces+x@other.test")
    # postmaster@ is accepted, as RFC 5321 asks.
    await deliver_report(bounce_server, b"Subject: hello\r\n\r\nhi postmaster\r\n", f"postmaster@{DOMAIN}")
    # Garbage: accepted and ignored.
    await deliver_report(bounce_server, b"\x00\xff not mail at all\r\n", sent.verp)
    # Over the size limit: 552 at DATA.
    with pytest.raises(aiosmtplib.SMTPResponseException) as too_big:
        await deliver_report(bounce_server, report("postfix_hard.eml", sent) + (b"x" * 70 + b"\r\n") * 5_000, sent.verp)
    assert too_big.value.code == 552
    assert (await state(pool, org.id, sent))["status"] == "sent"
