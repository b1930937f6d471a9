"""A local SMTP inbox: keeps every message it receives and shows them on a small web page.

`tidings dev` points the worker's SMTP at it so that sent email can be read at once; the
test suite uses the SMTP part alone (`start_smtp`) as its real SMTP server, with hooks to
make it refuse recipients or fail DATA the way real servers do.

The SMTP server runs on the caller's event loop (aiosmtpd's `SMTP` protocol behind
`loop.create_server`), not in a thread as aiosmtpd's `Controller` would: a test can then
inspect messages and flip the hooks with no locking, and one loop serves everything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email
import email.policy
import email.utils
import html
import os
import re
import ssl
from collections.abc import Iterable
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from shared import smtp_server
from tidings.dev.reports import BounceTarget, ReportKind, ReportOutcome, send_report

log = structlog.get_logger("tidings.inbox")

DEFAULT_MAX_MESSAGES = 1000


@dataclasses.dataclass(frozen=True, slots=True)
class InboxMessage:
    """One message as received: the SMTP envelope, the exact bytes, and the parsed parts."""

    number: int
    received_at: dt.datetime
    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    from_: str
    to: str
    subject: str
    date: dt.datetime | None
    message_id: str | None
    text: str | None
    html: str | None
    headers: tuple[tuple[str, str], ...]

    def email(self) -> EmailMessage:
        """The message parsed afresh, for assertions on anything the fields above leave out."""
        message = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message

    def header(self, name: str) -> str | None:
        """The first header with this name (case-insensitive), decoded."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def links(self) -> list[str]:
        """Every link in the HTML part, then any other URL in the text part, in order, once."""
        found: list[str] = []
        if self.html:
            found.extend(_HrefCollector.collect(self.html))
        if self.text:
            found.extend(match.group(0) for match in _URL.finditer(self.text))
        return list(dict.fromkeys(found))

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "received_at": self.received_at.isoformat(),
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "from": self.from_,
            "to": self.to,
            "subject": self.subject,
            "date": self.date.isoformat() if self.date else None,
            "message_id": self.message_id,
            "text": self.text,
            "html": self.html,
            "headers": [[key, value] for key, value in self.headers],
            "links": self.links(),
        }


def parse_message(
    number: int, raw: bytes, *, mail_from: str, rcpt_tos: Iterable[str], received_at: dt.datetime | None = None
) -> InboxMessage:
    """Parse raw RFC 5322 bytes with the stdlib `email` package. Never raises on a malformed message:
    an inbox must keep whatever it is given, and the sender is the code under test."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    headers = _headers(message)

    def first(name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in headers if key.lower() == wanted), None)

    date = None
    if raw_date := first("Date"):
        try:
            date = email.utils.parsedate_to_datetime(raw_date)
        except (TypeError, ValueError):
            date = None
    return InboxMessage(
        number=number,
        received_at=received_at or dt.datetime.now(dt.UTC),
        mail_from=mail_from,
        rcpt_tos=tuple(rcpt_tos),
        raw=raw,
        from_=first("From") or "",
        to=first("To") or "",
        subject=first("Subject") or "",
        date=date,
        message_id=first("Message-ID"),
        text=_body(message, "plain"),
        html=_body(message, "html"),
        headers=headers,
    )


def _headers(message: EmailMessage) -> tuple[tuple[str, str], ...]:
    decoded = []
    for key, raw in message.raw_items():
        try:
            value = str(message.policy.header_fetch_parse(key, raw))
        except Exception:  # a header the parser chokes on is shown as it was sent
            value = str(raw)
        decoded.append((key, value))
    return tuple(decoded)


def _body(message: EmailMessage, subtype: str) -> str | None:
    try:
        part = message.get_body(preferencelist=(subtype,))
        if part is None:
            return None
        try:
            content = part.get_content()
        except (LookupError, ValueError):  # an unknown charset or a broken transfer encoding
            payload = part.get_payload(decode=True)
            content = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else None
    except Exception:  # a structure too broken to walk: keep the message, without this part
        return None
    return content if isinstance(content, str) else None


_URL = re.compile(r"https?://[^\s<>\"')\]]+")


class _HrefCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(value for name, value in attrs if name == "href" and value)

    @classmethod
    def collect(cls, document: str) -> list[str]:
        collector = cls()
        collector.feed(document)
        collector.close()
        return collector.hrefs


@dataclasses.dataclass(frozen=True, slots=True)
class AddressTrigger:
    """A recipient that the inbox refuses on purpose, at any domain, the way real servers do."""

    local_part: str
    stage: str  # "RCPT" (the reply to RCPT TO) or "DATA" (the reply to the message)
    reply: str
    meaning: str
    # Attempts refused for each such address before it is accepted (None: every attempt).
    times: int | None = None

    @property
    def transient(self) -> bool:
        return self.reply.startswith("4")

    def example(self, domain: str = "example.com") -> str:
        return f"{self.local_part}@{domain}"


# Refusals anyone can trigger from outside, e.g. from `tidings dev`'s curl: the local part
# decides (case-insensitive; a "+tag" is ignored, so greylist+2@example.com is a fresh address).
ADDRESS_TRIGGERS: tuple[AddressTrigger, ...] = (
    AddressTrigger("bounce", "RCPT", "550 5.1.1 user unknown", "no such mailbox (a hard bounce)"),
    AddressTrigger("mailbox-full", "RCPT", "452 4.2.2 mailbox full", "over quota, on every attempt"),
    AddressTrigger("spam", "DATA", "554 5.7.1 message refused as spam", "the message itself is refused"),
    AddressTrigger(
        "greylist", "DATA", "451 4.7.1 greylisted, try again later", "greylisting: refused once, then accepted", 1
    ),
)


def _address_trigger(address: str, stage: str) -> AddressTrigger | None:
    local = address.rpartition("@")[0].split("+", 1)[0].lower()
    return next((t for t in ADDRESS_TRIGGERS if t.local_part == local and t.stage == stage), None)


def _lookup(replies: dict[str, str], address: str) -> str | None:
    # Addresses are compared case-insensitively: tests write them by hand, clients may change case.
    wanted = address.lower()
    return next((reply for key, reply in replies.items() if key.lower() == wanted), None)


def _pop(replies: dict[str, str], address: str) -> str | None:
    wanted = address.lower()
    key = next((k for k in replies if k.lower() == wanted), None)
    return None if key is None else replies.pop(key)


class InboxHandler:
    """aiosmtpd handler that keeps messages in memory (the newest `max_messages`), optionally
    writes each to `eml_dir/<n>.eml`, and can be told to behave like an unhappy server.

    The addresses of `ADDRESS_TRIGGERS` are refused as listed there. Behaviour hooks, keyed by
    recipient address (case-insensitive), each value a full SMTP reply such as "550 5.1.1 user
    unknown", come first:
    - `reject_rcpt`: the reply to RCPT TO for that address, every time;
    - `reject_data`: the reply to DATA when that address is among the recipients, every time;
    - `fail_data_once`: the same, but only once (the entry is removed when used), as a
      greylisting or briefly overloaded server answers 451;
    - `temporary_failure`: while set, the reply to every RCPT TO (a server refusing all
      mail for a while, e.g. "421 4.3.2 shutting down" or "451 4.3.0 busy").
    """

    def __init__(self, *, eml_dir: Path | None = None, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.eml_dir = eml_dir
        self.max_messages = max_messages
        self.reject_rcpt: dict[str, str] = {}
        self.reject_data: dict[str, str] = {}
        self.fail_data_once: dict[str, str] = {}
        self.temporary_failure: str | None = None
        self._trigger_attempts: dict[str, int] = {}
        self._messages: dict[int, InboxMessage] = {}
        self._changed = asyncio.Condition()
        self._last_number = 0
        if eml_dir is not None:
            eml_dir.mkdir(parents=True, exist_ok=True)
            # Continue the numbering of earlier runs, so their files are never overwritten.
            self._last_number = max((int(p.stem) for p in eml_dir.glob("*.eml") if p.stem.isdigit()), default=0)

    @property
    def messages(self) -> list[InboxMessage]:
        """The kept messages, oldest first."""
        return list(self._messages.values())

    def get(self, number: int) -> InboxMessage | None:
        return self._messages.get(number)

    def clear(self) -> None:
        """Forget the kept messages (files already written stay)."""
        self._messages.clear()

    async def wait_for(self, count: int = 1, *, rcpt: str | None = None, timeout_s: float = 10.0) -> list[InboxMessage]:
        """Wait until at least `count` kept messages (to `rcpt`, if given) are here; returns them."""
        if count > self.max_messages:
            raise ValueError(f"only the newest {self.max_messages} messages are kept")

        def matching() -> list[InboxMessage]:
            if rcpt is None:
                return self.messages
            wanted = rcpt.lower()
            return [m for m in self._messages.values() if wanted in (r.lower() for r in m.rcpt_tos)]

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(matching()) >= count), timeout_s)
        return matching()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.temporary_failure:
            return self.temporary_failure
        if reply := _lookup(self.reject_rcpt, address) or self._triggered(address, "RCPT"):
            return reply
        # Implementing this hook makes recording the recipient our job, not aiosmtpd's.
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        for rcpt in envelope.rcpt_tos:
            if reply := _lookup(self.reject_data, rcpt) or _pop(self.fail_data_once, rcpt):
                return reply
        for rcpt in envelope.rcpt_tos:
            if reply := self._triggered(rcpt, "DATA"):
                return reply
        raw = envelope.original_content
        if raw is None:  # only with decode_data=True, which we never set
            raw = envelope.content if isinstance(envelope.content, bytes) else b""
        self._last_number += 1
        message = parse_message(self._last_number, raw, mail_from=envelope.mail_from or "", rcpt_tos=envelope.rcpt_tos)
        if self.eml_dir is not None:
            await self._write(message)
        self._keep(message)
        async with self._changed:
            self._changed.notify_all()
        log.info("inbox_received", number=message.number, to=list(message.rcpt_tos), subject=message.subject)
        return f"250 2.0.0 OK: queued as {message.number}"

    def _triggered(self, address: str, stage: str) -> str | None:
        trigger = _address_trigger(address, stage)
        if trigger is None:
            return None
        if trigger.times is not None:
            key = address.lower()
            seen = self._trigger_attempts.get(key, 0)
            if seen >= trigger.times:
                return None
            self._trigger_attempts[key] = seen + 1
        return trigger.reply

    def _keep(self, message: InboxMessage) -> None:
        self._messages[message.number] = message
        while len(self._messages) > self.max_messages:
            del self._messages[next(iter(self._messages))]

    async def _write(self, message: InboxMessage) -> None:
        assert self.eml_dir is not None
        path = self.eml_dir / f"{message.number}.eml"
        try:
            await asyncio.to_thread(_write_atomically, path, message.raw)
        except OSError as exc:
            # The copy on disk is a convenience; the message is still accepted and kept in memory.
            log.warning("inbox_write_failed", path=str(path), error=str(exc))


def _write_atomically(path: Path, data: bytes) -> None:
    # Written aside and renamed, so a reader never sees half a message.
    partial = path.with_suffix(".eml.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


class SmtpInbox:
    """A listening SMTP server and its handler; see `start_smtp`."""

    def __init__(
        self,
        handler: InboxHandler,
        server: asyncio.Server,
        host: str,
        port: int,
        connections: set[smtp_server.TrackedSMTP],
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._server = server
        self._connections = connections

    @property
    def messages(self) -> list[InboxMessage]:
        return self.handler.messages

    @property
    def reject_rcpt(self) -> dict[str, str]:
        return self.handler.reject_rcpt

    @property
    def reject_data(self) -> dict[str, str]:
        return self.handler.reject_data

    @property
    def fail_data_once(self) -> dict[str, str]:
        return self.handler.fail_data_once

    async def wait_for(self, count: int = 1, *, rcpt: str | None = None, timeout_s: float = 10.0) -> list[InboxMessage]:
        return await self.handler.wait_for(count, rcpt=rcpt, timeout_s=timeout_s)

    def clear(self) -> None:
        self.handler.clear()

    async def close(self) -> None:
        await smtp_server.close(self._server, self._connections)


async def start_smtp(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    handler: InboxHandler | None = None,
    eml_dir: Path | None = None,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    tls_context: ssl.SSLContext | None = None,
    hostname: str = "inbox.tidings.local",
) -> SmtpInbox:
    """Listen for SMTP on host:port (0: a free port, then read `.port`) on the running loop.

    With `tls_context`, STARTTLS is offered (not required).
    """
    handler = handler or InboxHandler(eml_dir=eml_dir, max_messages=max_messages)
    loop = asyncio.get_running_loop()
    connections: set[smtp_server.TrackedSMTP] = set()

    def protocol() -> smtp_server.TrackedSMTP:
        return smtp_server.TrackedSMTP(
            handler,
            connections,
            loop=loop,
            # An explicit hostname: the default, socket.getfqdn(), can block on DNS for seconds.
            hostname=hostname,
            ident="tidings inbox",
            # Accept UTF-8 addresses and headers, as a modern MTA does.
            enable_SMTPUTF8=True,
            tls_context=tls_context,
        )

    server = await loop.create_server(protocol, host, port)
    bound_port: int = server.sockets[0].getsockname()[1]
    return SmtpInbox(handler, server, host, bound_port, connections)


# --------------------------------------------------------------------------------------
# The web page

HANDLER = web.AppKey("handler", InboxHandler)
# Where the Bounce and Complain buttons send their reports (None: no buttons).
BOUNCE_TARGET = web.AppKey[BounceTarget | None]("bounce_target")
# The reports sent about each message, by message number, oldest first: the page shows them.
REPORTS = web.AppKey("reports", dict[int, list[ReportOutcome]])

# Pages of our own: no scripts at all; the message's HTML only ever appears in a sandboxed frame.
_PAGE_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src 'self'; base-uri 'none'; "
    "form-action 'self'"
)
# The message's HTML: it is whatever the code under test produced, so it may run nothing, load
# nothing from elsewhere, and submit nothing; links open in a new tab, outside the sandbox.
_MESSAGE_HTML_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; "
    "sandbox allow-popups allow-popups-to-escape-sandbox"
)

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem 1.5rem; color: #222; }
a { color: #0b57d0; } h1 { font-size: 1.3rem; } h2 { font-size: 1.05rem; margin-top: 1.6rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
td.h { white-space: nowrap; color: #555; width: 1%; } .muted { color: #777; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: .8rem; }
iframe { width: 100%; height: 36rem; border: 1px solid #ddd; }
form.report { display: inline; margin: 0 .3rem 0 0; }
form.report button { font: inherit; padding: .15rem .6rem; cursor: pointer; }
.flash { padding: .6rem .9rem; margin: .8rem 0; border-radius: 4px; }
.flash.ok { background: #e7f5ea; border: 1px solid #9ccfa8; }
.flash.bad { background: #fdecea; border: 1px solid #f1a7a0; }
.tag { font-size: 12px; padding: 0 .4rem; border-radius: 3px; background: #eee; margin-left: .3rem; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, *, refresh_s: int | None = None) -> web.Response:
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )
    return web.Response(
        text=document,
        content_type="text/html",
        headers={
            "Content-Security-Policy": _PAGE_CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


def _when(moment: dt.datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _message_or_404(request: web.Request) -> InboxMessage:
    message = request.app[HANDLER].get(int(request.match_info["n"]))
    if message is None:
        raise web.HTTPNotFound(text="no such message (only the newest are kept in memory)")
    return message


async def _index(request: web.Request) -> web.Response:
    messages = list(reversed(request.app[HANDLER].messages))
    target = request.app[BOUNCE_TARGET]
    reports = request.app[REPORTS]
    rows = "".join(
        f'<tr><td class="h">{_e(_when(m.received_at))}</td><td>{_e(m.from_ or m.mail_from)}</td>'
        f"<td>{_e(m.to or ', '.join(m.rcpt_tos))}</td>"
        f'<td><a href="/messages/{m.number}">{_e(m.subject or "(no subject)")}</a>'
        f"{_report_tags(reports.get(m.number, []))}</td>"
        + (f'<td class="h">{_report_buttons(m)}</td>' if target else "")
        + "</tr>"
        for m in messages
    )
    actions = "<th>report</th>" if target else ""
    table = (
        f"<table><tr><th>received</th><th>from</th><th>to</th><th>subject</th>{actions}</tr>{rows}</table>"
        if messages
        else '<p class="muted">No messages yet. This page refreshes itself.</p>'
    )
    return _page(
        "Inbox",
        f"<h1>Inbox <span class=muted>({len(messages)})</span></h1>{table}{_reports_help(target)}{_triggers_html()}",
        refresh_s=3,
    )


def _report_buttons(m: InboxMessage) -> str:
    return "".join(
        f'<form class="report" method="post" action="/messages/{m.number}/{action}">'
        f'<button type="submit" title="{_e(title)}">{label}</button></form>'
        for action, label, title in (
            ("bounce", "Bounce", "send a DSN (5.1.1, no such user) to the envelope sender"),
            ("complain", "Complain", "send an ARF spam complaint to the envelope sender"),
        )
    )


def _report_tags(outcomes: list[ReportOutcome]) -> str:
    return "".join(
        f'<span class="tag">{"bounce sent" if o.kind is ReportKind.bounce else "complaint sent"}'
        f"{'' if o.ok else ' (refused)'}</span>"
        for o in outcomes
    )


def _reports_help(target: BounceTarget | None) -> str:
    if target is None:
        return ""
    domain = f" ({_e(target.domain)})" if target.domain else ""
    return (
        '<h2 id="reports">Bounce and Complain</h2><p class="muted">Play the recipient\'s mailbox provider: '
        "<b>Bounce</b> mails an RFC 3464 delivery status notification (Action: failed, Status: 5.1.1) and "
        "<b>Complain</b> an RFC 5965 spam complaint (ARF) to the message's envelope sender, over SMTP to "
        f"<code>tidings bounces</code> at {_e(target.host)}:{target.port}{domain}. tidings then marks the message "
        "<code>bounced</code> or <code>complained</code>, suppresses the address and sends the "
        "<code>message.bounced</code> / <code>message.complained</code> webhook.</p>"
    )


def _triggers_html() -> str:
    rows = "".join(
        f"<tr><td>{_e(t.local_part)}@<i>any domain</i></td><td>{_e(t.example())}</td><td>{_e(t.stage)}</td>"
        f"<td>{_e(t.reply)}</td><td>{_e(t.meaning)}</td>"
        f"<td>{'transient (retry)' if t.transient else 'permanent'}</td></tr>"
        for t in ADDRESS_TRIGGERS
    )
    return (
        '<h2 id="failures">Failing on purpose</h2><p class="muted">Mail to these recipients is refused as a real '
        'server would; any other is accepted. A "+tag" after the name is ignored, e.g. greylist+2@example.com.</p>'
        "<table><tr><th>recipient</th><th>for example</th><th>refused at</th><th>reply</th><th>meaning</th>"
        f"<th>kind</th></tr>{rows}</table>"
    )


def _linkify(text: str) -> str:
    out, last = [], 0
    for match in _URL.finditer(text):
        out.append(_e(text[last : match.start()]))
        url = match.group(0)
        out.append(f'<a href="{_e(url)}" target="_blank" rel="noopener noreferrer">{_e(url)}</a>')
        last = match.end()
    out.append(_e(text[last:]))
    return "".join(out)


async def _message(request: web.Request) -> web.Response:
    m = _message_or_404(request)
    summary = "".join(
        f'<tr><td class="h">{_e(k)}</td><td>{_e(v)}</td></tr>'
        for k, v in [
            ("Received", _when(m.received_at)),
            ("Envelope from", m.mail_from or "<> (null sender)"),
            ("Envelope to", ", ".join(m.rcpt_tos)),
            ("From", m.from_),
            ("To", m.to),
            ("Subject", m.subject),
        ]
    )
    target = request.app[BOUNCE_TARGET]
    parts = [
        '<p><a href="/">&larr; Inbox</a></p>',
        _flashes(request.app[REPORTS].get(m.number, [])),
        f"<h1>{_e(m.subject or '(no subject)')}</h1><table>{summary}</table>",
        f'<p><a href="/messages/{m.number}.eml">Raw message (.eml)</a></p>',
    ]
    if target is not None:
        parts.append(f"<p>{_report_buttons(m)}</p>")
    if links := m.links():
        items = "".join(
            f'<li><a href="{_e(u)}" target="_blank" rel="noopener noreferrer">{_e(u)}</a></li>' for u in links
        )
        parts.append(f"<h2>Links</h2><ul>{items}</ul>")
    if m.html is not None:
        parts.append(
            f'<h2>HTML part</h2><iframe sandbox="allow-popups allow-popups-to-escape-sandbox" '
            f'src="/messages/{m.number}/html" title="HTML part"></iframe>'
        )
    if m.text is not None:
        parts.append(f"<h2>Text part</h2><pre>{_linkify(m.text)}</pre>")
    headers = "".join(f'<tr><td class="h">{_e(k)}</td><td>{_e(v)}</td></tr>' for k, v in m.headers)
    parts.append(f"<h2>Headers</h2><table>{headers}</table>")
    return _page(m.subject or "(no subject)", "".join(parts))


def _flashes(outcomes: list[ReportOutcome]) -> str:
    out = []
    for o in reversed(outcomes):
        what = "Bounce (DSN)" if o.kind is ReportKind.bounce else "Spam complaint (ARF)"
        about = f" about tidings message <code>{_e(o.tidings_message_id)}</code>" if o.tidings_message_id else ""
        out.append(
            f'<div class="flash {"ok" if o.ok else "bad"}">{what} sent to {_e(o.to or "<>")}{about} at '
            f"{_e(_when(o.sent_at))}: {_e(o.reply)}</div>"
        )
    return "".join(out)


async def _report(request: web.Request) -> web.Response:
    """The Bounce and Complain buttons: send the report, then back to the message's page (303),
    which shows the outcome."""
    # Only this page's own forms: a page elsewhere must not make the inbox send reports.
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="reports are sent from the inbox's own pages only")
    target = request.app[BOUNCE_TARGET]
    if target is None:
        raise web.HTTPNotFound(text="this inbox has no bounce server to report to")
    m = _message_or_404(request)
    kind = ReportKind.bounce if request.match_info["action"] == "bounce" else ReportKind.complaint
    outcome = await send_report(target, kind, m)
    request.app[REPORTS].setdefault(m.number, []).append(outcome)
    raise web.HTTPSeeOther(f"/messages/{m.number}")


async def _message_html(request: web.Request) -> web.Response:
    m = _message_or_404(request)
    if m.html is None:
        raise web.HTTPNotFound(text="this message has no HTML part")
    return web.Response(
        text=m.html,
        content_type="text/html",
        headers={
            "Content-Security-Policy": _MESSAGE_HTML_CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


async def _message_eml(request: web.Request) -> web.Response:
    m = _message_or_404(request)
    return web.Response(
        body=m.raw,
        content_type="message/rfc822",
        headers={
            "Content-Disposition": f'attachment; filename="{m.number}.eml"',
            "X-Content-Type-Options": "nosniff",
        },
    )


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def _api_messages(request: web.Request) -> web.Response:
    return _json({"data": [m.to_json() for m in reversed(request.app[HANDLER].messages)]})


async def _api_message(request: web.Request) -> web.Response:
    return _json(_message_or_404(request).to_json())


def make_web_app(handler: InboxHandler, bounce_target: BounceTarget | None = None) -> web.Application:
    """The inbox's pages: `/`, `/messages/{n}`, `/messages/{n}/html`, `/messages/{n}.eml`,
    `/api/messages` and `/api/messages/{n}` (JSON, newest first); with a bounce target, the
    forms `POST /messages/{n}/bounce` and `POST /messages/{n}/complain`."""
    app = web.Application()
    app[HANDLER] = handler
    app[BOUNCE_TARGET] = bounce_target
    app[REPORTS] = {}
    app.router.add_get("/", _index)
    app.router.add_get(r"/messages/{n:\d+}", _message)
    app.router.add_get(r"/messages/{n:\d+}/html", _message_html)
    app.router.add_get(r"/messages/{n:\d+}.eml", _message_eml)
    app.router.add_get("/api/messages", _api_messages)
    app.router.add_get(r"/api/messages/{n:\d+}", _api_message)
    app.router.add_post(r"/messages/{n:\d+}/{action:bounce|complain}", _report)
    return app


class Inbox:
    """The SMTP server and the web page together, as `tidings dev` runs them."""

    def __init__(self, smtp: SmtpInbox, runner: web.AppRunner, web_url: str) -> None:
        self.smtp = smtp
        self.web_url = web_url
        self._runner = runner

    @property
    def handler(self) -> InboxHandler:
        return self.smtp.handler

    @property
    def messages(self) -> list[InboxMessage]:
        return self.smtp.messages

    @property
    def smtp_port(self) -> int:
        return self.smtp.port

    async def close(self) -> None:
        await self.smtp.close()
        await self._runner.cleanup()


async def start_inbox(
    smtp_host: str,
    smtp_port: int,
    web_host: str,
    web_port: int,
    data_dir: Path,
    *,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    bounce_target: BounceTarget | None = None,
) -> Inbox:
    """Start the SMTP inbox and its web page (port 0: a free one); messages are also written
    to `data_dir/inbox/<n>.eml`. With `bounce_target`, each message gets Bounce and Complain
    buttons that send a report there (tidings/dev/reports.py)."""
    smtp = await start_smtp(smtp_host, smtp_port, eml_dir=data_dir / "inbox", max_messages=max_messages)
    runner = web.AppRunner(make_web_app(smtp.handler, bounce_target), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, web_host, web_port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        await smtp.close()
        raise
    bound = _bound_port(runner, web_port)
    return Inbox(smtp, runner, f"http://{_url_host(web_host)}:{bound}")


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
