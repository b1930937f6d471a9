"""WhatsApp through Meta's Cloud API: one template message per `send`, over one keep-alive session.

The channel sorts Meta's failures itself (see `base.py`): what is worth retrying is decided
by the Graph API error `code`, which Meta documents as the stable part of an error, and
only then by the HTTP status. Meta answers most throttling with HTTP 400 (130429, 131056,
80007), so the status alone would call a rate limit permanent.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import aiohttp
import orjson
from yarl import URL

from shared.config import Settings
from worker.channels.base import (
    DeliveryResult,
    PermanentDeliveryError,
    RenderedWhatsApp,
    TransientDeliveryError,
)
from worker.throughput import Throughput

# Graph API / Cloud API codes that mean "not now" rather than "never". Every other code is
# permanent unless the HTTP status itself says the server or a rate limiter answered.
TRANSIENT_CODES = frozenset(
    {
        1,  # API Unknown: "invalid request or possible server error"
        2,  # API Service: temporarily unavailable (downtime or overload)
        4,  # API Too Many Calls: app-level rate limit
        17,  # API User Too Many Calls
        341,  # Application limit reached
        80007,  # WhatsApp Business Account rate limit
        130429,  # Cloud API throughput reached
        131000,  # Something went wrong (Meta's own failure)
        131016,  # Service unavailable
        131048,  # Spam rate limit hit: restrictions lift with time
        131056,  # (business, consumer) pair rate limit: at most one message every ~6 s to one user
        131057,  # Business account in maintenance mode
        133004,  # Server temporarily unavailable
    }
)

# Codes that stay permanent even when Meta pairs them with a 5xx: code 3 (capability or
# permission issue) is answered as HTTP 500, and retrying a missing permission never helps.
PERMANENT_CODES = frozenset(
    {
        3,
        10,
        100,
        190,
        131008,
        131026,
        131047,
        131051,
        132000,
        132001,
        132005,
        132007,
        132012,
        132015,
        132016,
        132018,
        133010,
    }
)

# Bounded so that a proxy answering with a whole HTML page cannot bloat the error column.
MAX_DETAIL_CHARS = 500


class WhatsAppChannel:
    """Sends `RenderedWhatsApp` template messages; one instance per worker process.

    The session is made on first use (or in `start()`), so the channel can be built outside
    a running loop; an injected session is used as is and left open by `close()`.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        session: aiohttp.ClientSession | None = None,
        max_connections: int = 100,
        keepalive_timeout_s: float = 60.0,
        throughput: Throughput | None = None,
    ) -> None:
        base = settings.whatsapp_api_base_url.rstrip("/")
        # Parsed once: aiohttp re-parses a str URL on every request.
        self._url = URL(f"{base}/{settings.whatsapp_api_version}/{settings.whatsapp_phone_number_id}/messages")
        self._headers = {
            "Authorization": f"Bearer {settings.whatsapp_access_token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self._timeout = aiohttp.ClientTimeout(total=settings.whatsapp_timeout_s)
        self._session = session
        self._owns_session = session is None
        # One host is ever called, so the per-host limit is the whole limit. More connections
        # than messages in flight only cost handshakes; fewer serialise sends behind each other.
        self._max_connections = max_connections
        self._keepalive_timeout_s = keepalive_timeout_s
        # WHATSAPP_MAX_PER_S, shared by every worker process (worker/throughput.py).
        self._ceiling = throughput.ceiling("whatsapp", settings.whatsapp_max_per_s) if throughput else None
        if throughput is not None:
            throughput.governs("whatsapp", lambda: self._ceiling)

    async def start(self) -> None:
        self._ensure_session()

    def _ensure_session(self) -> aiohttp.ClientSession:
        # No await between the check and the assignment, so concurrent first sends share one session.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=self._max_connections,
                keepalive_timeout=self._keepalive_timeout_s,
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    async def send(self, message: RenderedWhatsApp) -> DeliveryResult:
        session = self._ensure_session()
        payload = orjson.dumps(request_body(message))
        if self._ceiling is not None:
            await self._ceiling.take()  # waiting for a token is no attempt
        try:
            async with session.post(self._url, data=payload, headers=self._headers, timeout=self._timeout) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError as exc:  # aiohttp's own timeouts subclass it too
            # Meta may have accepted the message before the timeout: a retry can duplicate it.
            # Delivery is at least once (worker/deliver.py lists where a duplicate can happen);
            # losing an OTP is worse.
            raise TransientDeliveryError(f"whatsapp timeout after {self._timeout.total} s") from exc
        except aiohttp.InvalidURL as exc:
            raise PermanentDeliveryError(f"whatsapp API URL is invalid: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise TransientDeliveryError(f"whatsapp connection error: {_describe(exc)}") from exc
        return parse_response(status, raw, retry_after)


def request_body(message: RenderedWhatsApp) -> dict[str, Any]:
    """The Cloud API template message for one rendered message."""
    components: list[dict[str, Any]] = []
    if message.body_parameters:
        components.append(
            {
                "type": "body",
                "parameters": [{"type": "text", "text": p} for p in message.body_parameters],
            }
        )
    # Each URL button takes its one dynamic suffix in its own component, addressed by its index.
    indexes = message.button_indexes or range(len(message.button_parameters))
    for index, param in zip(indexes, message.button_parameters, strict=True):
        components.append(
            {
                "type": "button",
                "sub_type": "url",
                "index": str(index),
                "parameters": [{"type": "text", "text": param}],
            }
        )
    template: dict[str, Any] = {"name": message.template_name, "language": {"code": message.language}}
    if components:
        template["components"] = components
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        # Meta takes the number with or without '+'; wa_id (and webhooks) use bare digits.
        "to": message.to.lstrip("+"),
        "type": "template",
        "template": template,
    }


def parse_response(status: int, raw: bytes, retry_after: str | None = None) -> DeliveryResult:
    """Turn Meta's answer into a result, or a transient/permanent error quoting Meta's code."""
    body = _loads(raw)
    if 200 <= status < 300:
        wamid = _wamid(body)
        if wamid is not None:
            return DeliveryResult(external_message_id=wamid)
        # Not a Cloud API answer (a proxy or a wrong base URL): nothing says it was accepted,
        # so a later attempt is the safer bet than declaring the message lost.
        raise TransientDeliveryError(f"whatsapp HTTP {status} without a message id: {_snippet(raw)}")

    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    if isinstance(error, dict) and isinstance(code, int):
        detail = format_error(code, error)
    else:
        detail = f"whatsapp HTTP {status}: {_snippet(raw)}"
        code = None

    server_side = status >= 500 or status == 429
    if code in TRANSIENT_CODES or (server_side and code not in PERMANENT_CODES):
        raise TransientDeliveryError(detail, retry_after_s=parse_retry_after(retry_after))
    # 131026 (undeliverable) is not a hard bounce: Meta also uses it for recipients on an old
    # app version or who have not accepted new terms, so the number is kept.
    raise PermanentDeliveryError(detail)


def format_error(code: int, error: dict[str, Any]) -> str:
    """`whatsapp error 131026: Message Undeliverable. - <details>` from a Graph API error object."""
    message = str(error.get("message") or error.get("title") or "").strip()
    # Meta prefixes the title with "(#code) "; the code is already in front.
    prefix = f"(#{code})"
    if message.startswith(prefix):
        message = message[len(prefix) :].strip()
    text = f"whatsapp error {code}: {message or 'no message'}"
    error_data = error.get("error_data")
    details = error_data.get("details") if isinstance(error_data, dict) else None
    if isinstance(details, str) and details and details not in message:
        text = f"{text} - {details}"
    return text[:MAX_DETAIL_CHARS]


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date (RFC 9110); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _wamid(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        return None
    wamid = messages[0].get("id")
    return wamid if isinstance(wamid, str) and wamid else None


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    return (text[:200] + "...") if len(text) > 200 else (text or "empty body")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
