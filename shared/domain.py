"""Domain vocabulary shared by api and worker. Enum values equal the Postgres enums."""

from __future__ import annotations

from enum import StrEnum


class BroadcastType(StrEnum):
    transactional = "transactional"
    marketing = "marketing"


class BroadcastStatus(StrEnum):
    draft = "draft"
    active = "active"
    paused = "paused"


class Channel(StrEnum):
    email = "email"
    whatsapp = "whatsapp"


class ContactStatus(StrEnum):
    subscribed = "subscribed"
    unsubscribed = "unsubscribed"
    blocked = "blocked"


class MessageStatus(StrEnum):
    scheduled = "scheduled"
    queued = "queued"
    sending = "sending"
    sent = "sent"
    delivered = "delivered"
    read = "read"
    failed = "failed"
    bounced = "bounced"
    rejected = "rejected"
    skipped = "skipped"


class MessageSource(StrEnum):
    api = "api"
    manual = "manual"


class Scope(StrEnum):
    read = "read"
    write = "write"
    admin = "admin"


# Statuses after which a synchronous send stops waiting ("settled for this attempt").
SETTLED = frozenset(
    {
        MessageStatus.sent,
        MessageStatus.delivered,
        MessageStatus.read,
        MessageStatus.failed,
        MessageStatus.bounced,
        MessageStatus.rejected,
        MessageStatus.skipped,
    }
)

# Progress order for webhook updates: a status never moves to a lower rank.
STATUS_RANK = {
    MessageStatus.scheduled: 0,
    MessageStatus.queued: 1,
    MessageStatus.sending: 2,
    MessageStatus.sent: 3,
    MessageStatus.delivered: 4,
    MessageStatus.read: 5,
}

# Names every template may use without declaring them; they render empty when unknown.
BUILTIN_VARIABLES = frozenset({"name", "email", "phone", "unsubscribe_url"})
