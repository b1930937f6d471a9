"""Bounce and complaint reports read from mail: what kind each is, whom it names, and which
message of ours it quotes.

Standard reports are read with the stdlib `email` package: RFC 3464 DSNs
(`multipart/report; report-type=delivery-status`) and RFC 5965 ARF complaints
(`multipart/report; report-type=feedback-report`). Real bounce mail is often neither (qmail's
QSBMF, Exim's text bounce with X-Failed-Recipients, older Postfix, Sendmail, Exchange, Yahoo...):
those shapes go to flufl.bounce, a library made for exactly that (GNU Mailman's detectors),
which tells permanent from temporary failures. This module only reads: it runs no SQL and
does not decide which message a report belongs to; it returns the original Message-ID the
report quotes, for when the VERP token is missing or mangled.
"""

from __future__ import annotations

import dataclasses
import email
import email.message
import logging
import re
from collections.abc import Iterator
from enum import StrEnum

from flufl.bounce import all_failures

# flufl.bounce logs a detector's exception with its traceback before raising it; parse() turns
# it into an `unknown` report with the exception's name, so its log would only repeat that
# as a traceback on hostile input.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

# Generous for a report's top-level headers and its parts: this is not where the size limit is
# enforced (the SMTP server refuses large mail at DATA), only a guard for direct callers.
_MAX_REPORT_BYTES = 10 * 1024 * 1024


class Kind(StrEnum):
    hard_bounce = "hard_bounce"
    soft_bounce = "soft_bounce"
    auto_reply = "auto_reply"
    complaint = "complaint"
    unknown = "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    kind: Kind
    # The failed or complaining recipient as the report names it (not trusted to pick a message).
    recipient: str | None = None
    # The enhanced status code (RFC 3463), e.g. "5.1.1", when the report gives one.
    status: str | None = None
    # What the remote server said (Diagnostic-Code), or the ARF feedback type, for the event log.
    detail: str | None = None
    # The Message-ID of the original message, quoted by the report, `<...>` as we sent it.
    original_message_id: str | None = None


_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_QUOTED_MESSAGE_ID = re.compile(r"^message-id:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_AUTO_REPLY_SUBJECT = re.compile(
    r"^(auto(matic)?[ -]?(reply|response|antwort)|out of (the )?office|abwesenheit|r[ée]ponse automatique)",
    re.IGNORECASE,
)


def parse(raw: bytes) -> Report:
    """Classify one received report; never raises on malformed mail (it is `unknown`)."""
    if len(raw) > _MAX_REPORT_BYTES:
        return Report(Kind.unknown, detail="too large to read")
    try:
        msg = email.message_from_bytes(raw)
        return _classify(msg)
    except Exception as exc:  # the email package and the detectors on hostile input
        return Report(Kind.unknown, detail=f"unreadable report: {type(exc).__name__}")


def _classify(msg: email.message.Message) -> Report:
    if msg.get_content_type() == "multipart/report":
        report_type = str(msg.get_param("report-type") or "").lower()
        if report_type == "feedback-report":
            return _arf(msg)
        if report_type == "delivery-status":
            dsn = _dsn(msg)
            if dsn is not None:
                return dsn
    # The heuristics first: MTAs mark their own bounces `Auto-Submitted: auto-replied` too.
    report = _heuristic(msg)
    if report.kind is Kind.unknown and _is_auto_reply(msg):
        return Report(Kind.auto_reply, detail=_header(msg, "subject"), original_message_id=_in_reply_to(msg))
    return report


def _header(msg: email.message.Message, name: str) -> str | None:
    value = msg.get(name)
    return " ".join(str(value).split()) if value is not None else None


def _parts(msg: email.message.Message) -> Iterator[email.message.Message]:
    yield from msg.walk()


def _fields_blocks(part: email.message.Message) -> list[email.message.Message]:
    """A message/delivery-status or message/feedback-report part's header blocks (the email
    package parses the first as a list of blocks and the second as one message)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, email.message.Message)]
    if isinstance(payload, str):
        return [email.message_from_string(block) for block in re.split(r"\r?\n\r?\n", payload) if block.strip()]
    return []


def _original_message_id(msg: email.message.Message) -> str | None:
    """The Message-ID the report quotes from the original: a message/rfc822 part's header, a
    text/rfc822-headers part, or a `Message-ID:` line in a text body (qmail, Exim)."""
    for part in _parts(msg):
        ctype = part.get_content_type()
        if part is msg:
            continue
        if ctype == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
                found = payload[0].get("message-id")
                if found:
                    return _angle(str(found))
        elif ctype in ("text/rfc822-headers", "text/plain") or part.get_content_maintype() == "text":
            text = _text(part)
            if text and (m := _QUOTED_MESSAGE_ID.search(text)):
                return m.group(1)
    if not msg.is_multipart():
        text = _text(msg)
        if text and (m := _QUOTED_MESSAGE_ID.search(text)):
            return m.group(1)
    return None


def _angle(value: str) -> str | None:
    value = value.strip()
    m = re.search(r"<[^<>\s]+>", value)
    return m.group(0) if m else None


def _text(part: email.message.Message) -> str | None:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload.decode(part.get_content_charset() or "utf-8", errors="replace")
    raw = part.get_payload()
    return raw if isinstance(raw, str) else None


def _address(field: str | None) -> str | None:
    """`rfc822; a@b.c` -> `a@b.c`."""
    if not field:
        return None
    value = field.split(";", 1)[1] if ";" in field else field
    value = value.strip().strip("<>").strip()
    return value or None


def _dsn(msg: email.message.Message) -> Report | None:
    """An RFC 3464 DSN: a failed recipient with a 5.x.x status is a hard bounce; `delayed` or a
    4.x.x status a soft one; delivered/relayed/expanded notices are nothing (unknown)."""
    original = _original_message_id(msg)
    for part in _parts(msg):
        if part.get_content_type() not in ("message/delivery-status", "message/global-delivery-status"):
            continue
        blocks = _fields_blocks(part)
        recipients = [b for b in blocks if b.get("action") or b.get("final-recipient") or b.get("status")]
        soft: Report | None = None
        for block in recipients:
            action = (_header(block, "action") or "").lower()
            status_field = _header(block, "status") or ""
            diagnostic = _header(block, "diagnostic-code")
            m = _STATUS.search(status_field) or _STATUS.search(diagnostic or "")
            status = ".".join(m.groups()) if m else None
            recipient = _address(_header(block, "final-recipient") or _header(block, "original-recipient"))
            detail = _diagnostic(diagnostic) or status_field or None
            if action == "failed" and status is not None and status.startswith("5"):
                return Report(Kind.hard_bounce, recipient, status, detail, original)
            if action in ("failed", "delayed") and soft is None:
                soft = Report(Kind.soft_bounce, recipient, status, detail, original)
        if soft is not None:
            return soft
        if recipients:
            return Report(Kind.unknown, detail="a delivery notice that is not a failure", original_message_id=original)
    return None  # a malformed DSN: let the heuristics try


def _diagnostic(value: str | None) -> str | None:
    """`smtp; 550 5.1.1 ...` -> `550 5.1.1 ...` (the type prefix says nothing to a reader)."""
    if not value:
        return None
    kind, sep, rest = value.partition(";")
    return (rest if sep and kind.strip().lower() in ("smtp", "x-postfix", "x-unix") else value).strip()[:500]


def _arf(msg: email.message.Message) -> Report:
    """An RFC 5965 feedback report: `Feedback-Type: abuse` (a spam complaint) is a complaint;
    the other types (not-spam, virus, other...) change nothing."""
    original = _original_message_id(msg)
    for part in _parts(msg):
        if part.get_content_type() != "message/feedback-report":
            continue
        fields: dict[str, str] = {}
        for block in _fields_blocks(part):
            for key, value in block.items():
                fields.setdefault(key.lower(), " ".join(str(value).split()))
        feedback = fields.get("feedback-type", "").lower()
        recipient = _address(fields.get("original-rcpt-to"))
        if feedback in ("abuse", "fraud"):
            return Report(Kind.complaint, recipient, None, f"feedback-type {feedback}", original)
        return Report(Kind.unknown, recipient, None, f"feedback-type {feedback or 'missing'}", original)
    return Report(Kind.unknown, detail="a feedback report without its feedback part", original_message_id=original)


def _is_auto_reply(msg: email.message.Message) -> bool:
    auto = (_header(msg, "auto-submitted") or "").lower()
    if auto.startswith("auto-replied"):
        return True
    if msg.get("x-autoreply") or msg.get("x-autorespond") or msg.get("x-autoresponder"):
        return True
    if (_header(msg, "precedence") or "").lower() == "auto_reply":
        return True
    return bool(_AUTO_REPLY_SUBJECT.match(_header(msg, "subject") or ""))


def _in_reply_to(msg: email.message.Message) -> str | None:
    return _angle(_header(msg, "in-reply-to") or "") or _angle(_header(msg, "references") or "")


def _heuristic(msg: email.message.Message) -> Report:
    """Shapes that are not RFC 3464: flufl.bounce's detectors (qmail, Exim, Postfix text,
    Exchange, Yahoo, AOL, GroupWise, ...). A permanent failure is a hard bounce, a warning a
    soft one, nothing recognised is unknown."""
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # one of its heuristics on mail it was not written for (short plain mail)
        temporary = permanent = frozenset()
    original = _original_message_id(msg)
    if permanent:
        recipient = sorted(permanent)[0].decode("ascii", "replace")
        status, detail = _status_near(msg, recipient)
        # The text heuristics can take a delay warning that lists the address for a failure:
        # a 4.x.x reply or a warning's wording makes it soft (a wrong hard bounce suppresses a
        # good address for good; a wrong soft one only waits for the real bounce).
        if (status is not None and status.startswith("4")) or _looks_like_warning(msg):
            return Report(Kind.soft_bounce, recipient, status, detail, original)
        return Report(Kind.hard_bounce, recipient, status, detail, original)
    if temporary:
        recipient = sorted(temporary)[0].decode("ascii", "replace")
        status, detail = _status_near(msg, recipient)
        return Report(Kind.soft_bounce, recipient, status, detail, original)
    return Report(Kind.unknown, original_message_id=original)


_WARNING = re.compile(
    r"(will be retried|will retry|not yet been delivered|delivery attempts will continue|"
    r"this is a warning|still being retried|delayed|warning:)",
    re.IGNORECASE,
)


def _looks_like_warning(msg: email.message.Message) -> bool:
    if _WARNING.search(_header(msg, "subject") or ""):
        return True
    for part in _parts(msg):
        if part.get_content_maintype() == "text" and _WARNING.search((_text(part) or "")[:4000]):
            return True
    return False


def _status_near(msg: email.message.Message, recipient: str) -> tuple[str | None, str | None]:
    """The first SMTP reply line after the recipient in a text bounce (for the event log)."""
    for part in _parts(msg):
        if part.get_content_maintype() != "text":
            continue
        text = _text(part) or ""
        at = text.lower().find(recipient.lower())
        if at < 0:
            continue
        for line in text[at:].splitlines()[:8]:
            m = re.search(r"\b([45]\d\d)[ -]", line)
            if m:
                s = _STATUS.search(line)
                return (".".join(s.groups()) if s else f"{m.group(1)[0]}.0.0"), line.strip()[:500]
    return None, None
