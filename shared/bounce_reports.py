"""Bounce and complaint reports applied to messages: the data layer of `tidings bounces`.

A report (read by shared.bounces) names its message by the VERP token of the address it
was sent to (verified by shared.verp), or else by the original Message-ID it quotes; the
recipient address alone never picks a message. Only two kinds change anything:

- a hard bounce: the message `sent` -> `bounced`, the address joins the org's suppression
  list (`hard_bounce`) and its other messages not yet sent are `rejected`;
- a complaint: `sent`/`delivered`/`read` -> `complained`, the address joins the list
  (`complaint`), its messages not yet sent are `rejected` (as for any suppression) and the
  message's contact becomes `unsubscribed`.

All of it in one transaction, and only when the message moved: a report read twice finds the
message already moved and changes nothing the second time.
"""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg

from shared import db
from shared.bounces import Kind, Report
from shared.domain import AFTER_SENT, MessageStatus
from shared.sql import Q

_STATUS_FOR = {Kind.hard_bounce: MessageStatus.bounced, Kind.complaint: MessageStatus.complained}
_REASON_FOR = {Kind.hard_bounce: "hard_bounce", Kind.complaint: "complaint"}


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    message_id: uuid.UUID
    org_id: uuid.UUID
    old_status: str
    # False: the message was found but not moved (already moved by this report, or in a
    # status the report cannot follow).
    moved: bool


def changes_status(kind: Kind) -> bool:
    return kind in _STATUS_FOR


def _detail(report: Report) -> str:
    if report.kind is Kind.complaint:
        return f"spam complaint ({report.detail or 'feedback report'})"
    return report.detail or (f"hard bounce, status {report.status}" if report.status else "hard bounce")


@db.translated
async def apply(pool: asyncpg.Pool, report: Report, message_id: uuid.UUID | None) -> Applied | None:
    """Apply a hard bounce or a complaint to the message `message_id` names (a verified VERP
    token) or, without one, the message whose Message-ID the report quotes. Returns None when
    no message is found or the report's kind changes nothing."""
    status = _STATUS_FOR.get(report.kind)
    if status is None or (message_id is None and report.original_message_id is None):
        return None
    detail = _detail(report)
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            Q.apply_bounce_report,
            message_id,
            report.original_message_id,
            str(status),
            sorted(str(s) for s in AFTER_SENT[status]),
            detail,
        )
        if row is None:
            return None
        if row["moved"] and row["address"]:
            org_id, address = row["org_id"], row["address"]
            await conn.execute(Q.insert_suppression, org_id, address, _REASON_FOR[report.kind], detail)
            # Its other messages not yet sent (scheduled ones above all) must not go out either.
            after = "a hard bounce" if report.kind is Kind.hard_bounce else "a spam complaint"
            await conn.execute(
                Q.reject_unsent_to_address, org_id, address, f"address suppressed after {after}: {detail}"
            )
            if report.kind is Kind.complaint and row["contact_id"] is not None:
                await conn.execute(Q.unsubscribe_contact, row["contact_id"])
    return Applied(row["id"], row["org_id"], row["old_status"], bool(row["moved"]))
