"""Bounce and complaint reports the dev inbox sends about a message it received.

A mailbox provider that cannot deliver a message, or whose user marks it as spam, mails a
report to the message's envelope sender (its Return-Path): an RFC 3464 delivery status
notification or an RFC 5965 ARF feedback report. The dev inbox plays that provider: its
"Bounce" and "Complain" buttons build such a report with the stdlib `email` package and send
it over real SMTP to `tidings bounces`, addressed to the envelope sender the inbox kept (the
VERP address `bounces+{token}@{BOUNCE_DOMAIN}` when the worker uses one). Nothing is faked
on the tidings side: the bounce server reads the report as it would one from Gmail.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.message
import email.policy
import email.utils
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from enum import StrEnum
from typing import TYPE_CHECKING

import aiosmtplib
import structlog

from shared import verp

if TYPE_CHECKING:
    from tidings.dev.inbox import InboxMessage

log = structlog.get_logger("tidings.inbox")

# The name the inbox reports as (Reporting-MTA, the feedback report's User-Agent).
REPORTING_MTA = "inbox.tidings.localhost"
SEND_TIMEOUT_S = 10.0
# What the inbox says when refusing a recipient: the same as its `bounce@` trigger.
BOUNCE_STATUS = "5.1.1"
BOUNCE_DIAGNOSTIC = "550 5.1.1 The email account that you tried to reach does not exist"


class ReportKind(StrEnum):
    bounce = "bounce"
    complaint = "complaint"


@dataclasses.dataclass(frozen=True, slots=True)
class ReportOutcome:
    """One report sent (or not): shown on the message's page."""

    kind: ReportKind
    sent_at: dt.datetime
    to: str
    ok: bool
    reply: str
    # The tidings message the VERP address names, when the inbox knows the secret.
    tidings_message_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BounceTarget:
    """Where reports go: the bounce server's SMTP address. The inbox routes every report there,
    as a bounce domain's MX would. With the domain and secret, it also reads which tidings
    message a VERP envelope sender names, for the page."""

    host: str
    port: int
    domain: str = ""
    secret: str = ""

    def message_for(self, address: str) -> str | None:
        if not (self.domain and self.secret):
            return None
        found = verp.message_for_address(address, domain=self.domain, secret=self.secret)
        return str(found) if found else None


def _recipient(message: InboxMessage) -> str:
    return message.rcpt_tos[0] if message.rcpt_tos else (email.utils.parseaddr(message.to)[1] or "unknown")


def _original_headers(message: InboxMessage) -> str:
    """The original's header block, as received (RFC 3464 §2.3: text/rfc822-headers)."""
    head = message.raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    return head.decode("utf-8", errors="replace").replace("\r\n", "\n").strip() + "\n"


def _text_part(text: str, subtype: str) -> MIMEText:
    part = MIMEText(text, subtype, "us-ascii" if text.isascii() else "utf-8")
    del part["MIME-Version"]  # only the top level carries it
    return part


def _headers_part(message: InboxMessage) -> MIMEText:
    return _text_part(_original_headers(message), "rfc822-headers")


def _fields(*pairs: tuple[str, str]) -> email.message.Message:
    """One header block of a report's machine-readable part."""
    block = email.message.Message()
    for name, value in pairs:
        block[name] = value
    return block


def _common(report: MIMEMultipart, message: InboxMessage, subject: str) -> None:
    report["From"] = f"Mail Delivery System <mailer-daemon@{REPORTING_MTA}>"
    report["To"] = message.mail_from or "postmaster"
    report["Subject"] = subject
    report["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    report["Message-ID"] = email.utils.make_msgid(domain=REPORTING_MTA)
    # RFC 3834: a report is automatic mail; nobody should answer it automatically.
    report["Auto-Submitted"] = "auto-replied"


def build_dsn(message: InboxMessage, *, now: dt.datetime | None = None) -> bytes:
    """An RFC 3464 DSN: the recipient does not exist (Action: failed, Status: 5.1.1), quoting
    the original's headers, its Message-ID among them."""
    now = now or dt.datetime.now(dt.UTC)
    recipient = _recipient(message)
    report = MIMEMultipart("report", report_type="delivery-status")
    _common(report, message, "Undelivered Mail Returned to Sender")
    human = (
        f"This is the mail system at host {REPORTING_MTA}.\n\n"
        "I'm sorry to have to inform you that your message could not be delivered to one or more\n"
        "recipients. It's attached below.\n\n"
        f"<{recipient}>: host {REPORTING_MTA} said: {BOUNCE_DIAGNOSTIC}\n"
    )
    report.attach(_text_part(human, "plain"))
    status = MIMEBase("message", "delivery-status")
    del status["MIME-Version"]
    status.set_payload(
        [
            _fields(
                ("Reporting-MTA", f"dns; {REPORTING_MTA}"),
                ("Arrival-Date", email.utils.format_datetime(message.received_at)),
            ),
            _fields(
                ("Final-Recipient", f"rfc822; {recipient}"),
                ("Original-Recipient", f"rfc822; {recipient}"),
                ("Action", "failed"),
                ("Status", BOUNCE_STATUS),
                ("Remote-MTA", f"dns; {REPORTING_MTA}"),
                ("Diagnostic-Code", f"smtp; {BOUNCE_DIAGNOSTIC}"),
                ("Last-Attempt-Date", email.utils.format_datetime(now)),
            ),
        ]
    )
    report.attach(status)
    report.attach(_headers_part(message))
    return report.as_bytes(policy=email.policy.SMTP)


def build_arf(message: InboxMessage) -> bytes:
    """An RFC 5965 feedback report: the recipient marked the message as spam (Feedback-Type:
    abuse), quoting the whole original as message/rfc822."""
    recipient = _recipient(message)
    report = MIMEMultipart("report", report_type="feedback-report")
    _common(report, message, f"Complaint about message from {message.from_ or message.mail_from}")
    report.replace_header("From", f"Feedback loop <feedback@{REPORTING_MTA}>")
    human = (
        f"This is an email abuse report for an email message received at {REPORTING_MTA}.\n"
        f"The recipient {recipient} marked it as spam.\n"
    )
    report.attach(_text_part(human, "plain"))
    feedback = MIMEBase("message", "feedback-report")
    del feedback["MIME-Version"]
    feedback.set_payload(
        [
            _fields(
                ("Feedback-Type", "abuse"),
                ("User-Agent", "tidings-dev-inbox/1.0"),
                ("Version", "1"),
                ("Original-Mail-From", f"<{message.mail_from}>"),
                ("Original-Rcpt-To", f"<{recipient}>"),
                ("Arrival-Date", email.utils.format_datetime(message.received_at)),
                # The domain the complaint is about: the message's author's.
                ("Reported-Domain", email.utils.parseaddr(message.from_)[1].rpartition("@")[2] or REPORTING_MTA),
                ("Source-IP", "127.0.0.1"),
            )
        ]
    )
    report.attach(feedback)
    original = email.message_from_bytes(message.raw)
    quoted = MIMEMessage(original)
    del quoted["MIME-Version"]
    report.attach(quoted)
    return report.as_bytes(policy=email.policy.SMTP)


async def send_report(target: BounceTarget, kind: ReportKind, message: InboxMessage) -> ReportOutcome:
    """Build the report and send it to the message's envelope sender via the bounce server.

    Never raises for what the server or the network does: the outcome says it, for the page."""
    to = message.mail_from
    tidings_id = target.message_for(to) if to else None

    def outcome(ok: bool, reply: str) -> ReportOutcome:
        return ReportOutcome(kind, dt.datetime.now(dt.UTC), to, ok, reply, tidings_id)

    if not to:
        return outcome(False, "the message has a null envelope sender (MAIL FROM:<>): there is nobody to report to")
    raw = build_dsn(message) if kind is ReportKind.bounce else build_arf(message)
    # A DSN comes from the null sender (RFC 3464 §2, RFC 5321 §4.5.5), so that it can never
    # bounce back in a loop; a feedback report from the provider's feedback address.
    sender = "" if kind is ReportKind.bounce else f"feedback@{REPORTING_MTA}"
    try:
        async with aiosmtplib.SMTP(
            hostname=target.host, port=target.port, start_tls=False, timeout=SEND_TIMEOUT_S
        ) as smtp:
            await smtp.mail(sender)
            await smtp.rcpt(to)
            response = await smtp.data(raw)
    except aiosmtplib.SMTPResponseException as exc:
        result = outcome(False, f"the bounce server refused it: {exc.code} {exc.message}")
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        result = outcome(False, f"the bounce server at {target.host}:{target.port} is unreachable: {exc}")
    else:
        result = outcome(True, f"the bounce server accepted it: {response.code} {response.message}")
    log.info(
        "inbox_report_sent",
        number=message.number,
        kind=str(kind),
        to=to,
        ok=result.ok,
        reply=result.reply,
        tidings_message_id=tidings_id,
    )
    return result
