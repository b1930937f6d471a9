"""A local webhook receiver for `tidings dev`: where the demo org's events arrive, signed.

`tidings dev` registers an endpoint for the demo org that points here (`POST /webhooks`) and
hands the receiver the secret the api returned. Every request is kept (the newest
`max_events`) and checked with the official Standard Webhooks library (`standardwebhooks`),
exactly as a producer's consumer would check it; the page at `/` lists the events newest
first with their type, `webhook-id` and "signature verified ✓ / ✗". A verified event is
answered 204; one that fails verification 401, as a consumer must answer a forgery, so
tidings records the failed attempt and retries it on its schedule.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import html
from typing import Any

import orjson
import structlog
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

log = structlog.get_logger("tidings.webhook_receiver")

DEFAULT_MAX_EVENTS = 500
# Bodies larger than this are not events of tidings (its largest is one message object).
MAX_BODY_BYTES = 1024 * 1024
PATH = "/webhooks"


@dataclasses.dataclass(frozen=True, slots=True)
class ReceivedEvent:
    number: int
    received_at: dt.datetime
    webhook_id: str | None
    webhook_timestamp: str | None
    event_type: str | None
    verified: bool
    # Why verification failed (None when it passed).
    problem: str | None
    body: bytes

    def to_json(self) -> dict[str, Any]:
        try:
            payload: Any = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            payload = self.body.decode("utf-8", errors="replace")
        return {
            "number": self.number,
            "received_at": self.received_at.isoformat(),
            "webhook_id": self.webhook_id,
            "webhook_timestamp": self.webhook_timestamp,
            "type": self.event_type,
            "verified": self.verified,
            "problem": self.problem,
            "payload": payload,
        }


class WebhookReceiver:
    """The received events and the secrets they are verified with."""

    def __init__(self, *, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self.events: collections.deque[ReceivedEvent] = collections.deque(maxlen=max_events)
        # Several secrets: during a rotation's overlap an event is signed with each valid one.
        self.secrets: list[str] = []
        # What the page says about the endpoint (registered, or why not).
        self.note = "no endpoint registered yet"
        self._count = 0
        self._changed = asyncio.Condition()

    def set_secret(self, secret: str, note: str | None = None) -> None:
        self.secrets = [secret]
        if note is not None:
            self.note = note

    def verify(self, body: bytes, headers: dict[str, str]) -> str | None:
        """None if one of the secrets verifies the request, else why not."""
        if not self.secrets:
            return "no secret known: the receiver was given none"
        problem = "no secret known"
        for secret in self.secrets:
            try:
                Webhook(secret).verify(body, headers, json_parse=False)
            except WebhookVerificationError as exc:
                problem = str(exc)
            except Exception as exc:  # malformed headers the library does not anticipate (bad base64...)
                problem = f"malformed signature headers ({type(exc).__name__})"
            else:
                return None
        return problem

    async def receive(self, body: bytes, headers: dict[str, str]) -> ReceivedEvent:
        problem = self.verify(body, headers)
        event_type = None
        try:
            payload = orjson.loads(body)
            if isinstance(payload, dict) and isinstance(payload.get("type"), str):
                event_type = payload["type"]
        except orjson.JSONDecodeError:
            pass
        lowered = {k.lower(): v for k, v in headers.items()}
        self._count += 1
        event = ReceivedEvent(
            number=self._count,
            received_at=dt.datetime.now(dt.UTC),
            webhook_id=lowered.get("webhook-id"),
            webhook_timestamp=lowered.get("webhook-timestamp"),
            event_type=event_type,
            verified=problem is None,
            problem=problem,
            body=body,
        )
        self.events.append(event)
        async with self._changed:
            self._changed.notify_all()
        log.info(
            "webhook_received", type=event_type, webhook_id=event.webhook_id, verified=event.verified, problem=problem
        )
        return event

    async def wait_for(self, count: int = 1, *, timeout_s: float = 10.0) -> list[ReceivedEvent]:
        """Until at least `count` events were received (ever); returns the kept ones, oldest first."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self._count >= count), timeout_s)
        return list(self.events)


RECEIVER = web.AppKey("receiver", WebhookReceiver)

_CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem 1.5rem; color: #222; }
h1 { font-size: 1.3rem; } table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
.muted { color: #777; } .ok { color: #137333; font-weight: 600; } .bad { color: #c5221f; font-weight: 600; }
details pre { white-space: pre-wrap; word-break: break-word; background: #f6f6f6; padding: .6rem; margin: .3rem 0; }
code { font-size: 13px; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


async def _receive(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
    body = await request.read()
    event = await request.app[RECEIVER].receive(body, dict(request.headers))
    if event.verified:
        return web.Response(status=204)
    return web.json_response({"error": "signature not verified", "detail": event.problem}, status=401)


async def _index(request: web.Request) -> web.Response:
    receiver = request.app[RECEIVER]
    rows = []
    for ev in reversed(receiver.events):
        mark = '<span class="ok">✓ verified</span>' if ev.verified else f'<span class="bad">✗ {_e(ev.problem)}</span>'
        pretty = orjson.dumps(ev.to_json()["payload"], option=orjson.OPT_INDENT_2).decode()
        rows.append(
            f"<tr><td>{_e(ev.received_at.astimezone().strftime('%H:%M:%S'))}</td>"
            f"<td><code>{_e(ev.event_type or '(not an event)')}</code></td>"
            f"<td><code>{_e(ev.webhook_id or '(none)')}</code></td><td>{mark}</td>"
            f"<td><details><summary>payload</summary><pre>{_e(pretty)}</pre></details></td></tr>"
        )
    table = (
        "<table><tr><th>received</th><th>type</th><th>webhook-id</th><th>signature</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else '<p class="muted">No events yet. Send the demo message; this page refreshes itself.</p>'
    )
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="3">'
        f"<title>Webhook receiver</title><style>{_STYLE}</style></head><body>"
        f'<h1>Webhook receiver <span class="muted">({len(receiver.events)})</span></h1>'
        f'<p class="muted">Events tidings POSTs to <code>{_e(PATH)}</code>, newest first, each checked with the '
        f"official Standard Webhooks library (<code>standardwebhooks</code>). {_e(receiver.note)}</p>"
        f"{table}</body></html>"
    )
    return web.Response(
        text=document,
        content_type="text/html",
        headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
    )


async def _api_events(request: web.Request) -> web.Response:
    events = [ev.to_json() for ev in reversed(request.app[RECEIVER].events)]
    return web.Response(body=orjson.dumps({"data": events}), content_type="application/json")


def make_app(receiver: WebhookReceiver) -> web.Application:
    """`POST /webhooks` receives; `GET /` is the page; `GET /api/events` the same as JSON."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[RECEIVER] = receiver
    app.router.add_post(PATH, _receive)
    app.router.add_get("/", _index)
    app.router.add_get("/api/events", _api_events)
    return app


async def start_receiver(
    host: str = "127.0.0.1", port: int = 0, *, max_events: int = DEFAULT_MAX_EVENTS
) -> tuple[web.AppRunner, str, WebhookReceiver]:
    """Listen on host:port (0: a free one); returns the runner, the base URL and the receiver.
    The endpoint URL to register is the base URL + `PATH`."""
    receiver = WebhookReceiver(max_events=max_events)
    runner = web.AppRunner(make_app(receiver), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    return runner, f"http://{host}:{bound}", receiver
