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
    complained = "complained"
    canceled = "canceled"


class MessageSource(StrEnum):
    api = "api"
    manual = "manual"


class KeyMode(StrEnum):
    """A key's mode (api_keys.mode, a text column): a `test` key's sends reach no provider and
    its messages are seen only by test keys."""

    live = "live"
    test = "test"


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
        MessageStatus.complained,
        MessageStatus.canceled,
    }
)

# Statuses that never change again, with one exception: a complaint (an ARF report) may arrive
# after the email was delivered or read, so `complained` may follow `read` (and `sent`,
# `delivered`). WhatsApp reports never name a final status as their old one (the webhook SQL
# only moves along STATUS_RANK), so finals hold there by construction.
FINAL = frozenset(
    {
        MessageStatus.bounced,
        MessageStatus.complained,
        MessageStatus.failed,
        MessageStatus.rejected,
        MessageStatus.canceled,
        MessageStatus.read,
    }
)

# What a status may move to after the relay accepted the message (a report read later):
# a hard bounce only from `sent` (a bounce after `delivered` or `read` contradicts them),
# a complaint from any status that says the email reached the recipient.
AFTER_SENT = {
    MessageStatus.bounced: frozenset({MessageStatus.sent}),
    MessageStatus.complained: frozenset({MessageStatus.sent, MessageStatus.delivered, MessageStatus.read}),
}


def may_follow(old: MessageStatus, new: MessageStatus) -> bool:
    """Whether a message in `old` may move to `new` by a report that arrives after sending:
    never out of a final status except into `complained`, and never backwards."""
    if new in AFTER_SENT:
        return old in AFTER_SENT[new]
    if old in FINAL or old is MessageStatus.skipped:
        return False
    if new is MessageStatus.canceled:
        return old is MessageStatus.scheduled
    if old in STATUS_RANK and new in STATUS_RANK:
        return STATUS_RANK[old] < STATUS_RANK[new]
    return new in FINAL or new is MessageStatus.skipped


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
