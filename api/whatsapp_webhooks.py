"""Channel webhooks: Meta's verification handshake and WhatsApp status updates.

No bearer key here: Meta proves itself with the verify token (handshake) and an HMAC of the
raw body under the app secret (updates). The payload is read here; `shared.whatsapp_statuses`
applies its statuses to the messages, in one statement per webhook call.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
from typing import Any

import msgspec
import orjson
import structlog
from aiohttp import web

from api.jsonio import json_response
from api.routing import Call, route
from shared import errors, whatsapp_statuses
from shared.domain import MessageStatus
from shared.whatsapp_statuses import StatusUpdate

TAG = "webhooks"
log = structlog.get_logger("tidings.api.webhooks")

MAX_DETAIL_CHARS = 500

# The WhatsApp statuses that move a message; Meta also sends others (`deleted`, `warning`)
# that say nothing about delivery.
_APPLIED = {
    "sent": MessageStatus.sent,
    "delivered": MessageStatus.delivered,
    "read": MessageStatus.read,
    "failed": MessageStatus.failed,
}


class WebhookReceipt(msgspec.Struct):
    received: int  # status updates in the payload that tidings tracks
    applied: int  # messages whose status changed


@route(
    "GET",
    "/webhooks/whatsapp",
    summary="Meta's webhook verification handshake (echoes hub.challenge)",
    scope=None,
    raw=True,
    tag=TAG,
    query=("hub.mode", "hub.verify_token", "hub.challenge"),
    content_type="text/plain",
    services=False,
    error_statuses=(403,),
)
async def verify_whatsapp_webhook(call: Call[None]) -> web.Response:
    query = call.request.query
    expected = call.state.settings.whatsapp_verify_token
    token = query.get("hub.verify_token", "")
    # With no verify token configured nobody may subscribe: an empty token must not match it.
    if (
        not expected
        or query.get("hub.mode") != "subscribe"
        or not hmac.compare_digest(token.encode(), expected.encode())
    ):
        raise errors.Forbidden("the webhook verify token does not match")
    return web.Response(text=query.get("hub.challenge", ""), content_type="text/plain")


@route(
    "POST",
    "/webhooks/whatsapp",
    summary="WhatsApp status updates (sent, delivered, read, failed), signed by Meta",
    scope=None,
    raw=True,
    tag=TAG,
    response=WebhookReceipt,
    error_statuses=(401,),
)
async def receive_whatsapp_webhook(call: Call[None]) -> web.Response:
    settings = call.state.settings
    # `raw=True`: the route wrapper read the exact bytes Meta signed, undecoded.
    raw = call.raw_body
    if not signature_matches(raw, call.request.headers.get("X-Hub-Signature-256", ""), settings.whatsapp_app_secret):
        log.warning("whatsapp_webhook_bad_signature", bytes=len(raw))
        raise errors.Unauthorized("X-Hub-Signature-256 is not the HMAC-SHA256 of this body under the app secret")
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidJson(f"the webhook body is not valid JSON: {exc}") from exc

    updates = parse_statuses(payload)
    applied = await whatsapp_statuses.apply(call.state.pool, updates)
    return json_response({"received": len(updates), "applied": applied})


def signature_matches(raw: bytes, header: str, app_secret: str) -> bool:
    """`header` is `sha256=<hex>`; compared in constant time. No secret configured: nothing matches."""
    if not app_secret:
        return False
    scheme, _, given = header.strip().partition("=")
    if scheme.lower() != "sha256" or not given or not given.isascii():
        return False
    expected = hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.lower().encode(), expected.encode())


def parse_statuses(payload: Any) -> list[StatusUpdate]:
    """Every tracked status in a `whatsapp_business_account` payload; anything malformed is skipped,
    since Meta would keep re-sending a payload that was refused."""
    updates: list[StatusUpdate] = []
    if not isinstance(payload, dict):
        return updates
    for entry in _dicts(payload.get("entry")):
        for change in _dicts(entry.get("changes")):
            value = change.get("value")
            if not isinstance(value, dict):
                continue
            for problem in _dicts(value.get("errors")):
                # Account-level errors name no message; an operator should still see them.
                log.warning("whatsapp_webhook_error", code=problem.get("code"), title=problem.get("title"))
            for item in _dicts(value.get("statuses")):
                update = _status_update(item)
                if update is not None:
                    updates.append(update)
    return updates


def _status_update(item: dict[str, Any]) -> StatusUpdate | None:
    wamid = item.get("id")
    status = _APPLIED.get(str(item.get("status")))
    # A NUL cannot be in a stored id (Postgres text): such an id names no message.
    if not isinstance(wamid, str) or not wamid or "\x00" in wamid or status is None:
        return None
    detail = _failure_detail(item.get("errors")) if status is MessageStatus.failed else None
    return StatusUpdate(wamid=wamid, status=status, at=_timestamp(item.get("timestamp")), detail=detail)


def _failure_detail(errors_: Any) -> str:
    first = next(iter(_dicts(errors_)), None)
    if first is None:
        return "whatsapp reported the message as failed"
    title = str(first.get("title") or first.get("message") or "no title")
    text = f"whatsapp error {first.get('code')}: {title}"
    error_data = first.get("error_data")
    details = error_data.get("details") if isinstance(error_data, dict) else None
    if isinstance(details, str) and details and details != title:
        text = f"{text} - {details}"
    return text.replace("\x00", "")[:MAX_DETAIL_CHARS]


def _timestamp(raw: Any) -> datetime.datetime:
    """Meta's timestamps are Unix seconds as a string; an unreadable one becomes now."""
    try:
        return datetime.datetime.fromtimestamp(int(raw), tz=datetime.UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.datetime.now(datetime.UTC)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
