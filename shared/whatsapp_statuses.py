"""WhatsApp status updates (Meta's webhooks) applied to messages: the data layer of a
message's delivery reports. A batch is applied in one statement, matched by wamid (the
message's `external_message_id`); a status never moves a message backwards, and within one
batch `failed` wins over any progress status for the same message."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence

import asyncpg

from shared import db
from shared.domain import STATUS_RANK, MessageStatus
from shared.sql import Q

# The order statuses may only move along, lowest first, handed to the SQL (one source of truth).
_PROGRESS_ORDER = [str(s) for s, _ in sorted(STATUS_RANK.items(), key=lambda item: item[1])]
_FAILED_PRECEDENCE = max(STATUS_RANK.values()) + 1


@dataclasses.dataclass(frozen=True, slots=True)
class StatusUpdate:
    wamid: str
    status: MessageStatus
    at: datetime.datetime
    detail: str | None


def _precedence(status: MessageStatus) -> int:
    return _FAILED_PRECEDENCE if status is MessageStatus.failed else STATUS_RANK[status]


@db.translated
async def apply(pool: asyncpg.Pool, updates: Sequence[StatusUpdate]) -> int:
    """Apply a batch of updates; returns how many messages changed status."""
    if not updates:
        return 0
    row = await pool.fetchrow(
        Q.apply_whatsapp_statuses,
        [u.wamid for u in updates],
        [str(u.status) for u in updates],
        [u.at for u in updates],
        [u.detail for u in updates],
        [_precedence(u.status) for u in updates],
        _PROGRESS_ORDER,
    )
    return int(row["messages_updated"]) if row is not None else 0
