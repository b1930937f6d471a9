"""Outbound webhook events: their types, the request body tidings posts, and its Standard
Webhooks signature (standardwebhooks.com).

Events are written by Postgres triggers in the transaction of the change they report
(shared/migrations/0007_webhooks.sql): `webhook_message_events` on message_events for
message.*, `webhook_contact_events` on contacts for contact.unsubscribed and
subscriber.confirmed, and `webhook_enqueue()` for webhook.test. A message event stores the
message row as the change left it, with the event's own status and time; `body` shapes it
into the message object the status_url answers (without `events`).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from shared import jsonutil, messages


class EventType(StrEnum):
    message_sent = "message.sent"
    message_delivered = "message.delivered"
    message_read = "message.read"
    message_failed = "message.failed"
    message_bounced = "message.bounced"
    message_complained = "message.complained"
    message_rejected = "message.rejected"
    contact_unsubscribed = "contact.unsubscribed"
    subscriber_confirmed = "subscriber.confirmed"
    webhook_test = "webhook.test"


EVENT_TYPES = frozenset(t.value for t in EventType)


class DeliveryStatus(StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"


SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
_TIMES = ("created_at", "updated_at", "sent_at")


def new_secret() -> str:
    """`whsec_` + the base64 of 32 random bytes (the contract asks for at least 24)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secrets_: Iterable[str], webhook_id: str, timestamp_s: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,<base64 HMAC-SHA256>` per secret, space-separated,
    over `{webhook-id}.{webhook-timestamp}.{body}`."""
    signed = f"{webhook_id}.{timestamp_s}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(_key(s), signed, hashlib.sha256).digest()).decode() for s in secrets_
    )


def headers(secrets_: Iterable[str], webhook_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": signature(secrets_, webhook_id, timestamp_s, body),
    }


def _time(value: Any) -> Any:
    # The trigger's snapshot holds Postgres' JSON text of a timestamptz (in the writer's time
    # zone); as a datetime it is written like every time the api answers (UTC, `Z`).
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value).astimezone(dt.UTC)
    return value


def message_data(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """The message object (as the status_url target answers it, without `events`) from the
    trigger's snapshot, plus `bounce` for message.bounced."""
    row = {k: (_time(v) if k in _TIMES else v) for k, v in snapshot.items()}
    # An event written before messages.test existed (migration 0008) was a live message's.
    row.setdefault("test", False)
    data = messages.message_json(row)
    if "bounce" in snapshot:
        data["bounce"] = snapshot["bounce"]
    return data


def body(event_type: str, data: Mapping[str, Any], occurred_at: dt.datetime) -> bytes:
    """The JSON body posted for one event: `{"type", "timestamp", "data"}`."""
    shaped = message_data(data) if event_type.startswith("message.") else dict(data)
    return jsonutil.dumps({"type": event_type, "timestamp": occurred_at, "data": shaped})
