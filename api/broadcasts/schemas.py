"""Request and response shapes of the Broadcasts API.

Requests are decoded straight into these (unknown fields refused: typos are caught).
Responses are built as plain dicts for speed; these response types document them in
OpenAPI and tests convert real responses into them, so the two cannot drift.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared.sending import Trigger

NonEmpty = Annotated[str, Meta(min_length=1, max_length=1000)]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
VariableName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=100)]
Liquid = Annotated[str, Meta(max_length=200_000)]


class Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class Variable(Strict):
    name: VariableName
    default: str | None = None


class BroadcastCreate(Strict):
    name: Name
    type: Literal["transactional", "marketing"]
    variables: list[Variable] = []


class BroadcastUpdate(Strict):
    name: Name | UnsetType = UNSET
    variables: list[Variable] | UnsetType = UNSET
    # Present only so that a PATCH naming it is answered `type_immutable`, not "unknown field".
    type: str | UnsetType = UNSET


class EmailTemplateIn(Strict, tag_field="channel", tag="email"):
    from_email: NonEmpty
    subject: Liquid
    from_name: Liquid | None = None
    reply_to: Liquid | None = None
    html_body: Liquid | None = None
    text_body: Liquid | None = None
    preheader: Liquid | None = None


class ButtonParameter(Strict):
    """The dynamic URL suffix of the template's button at `index` (Meta's 0-based position).
    A plain string in `button_parameters` fills the button at its own position in the list."""

    index: Annotated[int, Meta(ge=0, le=9)]
    text: Liquid


class WhatsAppTemplateIn(Strict, tag_field="channel", tag="whatsapp"):
    template_name: NonEmpty
    language: Annotated[str, Meta(min_length=2, max_length=20)]
    category: Literal["utility", "authentication", "marketing"]
    body_parameters: list[Liquid] = []
    button_parameters: list[Liquid | ButtonParameter] = []


TemplateIn = EmailTemplateIn | WhatsAppTemplateIn


class EmailTemplatePatch(Strict):
    from_email: NonEmpty | UnsetType = UNSET
    subject: Liquid | UnsetType = UNSET
    from_name: Liquid | UnsetType | None = UNSET
    reply_to: Liquid | UnsetType | None = UNSET
    html_body: Liquid | UnsetType | None = UNSET
    text_body: Liquid | UnsetType | None = UNSET
    preheader: Liquid | UnsetType | None = UNSET
    template_name: NonEmpty | UnsetType = UNSET
    language: str | UnsetType = UNSET
    category: Literal["utility", "authentication", "marketing"] | UnsetType = UNSET
    body_parameters: list[Liquid] | UnsetType = UNSET
    button_parameters: list[Liquid | ButtonParameter] | UnsetType = UNSET
    channel: str | UnsetType = UNSET


TemplatePatch = EmailTemplatePatch


class SendRequest(Trigger):
    # The trigger's fields are the domain's (`shared.sending.Trigger`), written there once;
    # the request adds only how to answer: at once (202) or when the messages settle.
    background: bool = False


class ContactCreate(Strict):
    name: Annotated[str, Meta(max_length=300)] | None = None
    email: Annotated[str, Meta(max_length=320)] | None = None
    phone: Annotated[str, Meta(max_length=50)] | None = None
    status: Literal["subscribed", "unsubscribed", "blocked"] = "subscribed"
    properties: dict[str, Any] = {}


class ContactUpdate(Strict):
    name: Annotated[str, Meta(max_length=300)] | UnsetType | None = UNSET
    status: Literal["subscribed", "unsubscribed", "blocked"] | UnsetType = UNSET
    properties: dict[str, Any] | UnsetType = UNSET


class ChannelCreate(Strict):
    type: Literal["email", "whatsapp"]
    address: Annotated[str, Meta(min_length=1, max_length=320)]


# ---- responses (documentation and drift tests) ----


class Readiness(msgspec.Struct):
    ready: bool
    missing: list[str]


class Summary(msgspec.Struct):
    status: str
    active_since: dt.datetime | None
    messages_sent: int
    channels_used: list[str]
    by_status: dict[str, int]


class TemplateOut(msgspec.Struct):
    id: uuid.UUID
    channel: Literal["email", "whatsapp"]
    from_email: str | None = None
    from_name: str | None = None
    reply_to: str | None = None
    subject: str | None = None
    html_body: str | None = None
    text_body: str | None = None
    preheader: str | None = None
    template_name: str | None = None
    language: str | None = None
    category: str | None = None
    body_parameters: list[str] | None = None
    button_parameters: list[str | ButtonParameter] | None = None


class BroadcastOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    name: str
    type: Literal["transactional", "marketing"]
    status: Literal["draft", "active", "paused"]
    variables: list[Variable]
    templates: list[TemplateOut]
    readiness: Readiness
    summary: Summary
    activated_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class BroadcastList(msgspec.Struct):
    data: list[BroadcastOut]
    next_cursor: str | None


class ChannelOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    type: Literal["email", "whatsapp"]
    address: str


class ContactOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    name: str | None
    email: str | None
    phone: str | None
    status: Literal["subscribed", "unsubscribed", "blocked"]
    properties: dict[str, Any]
    channels: list[ChannelOut]
    created_at: dt.datetime
    updated_at: dt.datetime


class Event(msgspec.Struct, forbid_unknown_fields=True):
    status: str
    at: dt.datetime
    detail: str | None


class MessageOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    send_id: uuid.UUID
    broadcast_id: uuid.UUID | None
    template_id: uuid.UUID | None
    contact_id: uuid.UUID | None
    contact_channel_id: uuid.UUID | None
    channel: Literal["email", "whatsapp"]
    to: str | None
    status: str
    source: Literal["api", "manual"]
    external_message_id: str | None
    error: str | None
    attempts: int
    created_at: dt.datetime
    updated_at: dt.datetime
    sent_at: dt.datetime | None
    # Made with a test key (reached no provider).
    test: bool
    events: list[Event] | None = None


class MessageList(msgspec.Struct):
    data: list[MessageOut]
    next_cursor: str | None


class SendRecord(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    template_id: uuid.UUID
    channel: Literal["email", "whatsapp"]
    contact_id: uuid.UUID | None
    contact_channel_id: uuid.UUID | None
    to: str | None
    status: str
    external_message_id: str | None
    error: str | None
    status_url: str
    test: bool


class SendResponse(msgspec.Struct, forbid_unknown_fields=True):
    send_id: uuid.UUID
    recipients: list[SendRecord]


# ---- API keys ----

ScopeName = Literal["read", "write", "admin"]


class KeyCreate(Strict):
    scopes: Annotated[list[ScopeName], Meta(min_length=1, max_length=3)]
    name: Name | None = None
    mode: Literal["live", "test"] = "live"


class KeyCreated(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    name: str | None
    scopes: list[ScopeName]
    mode: Literal["live", "test"]
    prefix: str
    key: str  # shown here only: only its hash is stored
    created_at: dt.datetime


class KeyOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    name: str | None
    scopes: list[ScopeName]
    mode: Literal["live", "test"]
    prefix: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


class KeyList(msgspec.Struct):
    data: list[KeyOut]
    next_cursor: str | None


class ErrorBody(msgspec.Struct):
    code: str
    message: str
    fields: dict[str, list[str]] | None = None


class ErrorResponse(msgspec.Struct):
    error: ErrorBody


class V1ErrorResponse(msgspec.Struct):
    """The Transactionals API's error shape: `{"errors": {"field": ["can't be blank"]}}`."""

    errors: dict[str, list[str]]
