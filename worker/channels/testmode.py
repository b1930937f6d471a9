"""The transport of test mode: messages made with a test key go through the whole pipeline
(claimed, rendered, recorded, their events logged) and are handed here instead of to SMTP or
WhatsApp. Nothing leaves the process.

The recipient's local part picks the outcome, so that a producer's CI can walk each path
without a mail server:

- `fail@...`: `failed` (a permanent failure, never a hard bounce: nothing is suppressed);
- `bounce@...`: `sent`, then `bounced`;
- `complaint@...`: `sent`, then `complained`;
- anything else: `sent`; a WhatsApp message then `delivered`.

`sent` carries an external_message_id starting `test-`. The follow-up status is written with
the outcome, in the same transaction, and only ever to a test message
(shared/sql/delivery.sql `record_test_follow_ups`); test outcomes never touch the
suppression list nor a contact's status.
"""

from __future__ import annotations

import uuid

from shared.domain import MessageStatus
from worker.channels.base import DeliveryResult, PermanentDeliveryError, Rendered, RenderedEmail

EXTERNAL_ID_PREFIX = "test-"


def _local_part(address: str) -> str:
    return address.rpartition("@")[0].strip().lower()


class TestModeChannel:
    """One for every kind of message: `send` takes an email or a WhatsApp message as rendered."""

    __test__ = False  # not a pytest test class, whatever its name

    async def send(self, message: Rendered) -> DeliveryResult:
        external_id = f"{EXTERNAL_ID_PREFIX}{uuid.uuid4().hex}"
        if not isinstance(message, RenderedEmail):
            return DeliveryResult(external_id, "test mode: delivered", then=MessageStatus.delivered)
        local = _local_part(message.to)
        if local == "fail":
            raise PermanentDeliveryError("test mode: fail@ always fails; nothing was sent")
        if local == "bounce":
            return DeliveryResult(external_id, "test mode: bounce@ always bounces", then=MessageStatus.bounced)
        if local == "complaint":
            return DeliveryResult(external_id, "test mode: complaint@ always complains", then=MessageStatus.complained)
        return DeliveryResult(external_id)

    async def close(self) -> None:
        return None
