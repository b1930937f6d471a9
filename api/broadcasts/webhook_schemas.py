"""Request and response shapes of the outbound webhook routes (api/broadcasts/webhooks.py)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from api.broadcasts.schemas import Strict
from shared.webhook_urls import MAX_URL_LENGTH

Url = Annotated[str, Meta(min_length=1, max_length=MAX_URL_LENGTH)]
Description = Annotated[str, Meta(max_length=1000)]
EventTypes = Annotated[list[Annotated[str, Meta(max_length=100)]], Meta(max_length=50)]


class WebhookCreate(Strict):
    url: Url
    events: EventTypes = []
    description: Description | None = None


class WebhookUpdate(Strict):
    url: Url | UnsetType = UNSET
    events: EventTypes | UnsetType = UNSET
    description: Description | UnsetType | None = UNSET
    enabled: bool | UnsetType = UNSET


class WebhookOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    created_at: dt.datetime
    updated_at: dt.datetime


class WebhookCreated(WebhookOut, forbid_unknown_fields=True):
    secret: str


class WebhookList(msgspec.Struct):
    data: list[WebhookOut]
    next_cursor: str | None


class WebhookSecret(msgspec.Struct, forbid_unknown_fields=True):
    secret: str


class WebhookTestQueued(msgspec.Struct, forbid_unknown_fields=True):
    event_id: str


class DeliveryOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    event_id: str
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    last_response_status: int | None
    last_error: str | None
    next_attempt_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class DeliveryList(msgspec.Struct):
    data: list[DeliveryOut]
    next_cursor: str | None
