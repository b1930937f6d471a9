"""Email over SMTP (aiosmtplib) through a small pool of reused connections.

Opening a connection per message costs more than the message, so each worker keeps up
to `smtp_pool_size` sessions open and hands them out one message at a time. A session
that saw any error is closed rather than reused: after a refused RCPT or a broken DATA
its state is not worth trusting.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

import aiosmtplib

from shared.config import Settings
from worker.channels.base import (
    DeliveryResult,
    PermanentDeliveryError,
    RenderedEmail,
    TransientDeliveryError,
)


def build_mime(msg: RenderedEmail) -> EmailMessage:
    mime = EmailMessage(policy=SMTP_POLICY)
    mime["Message-ID"] = msg.message_id
    mime["Date"] = email.utils.formatdate(usegmt=True)
    mime["From"] = email.utils.formataddr((msg.from_name or "", msg.from_email))
    mime["To"] = email.utils.formataddr((msg.to_name or "", msg.to))
    if msg.reply_to:
        mime["Reply-To"] = msg.reply_to
    mime["Subject"] = msg.subject
    for name, value in msg.headers.items():
        mime[name] = value
    mime.set_content(msg.text)
    if msg.html is not None:
        mime.add_alternative(msg.html, subtype="html")
    return mime


def _reply(code: int, message: str) -> str:
    return f"SMTP {code} {message}".strip()


class EmailChannel:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(settings.smtp_pool_size)

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            timeout=s.smtp_timeout_s,
            username=s.smtp_username or None,
            password=s.smtp_password or None,
            use_tls=s.smtp_tls == "tls",
            start_tls=s.smtp_tls == "starttls",
        )

    async def send(self, message: RenderedEmail) -> DeliveryResult:
        mime = build_mime(message)
        async with self._slots:
            client = self._idle.get_nowait() if not self._idle.empty() else self._client()
            healthy = False
            try:
                if not client.is_connected:
                    await client.connect()
                await client.send_message(mime, sender=message.from_email, recipients=[message.to])
                healthy = True
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients[0] if exc.recipients else None
                code, text = (refused.code, refused.message) if refused else (550, "recipient refused")
                raise _classify(code, text, hard_bounce=True) from exc
            except aiosmtplib.SMTPSenderRefused as exc:
                raise _classify(exc.code, exc.message, hard_bounce=False) from exc
            except aiosmtplib.SMTPDataError as exc:
                raise _classify(exc.code, exc.message, hard_bounce=True) from exc
            except (
                aiosmtplib.SMTPConnectError,
                aiosmtplib.SMTPServerDisconnected,
                aiosmtplib.SMTPTimeoutError,
                OSError,
                TimeoutError,
            ) as exc:
                raise TransientDeliveryError(f"SMTP connection failed: {exc}") from exc
            except aiosmtplib.SMTPResponseException as exc:
                raise _classify(exc.code, exc.message, hard_bounce=False) from exc
            finally:
                if healthy:
                    self._idle.put_nowait(client)
                else:
                    with contextlib.suppress(Exception):
                        client.close()
        return DeliveryResult(external_message_id=message.message_id)

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            with contextlib.suppress(Exception):
                await client.quit()


def _classify(code: int, text: str, *, hard_bounce: bool) -> TransientDeliveryError | PermanentDeliveryError:
    """SMTP 4xx: try again later. 5xx: never. A 5xx on RCPT/DATA is the address's own fault."""
    detail = _reply(code, text)
    if 400 <= code < 500:
        return TransientDeliveryError(detail)
    return PermanentDeliveryError(detail, hard_bounce=hard_bounce)
