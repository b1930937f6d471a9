"""Request and response shapes of the Transactionals API (`/api/v1`).

Requests are decoded leniently: every field optional and nullable, so that missing
and blank values reach the domain's own validation, which reports all of them at
once in the product's words (`{"errors": {"subject": ["can't be blank"]}}`). Wrong JSON
types and unknown fields are still refused by the decoder (422, that field named).
Responses are built as plain dicts; these types document them in OpenAPI and tests
convert real responses into them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType

from shared import transactionals


class Lenient(msgspec.Struct, forbid_unknown_fields=True):
    pass


class TransactionalCreate(transactionals.Submission):
    # The fields are the domain's (`shared.transactionals.Submission`), written there once;
    # this is their name on the wire (and in OpenAPI).
    pass


class TemplateCreate(Lenient):
    name: str | None = None
    subject: str | None = None
    body: str | None = None
    preheader: str | None = None


class PageCopy(Lenient):
    heading: str | None = None
    body: str | None = None


class ConfirmationPages(Lenient):
    confirmed: PageCopy | None = None
    already_confirmed: PageCopy | None = None
    invalid: PageCopy | None = None


class ConfirmationTemplateCreate(Lenient):
    name: str | None = None
    pages: ConfirmationPages | None = None
    # Make this the org's default confirmation template (used when a send names none).
    default: bool | None = None


class SubscriberCreate(Lenient):
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    confirmed: bool | None = None
    unsubscribed: bool | None = None


class SuppressionCreate(Lenient):
    email: str | None = None
    reason: str | None = None


# ---- responses (documentation and drift tests) ----


class TransactionalOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    recipient_email: str | None
    recipient_name: str | None
    subject: str | None
    body: str | None
    preheader: str | None
    reply_to: str | None
    queue_at: dt.datetime
    sent_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime
    status: str
    error: str | None
    status_url: str
    # Made with a test key (reached no provider).
    test: bool
    # Only with double_opt_in: pending | confirmed | expired (null when the send was rejected).
    confirmation_status: Literal["pending", "confirmed", "expired"] | UnsetType | None = UNSET
    confirmation_url: str | UnsetType | None = UNSET


class TemplateOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    name: str
    subject: str | None
    body: str | None
    preheader: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class TemplateList(msgspec.Struct):
    data: list[TemplateOut]
    next_cursor: str | None


class PageCopyOut(msgspec.Struct, forbid_unknown_fields=True):
    heading: str | None
    body: str | None


class ConfirmationPagesOut(msgspec.Struct, forbid_unknown_fields=True):
    confirmed: PageCopyOut
    already_confirmed: PageCopyOut
    invalid: PageCopyOut


class ConfirmationTemplateOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    name: str
    pages: ConfirmationPagesOut
    default: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class SubscriberOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    email: str | None
    first_name: str | None
    last_name: str | None
    confirmed: bool
    unsubscribed: bool
    redacted: bool
    created_at: dt.datetime


class SuppressionOut(msgspec.Struct, forbid_unknown_fields=True):
    email: str
    reason: Literal["hard_bounce", "complaint", "manual"]
    detail: str | None
    created_at: dt.datetime


class SuppressionList(msgspec.Struct):
    data: list[SuppressionOut]
    next_cursor: str | None


class TransactionalList(msgspec.Struct):
    data: list[TransactionalOut]
    next_cursor: str | None
