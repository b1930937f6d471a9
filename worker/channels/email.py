"""Email over SMTP (aiosmtplib) through the relays, each with a small pool of reused connections.

Opening a connection per message costs more than the message, so each worker keeps up
to `smtp_pool_size` sessions open per relay and hands them out one message at a time. A session
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
import urllib.parse
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8, EmailPolicy, Policy

import aiosmtplib
import structlog

from shared import metrics
from shared.addresses import fold_header, single_mailbox
from shared.config import Settings
from shared.relays import Relay, relays
from worker.channels.base import (
    DeliveryError,
    DeliveryResult,
    PermanentDeliveryError,
    RenderedEmail,
    TransientDeliveryError,
)
from worker.channels.dkim import DkimSigner
from worker.channels.domain_keys import DomainKeys
from worker.throughput import Ceiling, Throughput

log = structlog.get_logger("tidings.email")

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


_date_cache: tuple[int, str] = (0, "")


def _date_now() -> str:
    """The Date header's value for now ("+0000", as the email package writes it), made once
    per second: it has a resolution of a second, and formatting it is not free."""
    global _date_cache
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    second = int(now.timestamp())
    if _date_cache[0] != second:
        _date_cache = (second, email.utils.format_datetime(now))
    return _date_cache[1]


def _plain_head(msg: RenderedEmail) -> bytes | None:
    """The header block written directly, when every header qualifies for `_plain_header_line`
    (From and To are built whole by `_mailbox` either way); else None."""
    if needs_smtputf8(msg) or msg.reply_to:  # Reply-To may carry a name that needs encoding
        return None
    sender = _address_header("From", [(msg.from_name or "", msg.from_email)], SMTP_POLICY)
    recipient = _address_header("To", [(msg.to_name or "", msg.to)], SMTP_POLICY)
    fields = [
        ("Message-ID", msg.message_id),
        ("Date", _date_now()),
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


# RFC 2231 attr-chars: what a parameter value may hold unencoded (RFC 5987's list).
_ATTR_CHARS = "!#$&+-.^_`|~"
# Encoded filename pieces per header line: continuations keep every line short (RFC 2231 §3).
_FILENAME_PIECE_CHARS = 58
_BASE64_LINE = 76


def _filename_params(filename: str) -> str:
    """`filename="report.pdf"` for a plain ASCII name; otherwise the RFC 2231 form,
    `filename*=utf-8''%E2%82%AC.pdf` (continued over `filename*0*=`, `filename*1*=`... lines
    when long), which every current client reads."""
    if filename.isascii() and filename.isprintable() and len(filename) <= _FILENAME_PIECE_CHARS:
        quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
        return f'filename="{quoted}"'
    encoded = urllib.parse.quote(filename, safe=_ATTR_CHARS, encoding="utf-8")
    if len(encoded) + len("utf-8''") <= _FILENAME_PIECE_CHARS:
        return f"filename*=utf-8''{encoded}"
    pieces: list[str] = []
    rest = encoded
    while rest:
        # The first piece also carries the charset: every line stays within 78 characters.
        cut = min(_FILENAME_PIECE_CHARS - (len("utf-8''") if not pieces else 0), len(rest))
        # Never inside a %XX triplet.
        if "%" in rest[max(0, cut - 2) : cut]:
            cut = rest.rindex("%", 0, cut)
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces[0] = "utf-8''" + pieces[0]
    return ";\r\n ".join(f"filename*{n}*={piece}" for n, piece in enumerate(pieces))


def attachment_part(filename: str, content_type: str, content: bytes) -> bytes:
    """One attached file as a whole MIME part (headers, blank line, base64 in 76-character
    lines), made once per send and shared by its messages (worker/attachments.py). The
    filename was checked when the send was accepted (no path, no control characters)."""
    encoded = binascii.b2a_base64(content, newline=False)
    lines = b"\r\n".join(encoded[i : i + _BASE64_LINE] for i in range(0, len(encoded), _BASE64_LINE))
    head = (
        f"Content-Type: {content_type}\r\n"
        f"Content-Disposition: attachment;\r\n {_filename_params(filename)}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head.encode("ascii") + lines


def _with_attachments(body: bytes, parts: tuple[bytes, ...]) -> bytes:
    """`multipart/mixed`: the message's body (its own Content-* lines first) and then each
    file. The base64 parts are shared bytes; only this message's copy is joined here."""
    boundary = f"=_tidings_{secrets.token_hex(12)}"
    delimiter = f"\r\n--{boundary}\r\n".encode()
    return b"".join(
        [
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode(),
            delimiter[2:],
            body,
            *(piece for part in parts for piece in (delimiter, part)),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )


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
        body = _qp_part("text/plain", msg.text)  # its Content-* lines join the message's header block
    else:
        boundary = f"=_tidings_{secrets.token_hex(12)}"
        delimiter = f"\r\n--{boundary}\r\n".encode()
        body = (
            f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode()
            + delimiter[2:]
            + _qp_part("text/plain", msg.text)
            + delimiter
            + _qp_part("text/html", msg.html)
            + f"\r\n--{boundary}--\r\n".encode()
        )
    # With files, the body becomes the first part of a multipart/mixed.
    data = head + (_with_attachments(body, msg.attachments) if msg.attachments else body)
    return signer.sign(data) if signer is not None else data


def _reply(code: int, message: str) -> str:
    return f"SMTP {code} {message}".strip()


class EmailChannel:
    """Sends through the relays in order of preference (shared/relays.py): the first that is
    up; one that refuses connections or times out is skipped for SMTP_RELAY_COOLDOWN_S and the
    message goes to the next at once, with no attempt counted. Only when every relay is down
    does a message fail (transient: retried with the usual backoff), each relay tried in turn
    as one relay always was."""

    def __init__(
        self, settings: Settings, domain_keys: DomainKeys | None = None, throughput: Throughput | None = None
    ) -> None:
        self.settings = settings
        # The orgs' sending domains' keys (None: the global DKIM_* key alone).
        self._domain_keys = domain_keys
        self.cooldown_s = settings.smtp_relay_cooldown_s
        self.relays = [
            RelayPool(r, settings, throughput.ceiling(f"smtp:{r.name}", r.max_per_s) if throughput else None)
            for r in relays(settings)
        ]
        if throughput is not None:
            throughput.governs("email", self._ceiling_now)

        # Built once: a half-configured DKIM or an unreadable key fails the worker's start-up.
        self._dkim = DkimSigner.from_settings(settings)

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
            # With attachments the message is megabytes, and DKIM's body canonicalisation of it
            # takes about a second: built off the event loop, which keeps serving the others.
            if message.attachments:
                data = await asyncio.to_thread(message_bytes, message, signer)
            else:
                data = message_bytes(message, signer)
        except ValueError as exc:
            # Content the email package refuses (header_text removes what we know of):
            # sending it again cannot help.
            raise PermanentDeliveryError(f"the message could not be built: {exc}") from exc
        mail_options = ["SMTPUTF8"] if needs_smtputf8(message) else []
        sender = message.envelope_from or message.from_email
        await self._transmit(sender, message.to, data, mail_options)
        return DeliveryResult(external_message_id=message.message_id)

    def _ceiling_now(self) -> Ceiling | None:
        """The ceiling of the relay the next message goes to: the first one up."""
        now = asyncio.get_running_loop().time()
        return next((r for r in self.relays if r.is_up(now)), self.relays[0]).ceiling

    async def _transmit(self, sender: str, to: str, data: bytes, mail_options: list[str]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        up = [r for r in self.relays if r.is_up(now)]
        # Every relay cooling down: each is tried anyway, as the one relay always was.
        candidates = up or self.relays
        failures: list[str] = []
        for relay in candidates:
            if up and not relay.is_up(loop.time()):
                continue  # another send found it down meanwhile
            if relay.ceiling is not None:
                await relay.ceiling.take()  # waiting for a token is no attempt
                if up and not relay.is_up(loop.time()):
                    continue
            try:
                if not await relay.send(sender, to, data, mail_options, skip_if_down=bool(up)):
                    continue
            except _RelayDown as exc:
                # One relay alone is never skipped: there is nowhere else to go (a cooldown
                # would only delay its retries).
                cooldown_s = self.cooldown_s if len(self.relays) > 1 else 0.0
                if cooldown_s and relay.is_up(loop.time()):
                    log.warning("smtp_relay_down", relay=relay.name, cooldown_s=cooldown_s, error=str(exc))
                relay.mark_down(cooldown_s)
                failures.append(str(exc))
                continue
            relay.mark_up()
            return
        if not failures:  # every relay went down while this message waited its turn
            failures = [f"{r.name}: cooling down after a connection failure" for r in self.relays]
        raise TransientDeliveryError("SMTP connection failed: " + "; ".join(failures))

    async def close(self) -> None:
        for relay in self.relays:
            await relay.close()


class _RelayDown(Exception):
    """The relay refused the connection, timed out or went away: not the recipient's doing."""


# Connection-level failures: the relay's, never the recipient's (a 4xx/5xx answer is).
_CONNECTION_ERRORS = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPServerDisconnected,
    aiosmtplib.SMTPTimeoutError,
    OSError,
    TimeoutError,
)


class RelayPool:
    """One relay: its own connections (up to `smtp_pool_size`, reused), TLS and credentials,
    its cooldown, and its throughput ceiling shared with every other worker (if it has one)."""

    def __init__(self, relay: Relay, settings: Settings, ceiling: Ceiling | None) -> None:
        self.relay = relay
        self.name = relay.name
        self.timeout_s = settings.smtp_timeout_s
        self.ceiling = ceiling
        self.down_until = 0.0  # loop time; up when in the past
        self._idle: asyncio.LifoQueue[aiosmtplib.SMTP] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(settings.smtp_pool_size)
        metrics.SMTP_RELAY_UP.labels(self.name).set(1)

    def _client(self) -> aiosmtplib.SMTP:
        r = self.relay
        return aiosmtplib.SMTP(
            hostname=r.host,
            port=r.port,
            timeout=self.timeout_s,
            username=r.username or None,
            password=r.password or None,
            use_tls=r.tls == "tls",
            start_tls=r.tls == "starttls",
        )

    def is_up(self, now: float) -> bool:
        return self.down_until <= now

    def mark_down(self, cooldown_s: float) -> None:
        self.down_until = asyncio.get_running_loop().time() + cooldown_s
        metrics.SMTP_RELAY_DOWN.labels(self.name).inc()
        metrics.SMTP_RELAY_UP.labels(self.name).set(0)

    def mark_up(self) -> None:
        if self.down_until:
            self.down_until = 0.0
            metrics.SMTP_RELAY_UP.labels(self.name).set(1)

    async def send(self, sender: str, to: str, data: bytes, mail_options: list[str], *, skip_if_down: bool) -> bool:
        """Hand the message to this relay: True once it took it; False, untried, when
        `skip_if_down` and another send found the relay down while this one waited for a
        connection. Raises `_RelayDown` when the relay cannot be reached (refused, timed out,
        gone), else the classified delivery error of its answer."""
        async with self._slots:
            if skip_if_down and not self.is_up(asyncio.get_running_loop().time()):
                return False
            metrics.SMTP_IN_USE.inc()
            metrics.SMTP_RELAY_IN_USE.labels(self.name).inc()
            try:
                reused = not self._idle.empty()
                client = self._idle.get_nowait() if reused else self._client()
                try:
                    await self._send_on(client, sender, to, data, mail_options)
                except _RelayDown:
                    if not reused:
                        raise
                    # A kept connection the relay closed while idle: one fresh try before the
                    # relay counts as down.
                    await self._send_on(self._client(), sender, to, data, mail_options)
            finally:
                metrics.SMTP_IN_USE.dec()
                metrics.SMTP_RELAY_IN_USE.labels(self.name).dec()
        return True

    async def _send_on(
        self, client: aiosmtplib.SMTP, sender: str, to: str, data: bytes, mail_options: list[str]
    ) -> None:
        healthy = False
        try:
            if not client.is_connected:
                await client.connect()
            await _transaction(client, sender, to, data, mail_options)
            healthy = True
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0] if exc.recipients else None
            code, text = (refused.code, refused.message) if refused else (550, "recipient refused")
            raise self._answered(_classify(code, text, hard_bounce=True)) from exc
        except aiosmtplib.SMTPSenderRefused as exc:
            raise self._answered(_classify(exc.code, exc.message, hard_bounce=False)) from exc
        except aiosmtplib.SMTPDataError as exc:
            raise self._answered(_classify(exc.code, exc.message, hard_bounce=True)) from exc
        except _CONNECTION_ERRORS as exc:
            raise _RelayDown(f"{self.name}: {exc or type(exc).__name__}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise self._answered(_classify(exc.code, exc.message, hard_bounce=False)) from exc
        finally:
            if healthy:
                self._idle.put_nowait(client)
            else:
                with contextlib.suppress(Exception):
                    client.close()
        metrics.SMTP_RELAY_MESSAGES.labels(self.name, "accepted").inc()

    def _answered(self, error: DeliveryError) -> DeliveryError:
        metrics.SMTP_RELAY_MESSAGES.labels(self.name, "refused").inc()
        return error

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            with contextlib.suppress(Exception):
                await client.quit()


async def _transaction(client: aiosmtplib.SMTP, sender: str, to: str, data: bytes, mail_options: list[str]) -> None:
    """One message on an open session: MAIL, RCPT, DATA, raising what aiosmtplib's `sendmail`
    raises for one recipient, without its per-message work that is not needed here: it parses
    both addresses twice with `email.utils` and passes over the whole message once more for
    SIZE, a tenth of a worker's time per email. The addresses are plain addr-specs already
    (`message_bytes` refuses any other From or To; the VERP sender is ours), and aiosmtplib
    still refuses any control character in a command."""
    if client.is_ehlo_or_helo_needed:
        try:
            await client.ehlo()
        except aiosmtplib.SMTPHeloError:
            await client.helo()
    utf8 = "SMTPUTF8" in mail_options
    if utf8 and not client.supports_extension("smtputf8"):
        raise aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server")
    encoding = "utf-8" if utf8 else "ascii"
    options = [option.encode("ascii") for option in mail_options]
    if client.supports_extension("size"):
        # RFC 1870: the message's octets as sent (its lines already end in CRLF).
        options.insert(0, f"SIZE={len(data)}".encode("ascii"))
    response = await client.execute_command(b"MAIL", b"FROM:<" + sender.encode(encoding) + b">", *options)
    if response.code != aiosmtplib.SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
    response = await client.execute_command(b"RCPT", b"TO:<" + to.encode(encoding) + b">")
    if response.code not in (aiosmtplib.SMTPStatus.completed, aiosmtplib.SMTPStatus.will_forward):
        raise aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(response.code, response.message, to)])
    await client.data(data)


def _classify(code: int, text: str, *, hard_bounce: bool) -> TransientDeliveryError | PermanentDeliveryError:
    """SMTP 4xx: try again later. 5xx: never. A 5xx on RCPT/DATA is the address's own fault."""
    detail = _reply(code, text)
    if 400 <= code < 500:
        return TransientDeliveryError(detail)
    return PermanentDeliveryError(detail, hard_bounce=hard_bounce)
