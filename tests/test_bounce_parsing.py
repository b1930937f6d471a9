"""Bounce and complaint reports classified: real-world shapes written into fixtures (Postfix,
Exim, Gmail, Microsoft, qmail DSNs and text bounces, a Yahoo ARF report, warnings, an
out-of-office), and malformed mail read without raising."""

from __future__ import annotations

import pathlib

import pytest

from shared import bounces
from shared.bounces import Kind

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "bounces"
VERP = "bounces+abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz@bounce.tidings.test"
RCPT = "ada.lovelace@example.com"
MESSAGE_ID = "<0b7c6f3e-9d2a-4c1e-8f10-2a3b4c5d6e7f@tidings.test>"


def fixture(name: str, *, verp: str = VERP, rcpt: str = RCPT, message_id: str = MESSAGE_ID) -> bytes:
    text = (FIXTURES / name).read_text()
    return text.replace("{{VERP}}", verp).replace("{{RCPT}}", rcpt).replace("{{MESSAGE_ID}}", message_id).encode()


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("postfix_hard.eml", "5.1.1"),
        ("gmail_hard.eml", "5.1.1"),
        ("microsoft_hard.eml", "5.1.10"),
        ("exim_hard.eml", "5.1.1"),
        ("qmail_hard.eml", "5.1.1"),
    ],
)
def test_hard_bounces(name: str, status: str) -> None:
    report = bounces.parse(fixture(name))
    assert report.kind is Kind.hard_bounce
    assert report.recipient == RCPT
    assert report.status == status
    assert report.original_message_id == MESSAGE_ID
    assert report.detail and ("550" in report.detail)


@pytest.mark.parametrize("name", ["postfix_delayed.eml", "exim_delay_warning.eml"])
def test_warnings_are_soft_bounces(name: str) -> None:
    report = bounces.parse(fixture(name))
    assert report.kind is Kind.soft_bounce


def test_a_spam_complaint() -> None:
    report = bounces.parse(fixture("arf_complaint.eml"))
    assert report.kind is Kind.complaint
    assert report.recipient == RCPT and report.original_message_id == MESSAGE_ID
    assert report.detail == "feedback-type abuse"


def test_other_feedback_types_are_not_complaints() -> None:
    raw = fixture("arf_complaint.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    assert bounces.parse(raw).kind is Kind.unknown


def test_an_out_of_office_is_an_auto_reply() -> None:
    report = bounces.parse(fixture("auto_reply.eml"))
    assert report.kind is Kind.auto_reply
    assert report.original_message_id == MESSAGE_ID


def test_a_dsn_that_failed_with_a_temporary_status_is_soft() -> None:
    raw = fixture("postfix_hard.eml").replace(b"Status: 5.1.1", b"Status: 4.2.2").replace(b"550 5.1.1", b"452 4.2.2")
    assert bounces.parse(raw).kind is Kind.soft_bounce


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"Subject: hello\n\njust a note",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\nContent-Type: message/"
        b"delivery-status\n\n\n--x--",
        b"Content-Type: multipart/report; report-type=feedback-report\n\nno parts at all",
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="unterminated\n\n--unterminated\n',
        b"Content-Type: message/rfc822\n\nContent-Type: message/rfc822\n\n" * 50,
    ],
)
def test_malformed_mail_is_unknown_without_raising(raw: bytes) -> None:
    assert bounces.parse(raw).kind in (Kind.unknown, Kind.auto_reply)


def test_a_short_auto_reply_is_still_an_auto_reply() -> None:
    # One of flufl.bounce's heuristics raises on short plain mail; the auto-reply is still seen.
    raw = b"Subject: Out of Office\r\nAuto-Submitted: auto-replied\r\n\r\naway\r\n"
    assert bounces.parse(raw).kind is Kind.auto_reply
