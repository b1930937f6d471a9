"""The protocol every channel implements, what it is handed, and the failures it may report.

The pipeline (`worker.deliver`) depends on nothing else. The worker holds its channels by
kind (`WorkerContext.channels`, a `DeliveryChannel` per `shared.domain.Channel`); a claimed
message becomes a `Draft`, the renderer turns it into the kind's `Rendered` message (in a
sandboxed child process, worker/render_sandbox.py), and the channel sends that: it returns
the provider's id, or sorts its failure into transient (retry later) or permanent (give up
now). Channels decide which is which, since only they know what their provider's codes mean.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from shared.domain import MessageStatus


@dataclasses.dataclass(frozen=True, slots=True)
class Draft:
    """A claimed message before rendering: what any channel's renderer needs."""

    message_id: uuid.UUID
    body: Mapping[str, Any]  # the template's body, or the message's own content
    variables: Mapping[str, Any]
    to: str  # the address as the channel knows it (an email address, an E.164 number)


@dataclasses.dataclass(frozen=True, slots=True)
class RenderedEmail:
    message_id: str  # our Message-ID header value, `<...@...>`
    from_email: str
    from_name: str | None
    to: str
    to_name: str | None
    reply_to: str | None
    subject: str
    html: str | None
    text: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    # SMTP MAIL FROM (where bounces go); None: the From address.
    envelope_from: str | None = None
    # The org sending it: its sending domains' DKIM keys sign it (None: the global key only).
    org_id: uuid.UUID | None = None
    # Attached files, each a whole MIME part already encoded (worker/channels/email.py
    # `attachment_part`): the messages of one send share the same bytes objects.
    attachments: tuple[bytes, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class RenderedWhatsApp:
    to: str  # E.164
    template_name: str
    language: str
    body_parameters: list[str]
    button_parameters: list[str]
    # The template button each of `button_parameters` fills (Meta's 0-based index); None: the
    # parameters fill the buttons in order.
    button_indexes: list[int] | None = None


Rendered = RenderedEmail | RenderedWhatsApp


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryResult:
    external_message_id: str
    detail: str | None = None
    # What the message becomes right after `sent`, with `detail` as its event's detail: only
    # the test transport says (worker/channels/testmode.py); real reports arrive later.
    then: MessageStatus | None = None


class DeliveryError(Exception):
    """A failure the channel has already classified; `detail` quotes the provider's reply."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class TransientDeliveryError(DeliveryError):
    """Worth retrying: connection errors, timeouts, SMTP 4xx, provider rate limits and 5xx."""

    def __init__(self, detail: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help. `hard_bounce`: the address itself was refused, and is suppressed
    in the message's org (suppressions are email addresses: only the email channel sets it)."""

    def __init__(self, detail: str, *, hard_bounce: bool = False) -> None:
        super().__init__(detail)
        self.hard_bounce = hard_bounce


RenderedT = TypeVar("RenderedT", contravariant=True)


class DeliveryChannel(Protocol[RenderedT]):
    """One kind of channel (email, WhatsApp): sends what the renderer made of a `Draft`."""

    async def send(self, message: RenderedT) -> DeliveryResult:
        """Deliver one message; raise `TransientDeliveryError` or `PermanentDeliveryError`."""
        ...

    async def close(self) -> None:
        """Close what the channel holds open (connections, sessions)."""
        ...
