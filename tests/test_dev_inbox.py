"""The local SMTP inbox: real SMTP in (aiosmtplib), messages kept and parsed, the web page,
and the hooks that make it refuse like a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest

from tidings.dev.inbox import ADDRESS_TRIGGERS, Inbox, InboxHandler, start_inbox, start_smtp


@pytest.fixture
async def inbox(tmp_path: Path) -> AsyncIterator[Inbox]:
    inbox = await start_inbox("127.0.0.1", 0, "127.0.0.1", 0, tmp_path)
    yield inbox
    await inbox.close()


def otp_email(to: str = "ada@example.com", *, subject: str = "Your code is 123456") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Tidings demo <otp@tidings.local>"
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = "<abc.123@tidings.local>"
    message["Date"] = "Sun, 22 Nov 2026 10:00:05 +0000"
    message.set_content("Your code is 123456.\nConfirm: https://tidings.test/confirm/tok123\n")
    message.add_alternative(
        '<p>Your code is <b>123456</b>. <a href="https://tidings.test/confirm/tok123">Confirm</a>'
        "<script>alert(1)</script></p>",
        subtype="html",
    )
    return message


async def send(
    port: int, message: EmailMessage | bytes, recipients: list[str] | None = None
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    if isinstance(message, bytes):
        return await aiosmtplib.send(
            message, hostname="127.0.0.1", port=port, start_tls=False, sender="otp@tidings.local", recipients=recipients
        )
    return await aiosmtplib.send(message, hostname="127.0.0.1", port=port, start_tls=False)


async def test_message_is_kept_parsed_and_written_to_disk(inbox: Inbox, tmp_path: Path) -> None:
    sent = otp_email()
    await send(inbox.smtp_port, sent)

    (m,) = await inbox.handler.wait_for(1, rcpt="ADA@example.com")
    assert m.number == 1
    assert m.mail_from == "otp@tidings.local" and m.rcpt_tos == ("ada@example.com",)
    assert m.from_ == "Tidings demo <otp@tidings.local>" and m.to == "ada@example.com"
    assert m.subject == "Your code is 123456"
    assert m.message_id == "<abc.123@tidings.local>"
    assert m.date is not None and m.date.isoformat() == "2026-11-22T10:00:05+00:00"
    assert m.text is not None and "Your code is 123456." in m.text
    assert m.html is not None and "<b>123456</b>" in m.html
    assert (m.header("content-type") or "").startswith("multipart/alternative")
    assert m.links() == ["https://tidings.test/confirm/tok123"]
    assert m.email()["Subject"] == "Your code is 123456"
    assert inbox.messages == [m]

    # The exact bytes received, also on disk.
    assert m.raw.startswith(b"From: Tidings demo")
    assert (tmp_path / "inbox" / "1.eml").read_bytes() == m.raw


async def test_web_page_lists_and_shows_messages(inbox: Inbox) -> None:
    await send(inbox.smtp_port, otp_email(subject="First <one>"))
    await send(inbox.smtp_port, otp_email(subject="Second"))
    await inbox.handler.wait_for(2)

    async with aiohttp.ClientSession(inbox.web_url) as http:
        async with http.get("/") as r:
            assert r.status == 200
            page = await r.text()
            assert "Content-Security-Policy" in r.headers
        # Newest first, and escaped.
        assert page.index("Second") < page.index("First &lt;one&gt;")
        assert "First <one>" not in page

        async with http.get("/messages/1") as r:
            assert r.status == 200
            page = await r.text()
        assert "First &lt;one&gt;" in page and "Tidings demo &lt;otp@tidings.local&gt;" in page
        assert 'src="/messages/1/html"' in page and "sandbox=" in page
        assert "https://tidings.test/confirm/tok123" in page
        assert "<script>" not in page

        async with http.get("/messages/1/html") as r:
            assert r.status == 200
            # The message's own HTML, served as is but unable to run anything.
            assert "<script>alert(1)</script>" in await r.text()
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "sandbox" in csp

        async with http.get("/messages/1.eml") as r:
            assert r.status == 200 and r.content_type == "message/rfc822"
            assert await r.read() == inbox.messages[0].raw

        async with http.get("/api/messages") as r:
            body = await r.json()
        assert [m["subject"] for m in body["data"]] == ["Second", "First <one>"]
        assert body["data"][0]["rcpt_tos"] == ["ada@example.com"]
        assert body["data"][0]["message_id"] == "<abc.123@tidings.local>"

        async with http.get("/messages/99") as r:
            assert r.status == 404


async def test_reject_rcpt_refuses_the_recipient_with_the_given_reply(inbox: Inbox) -> None:
    inbox.handler.reject_rcpt["Nobody@example.com"] = "550 5.1.1 user unknown"

    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        await send(inbox.smtp_port, otp_email("nobody@example.com"))
    (error,) = refused.value.recipients
    assert (error.code, error.message, error.recipient) == (550, "5.1.1 user unknown", "nobody@example.com")

    # With another recipient accepted, the message goes to that one only.
    message = otp_email("nobody@example.com, ada@example.com")
    errors, _ = await send(inbox.smtp_port, message)
    assert errors["nobody@example.com"].code == 550
    (m,) = await inbox.handler.wait_for(1)
    assert m.rcpt_tos == ("ada@example.com",)


async def test_fail_data_once_answers_451_then_accepts(inbox: Inbox) -> None:
    inbox.handler.fail_data_once["ada@example.com"] = "451 4.3.0 try again later"

    with pytest.raises(aiosmtplib.SMTPDataError) as failed:
        await send(inbox.smtp_port, otp_email())
    assert (failed.value.code, failed.value.message) == (451, "4.3.0 try again later")
    assert inbox.messages == []
    assert inbox.handler.fail_data_once == {}

    await send(inbox.smtp_port, otp_email())
    assert len(await inbox.handler.wait_for(1)) == 1


async def test_reject_data_answers_every_time() -> None:
    smtp = await start_smtp()
    try:
        smtp.reject_data["ada@example.com"] = "554 5.7.1 message refused"
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPDataError) as failed:
                await send(smtp.port, otp_email())
            assert failed.value.code == 554
        assert smtp.messages == []
    finally:
        await smtp.close()


async def test_trigger_addresses_are_refused_as_their_table_says(inbox: Inbox) -> None:
    assert {t.stage for t in ADDRESS_TRIGGERS} == {"RCPT", "DATA"}
    for trigger in ADDRESS_TRIGGERS:
        code, _, text = trigger.reply.partition(" ")
        # Any domain and any case; a "+tag" makes another address with the same behaviour.
        for to in (trigger.example(), trigger.example("mail.test").upper(), f"{trigger.local_part}+1@example.com"):
            refused_for = trigger.times or 3  # "every time": a few attempts show it
            for _ in range(refused_for):
                if trigger.stage == "RCPT":
                    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                        await send(inbox.smtp_port, otp_email(to))
                    (error,) = refused.value.recipients
                    assert (error.code, error.message) == (int(code), text), to
                else:
                    with pytest.raises(aiosmtplib.SMTPDataError) as failed:
                        await send(inbox.smtp_port, otp_email(to))
                    assert (failed.value.code, failed.value.message) == (int(code), text), to
            if trigger.times is not None:
                await send(inbox.smtp_port, otp_email(to))
                await inbox.handler.wait_for(1, rcpt=to)
        assert trigger.transient == code.startswith("4")
    # Only greylisting lets anything through; a name that merely starts like a trigger is ordinary.
    greylisted = [t for t in ADDRESS_TRIGGERS if t.times is not None]
    assert len(inbox.messages) == 3 * len(greylisted)
    await send(inbox.smtp_port, otp_email("bounce-7@example.com"))
    await inbox.handler.wait_for(1, rcpt="bounce-7@example.com")


async def test_the_page_lists_every_trigger_address(inbox: Inbox) -> None:
    async with aiohttp.ClientSession(inbox.web_url) as http, http.get("/") as r:
        page = await r.text()
    section = page[page.index('id="failures"') :]
    for trigger in ADDRESS_TRIGGERS:
        row = section[section.index(f"<td>{trigger.local_part}@") :].split("</tr>", 1)[0]
        assert trigger.example() in row and trigger.stage in row and trigger.reply in row, row
        assert ("transient" if trigger.transient else "permanent") in row


def eml_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_numbering_continues_across_restarts_and_memory_is_bounded(tmp_path: Path) -> None:
    (tmp_path / "7.eml").write_bytes(b"Subject: from an earlier run\r\n\r\nhi\r\n")
    smtp = await start_smtp(handler=InboxHandler(eml_dir=tmp_path, max_messages=2))
    try:
        for n in range(3):
            await send(smtp.port, otp_email(subject=f"n{n}"))
        assert [m.number for m in smtp.messages] == [9, 10]  # 8 was dropped from memory
        assert eml_files(tmp_path) == ["10.eml", "7.eml", "8.eml", "9.eml"]
        assert (tmp_path / "7.eml").read_bytes().startswith(b"Subject: from an earlier run")
    finally:
        await smtp.close()


async def test_a_malformed_message_is_still_kept() -> None:
    smtp = await start_smtp()
    try:
        raw = b"Subject: =?bogus-charset?q?x?=\r\nContent-Type: text/plain; charset=nope\r\n\r\n\xff\xfe broken\r\n"
        await send(smtp.port, raw, recipients=["ada@example.com"])
        (m,) = await smtp.wait_for(1)
        assert m.raw.endswith(b"\xff\xfe broken\r\n")
        assert m.from_ == "" and m.date is None
    finally:
        await smtp.close()


async def test_close_ends_open_sessions_and_wait_for_times_out() -> None:
    smtp = await start_smtp()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp.port, start_tls=False)
    await client.connect()
    await client.ehlo()
    with pytest.raises(TimeoutError):
        await smtp.wait_for(1, timeout_s=0.05)
    await smtp.close()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await client.noop()
    client.close()
    await asyncio.sleep(0)
