"""Email over SMTP (aiosmtplib) through a small pool of reused connections.

Opening a connection per message costs more than the message, so each worker keeps up
to `smtp_pool_size` sessions open and hands them out one message at a time. A session
that saw any error is closed rather than reused: after a refused RCPT or a broken DATA
its state is not worth trusting.

The message is serialized to bytes here, once, and those exact bytes are what a DKIM
signature covers and what goes over the wire (`sendmail`, not `send_message`, which
would serialize it again and could change what was signed). Bodies are kept 7-bit
(quoted-printable or base64 when needed) so that a relay without 8BITMIME never has to
re-encode them, which would break the signature.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import datetime as dt
import email.utils
import re
import secrets
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8, EmailPolicy, Policy

import aiosmtplib

from shared import metrics
from shared.addresses import fold_header, single_mailbox
from shared.config import Settings
from worker.channels.base import (
    DeliveryResult,
    PermanentDeliveryError,
    RenderedEmail,
    TransientDeliveryError,
)
from worker.channels.dkim import DkimSigner
from worker.channels.domain_keys import DomainKeys

# CRLF line endings, RFC 2047 encoded words for non-ASCII header text, 7-bit bodies.
SMTP_POLICY = SMTP.clone(cte_type="7bit")
# For an address that is not ASCII (RFC 6531): header text goes as raw UTF-8.
SMTPUTF8_POLICY = SMTPUTF8.clone(cte_type="7bit")


def header_text(value: str) -> str:
    """A rendered value made safe to hand to the email package as header text.

    Line breaks become a space: CR and LF as the renderer folds them, and also what Python
    counts as a line break (VT, FF, NEL, U+2028, ...), which the email package refuses in a
    header value. And the email package decodes any RFC 2047 encoded word in the text it is
    given, so a variable value such as `=?utf-8?q?x=0D=0ABcc:_...?=` would become a real
    CR LF, which the generator of Python before 3.11.10 writes out raw: a header injection.
    A word joiner (U+2060, invisible) after every `=` of `=?` keeps the text as typed and
    the lookalike inert (the stdlib's parser is lenient, so every candidate goes, not just
    well-formed encoded words).
    """
    value = fold_header(value)
    lines = value.splitlines()
    if len(lines) != 1 or lines[0] != value:
        value = " ".join(lines)
    if "=?" in value and "?=" in value:
        value = value.replace("=?", "=\u2060?")
    return value


def needs_smtputf8(msg: RenderedEmail) -> bool:
    return not (msg.from_email.isascii() and msg.to.isascii())


class _AddressHeader:
    """An address header (From, To, Reply-To) written exactly as built here.

    The email package's own parsing and folding of address headers mangles display names
    taken from variables (Python 3.11): a non-ASCII name loses the quotes around its ASCII
    part (`"a, b <x@y.z> é" <to@...>` goes out as `a, b <x@y.z> =?utf-8?q?=C3=A9?= <to@...>`,
    two mailboxes: an added recipient or a spoofed sender), a fold after a comma may start
    a line without whitespace (ending the header block early), and some names make its
    parser raise. So these headers are built whole here and the policy, which hands header
    objects with a `name` through unchanged, just calls `fold`.
    """

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self.value = value

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: {self.value}{policy.linesep}"

    def __str__(self) -> str:
        return self.value


# An addr-spec as we send it: no whitespace, quoting, comments or second @ (RFC 6531 allows
# UTF-8 in it).
_ADDR_SPEC = re.compile(r"[^\s<>()\[\],;:\\\"@]+@[^\s<>()\[\],;:\\\"@]+")
# A plain display name written as is (quoted when needed); anything else is RFC 2047 encoded.
_MAX_PLAIN_NAME_CHARS = 60


def _mailbox(field: str, name: str | None, addr_spec: str, policy: EmailPolicy[EmailMessage]) -> str:
    """`name <addr>`: the name quoted if plain ASCII and short, else RFC 2047 encoded (and
    folded) whole; an address that is not a plain addr-spec is refused (ValueError)."""
    name, addr_spec = header_text(name or "").strip(), header_text(addr_spec).strip()
    if not _ADDR_SPEC.fullmatch(addr_spec):
        raise ValueError(f"{field}: not an email address: {addr_spec!r}")
    if not addr_spec.isascii() and not policy.utf8:
        raise ValueError(f"{field}: {addr_spec!r} is not ASCII, and only From and To decide on SMTPUTF8")
    if not name:
        return addr_spec
    if name.isascii() and name.isprintable() and len(name) <= _MAX_PLAIN_NAME_CHARS:
        plain: str = email.utils.formataddr((name, "x@x"))[: -len("<x@x>")]
        return f"{plain}<{addr_spec}>"
    encoded = Header(name, "utf-8", header_name=field).encode(linesep=policy.linesep)
    return f"{encoded} <{addr_spec}>"


def _address_header(field: str, mailboxes: list[tuple[str, str]], policy: EmailPolicy[EmailMessage]) -> _AddressHeader:
    return _AddressHeader(field, f",{policy.linesep} ".join(_mailbox(field, n, a, policy) for n, a in mailboxes))


def _headers(msg: RenderedEmail) -> EmailMessage:
    """A message holding the headers only (no body yet), built under the right policy."""
    policy = SMTPUTF8_POLICY if needs_smtputf8(msg) else SMTP_POLICY
    # Addresses first: one that is not an address is refused before anything else is built.
    sender = _address_header("From", [(msg.from_name or "", msg.from_email)], policy)
    recipient = _address_header("To", [(msg.to_name or "", msg.to)], policy)
    mime = EmailMessage(policy=policy)
    mime["Message-ID"] = msg.message_id
    mime["Date"] = email.utils.formatdate(usegmt=True)
    mime["From"] = sender
    mime["To"] = recipient
    if msg.reply_to:
        # Rendered text such as `Help <help@acme.test>`: exactly one mailbox (render checked
        # it already; InvalidAddress is a ValueError, so here it fails the build too).
        name, address = single_mailbox(header_text(msg.reply_to))
        mime["Reply-To"] = _address_header("Reply-To", [(name, address)], policy)
    mime["Subject"] = header_text(msg.subject)
    for name, value in msg.headers.items():
        mime[name] = header_text(value)
    return mime


def build_mime(msg: RenderedEmail) -> EmailMessage:
    """The whole message as an `EmailMessage` (for callers that want the object)."""
    mime = _headers(msg)
    mime.set_content(msg.text)
    if msg.html is not None:
        mime.add_alternative(msg.html, subtype="html")
    if "MIME-Version" not in mime:
        mime["MIME-Version"] = "1.0"
    return mime


def _qp_part(content_type: str, text: str) -> bytes:
    """One text part, quoted-printable (7-bit, lines ≤ 76, CRLF), UTF-8."""
    normalized = text.replace("\r\n", "\n").replace("\r", "\n")
    if not normalized.endswith("\n"):
        normalized += "\n"
    body = binascii.b2a_qp(normalized.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")
    return (
        f'Content-Type: {content_type}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
    ).encode() + body


# RFC 5322's recommended line length; the hard limit is 998.
_FOLD_AT = 78


def _plain_header_line(name: str, value: str) -> str | None:
    """`Name: value` CRLF, folded at spaces, when the value is plain printable ASCII with no
    RFC 2047 lookalike: exactly what the email package would write for it, without its
    header parsing (a fifth of a worker's time per message). None: take the package's path."""
    if not (value.isascii() and value.isprintable()) or "=?" in value:
        return None
    line = f"{name}: {value}"
    if len(line) <= _FOLD_AT:
        return line + "\r\n"
    words = line.split(" ")
    if "" in words:
        return None  # runs of spaces: leave their folding to the package
    lines: list[str] = []
    current = words[0]
    for word in words[1:]:
        if len(current) + 1 + len(word) <= _FOLD_AT:
            current += " " + word
        else:
            lines.append(current)
            current = " " + word
    lines.append(current)
    if any(len(one) > 998 for one in lines):
        return None
    return "\r\n".join(lines) + "\r\n"


def _plain_head(msg: RenderedEmail) -> bytes | None:
    """The header block written directly, when every header qualifies for `_plain_header_line`
    (From and To are built whole by `_mailbox` either way); else None."""
    if needs_smtputf8(msg) or msg.reply_to:  # Reply-To may carry a name that needs encoding
        return None
    sender = _address_header("From", [(msg.from_name or "", msg.from_email)], SMTP_POLICY)
    recipient = _address_header("To", [(msg.to_name or "", msg.to)], SMTP_POLICY)
    fields = [
        ("Message-ID", msg.message_id),
        ("Date", email.utils.format_datetime(dt.datetime.now(dt.UTC))),  # "+0000", as the package writes
        ("Subject", header_text(msg.subject)),
        *((name, header_text(value)) for name, value in msg.headers.items()),
    ]
    lines = []
    for name, value in fields:
        line = _plain_header_line(name, value)
        if line is None:
            return None
        lines.append(line)
    lines.insert(2, sender.fold(policy=SMTP_POLICY))
    lines.insert(3, recipient.fold(policy=SMTP_POLICY))
    return "".join(lines).encode("ascii")


def message_bytes(msg: RenderedEmail, signer: DkimSigner | None = None) -> bytes:
    """The message as it goes over the wire: serialized once, DKIM-signed when configured.

    Plain ASCII headers are written directly (`_plain_head`); anything else goes through
    the email package (encoding, folding, the injection guards above). The body parts are
    written here, quoted-printable: the package's content manager and generator cost more
    than everything else a worker does per message.
    """
    head = _plain_head(msg)
    if head is None:
        mime = _headers(msg)
        head = b"".join(mime.policy.fold_binary(name, value) for name, value in mime.raw_items())
    head += b"MIME-Version: 1.0\r\n"
    if msg.html is None:
        part = _qp_part("text/plain", msg.text)  # its Content-* lines join the message's header block
        data = head + part
    else:
        boundary = f"=_tidings_{secrets.token_hex(12)}"
        delimiter = f"\r\n--{boundary}\r\n".encode()
        data = (
            head
            + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode()
            + delimiter[2:]
            + _qp_part("text/plain", msg.text)
            + delimiter
            + _qp_part("text/html", msg.html)
            + f"\r\n--{boundary}--\r\n".encode()
        )
    return signer.sign(data) if signer is not None else data


def _reply(code: int, message: str) -> str:
    return f"SMTP {code} {message}".strip()


class EmailChannel:
    def __init__(self, settings: Settings, domain_keys: DomainKeys | None = None) -> None:
        self.settings = settings
        # The orgs' sending domains' keys (None: the global DKIM_* key alone).
        self._domain_keys = domain_keys
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(settings.smtp_pool_size)
        # Built once: a half-configured DKIM or an unreadable key fails the worker's start-up.
        self._dkim = DkimSigner.from_settings(settings)

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

    async def _signer(self, message: RenderedEmail) -> DkimSigner | None:
        """The org's key when its From domain is one of the org's sending domains, else the
        global DKIM_* key (None: unsigned)."""
        if self._domain_keys is not None and message.org_id is not None:
            signer = await self._domain_keys.signer(message.org_id, message.from_email)
            if signer is not None:
                return signer
        return self._dkim

    async def send(self, message: RenderedEmail) -> DeliveryResult:
        signer = await self._signer(message)
        try:
            data = message_bytes(message, signer)
        except ValueError as exc:
            # Content the email package refuses (header_text removes what we know of):
            # sending it again cannot help.
            raise PermanentDeliveryError(f"the message could not be built: {exc}") from exc
        mail_options = ["SMTPUTF8"] if needs_smtputf8(message) else []
        async with self._slots:
            metrics.SMTP_IN_USE.inc()
            client = self._idle.get_nowait() if not self._idle.empty() else self._client()
            healthy = False
            try:
                if not client.is_connected:
                    await client.connect()
                sender = message.envelope_from or message.from_email
                await client.sendmail(sender, [message.to], data, mail_options=mail_options)
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
                metrics.SMTP_IN_USE.dec()
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
