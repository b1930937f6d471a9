"""A local server that answers like Meta's WhatsApp Cloud API, for `tidings dev`, the tests and the benchmark.

`POST /{version}/{phone_number_id}/messages` checks the request the way the Cloud API does
and answers with Meta's bodies: 200 with a `wamid` on success, Graph API error objects
(`{"error": {"message": "(#code) Title", "type": "OAuthException", "code": ..., "error_data":
{...}, "error_subcode": ..., "fbtrace_id": ...}}`) otherwise.

Checks, in order:

- `Authorization: Bearer <access_token>` when an access token is configured; else 401, code 190.
- the phone number id in the path, when one is configured; else 400, code 100 (subcode 33).
- the body: JSON object, `messaging_product: "whatsapp"`, `to` of 5-15 digits (a leading '+'
  is allowed), `type: "template"` with `template.name`, `template.language.code` and
  well-formed `components` (or `type: "text"` with `text.body`); else 400, code 100.

Deterministic error triggers, on the digits of `to`, the template name or a parameter's text,
are listed by `triggers()`, built from the tables the checks use (`TEMPLATE_ERRORS`,
`SUFFIX_ERRORS`, the fail-first suffixes, `ASYNC_FAILURE_SUFFIX`); the sandbox's page shows
that list, each with a number tidings' API accepts, and whether a client should retry.

`Sandbox.fail_next(to, times)` arms the same 503 failure for any number from a test.

With `webhook_url` and `app_secret` set, every accepted message is followed, in a background
task, by status webhooks (`sent`, `delivered`, `read`; `webhook_delay_s` apart) in Meta's
payload shape, signed `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`. Each
status is posted once (Meta retries; the sandbox does not): a target that is down or answers
an error is recorded in `Sandbox.webhooks` and never fails the send. The default delay of
0.5 s leaves the worker time to record the wamid before the first status arrives; tidings
ignores statuses for wamids it does not know yet.

`GET /` lists received messages (newest first) for humans; `GET /_sandbox/messages` gives
the same as JSON for a process that does not hold the `Sandbox` object.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime
import hashlib
import hmac
import html
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web

log = structlog.get_logger("tidings.whatsapp_sandbox")

# How many messages and requests are kept for inspection; counters keep the totals. Bounded
# so that a benchmark run of a million messages does not grow the sandbox without limit.
DEFAULT_KEEP_MAX = 50_000
HTML_ROWS_MAX = 200

_DIGITS = re.compile(r"^\+?(\d{5,15})$")
# `to` ending FAIL_ONCE_SUFFIX: the first call for that number answers 503 (transient), later
# ones succeed; ending FAIL_FIRST_N_PREFIX + N (N = 1-9): the first N calls do.
FAIL_ONCE_SUFFIX = "00000503"
FAIL_FIRST_N_PREFIX = "0000503"
_FAIL_FIRST_N = re.compile(FAIL_FIRST_N_PREFIX + r"([1-9])$")
_GRAPH_DOCS = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"


# Codes Meta sends with `is_transient: true`: throughput, temporary unavailability, unknown errors.
TRANSIENT_CODES = frozenset({1, 2, 4, 130429, 131000, 131056})


@dataclasses.dataclass(frozen=True, slots=True)
class MetaError:
    """One Cloud API error as Meta sends it: HTTP status, code, title, details, subcode."""

    http_status: int
    code: int
    title: str
    details: str
    subcode: int | None = None
    headers: dict[str, str] | None = None

    @property
    def transient(self) -> bool:
        """Meta marks the error `is_transient`: the client should retry it later."""
        return self.code in TRANSIENT_CODES

    def summary(self) -> str:
        return f"HTTP {self.http_status}, code {self.code} {self.title}"

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "message": f"(#{self.code}) {self.title}",
            "type": "OAuthException",
            "code": self.code,
            "error_data": {"messaging_product": "whatsapp", "details": self.details},
        }
        if self.subcode is not None:
            error["error_subcode"] = self.subcode
        if self.transient:
            error["is_transient"] = True
        error["fbtrace_id"] = _fbtrace_id()
        return {"error": error}


UNDELIVERABLE = MetaError(400, 131026, "Message Undeliverable.", "Message Undeliverable.", 2494010)
REENGAGEMENT = MetaError(
    400,
    131047,
    "Re-engagement message",
    "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
    2494079,
)
THROUGHPUT = MetaError(
    400,
    130429,
    "Rate limit hit",
    "Message failed to send because there were too many messages sent from this phone number in a short period of time",
    2494055,
)
PAIR_RATE = MetaError(
    400,
    131056,
    "(Business Account, Consumer Account) pair rate limit hit",
    "Message failed to send because there were too many messages sent from this phone "
    "number to the same phone number in a short period of time.",
    2494071,
)
APP_RATE = MetaError(
    429,
    4,
    "Application request limit reached",
    "The app has reached its API call rate limit.",
    None,
    {"Retry-After": "2"},
)
SERVER_ERROR = MetaError(
    500, 131000, "Something went wrong", "Message failed to send due to an unknown error.", 2494081
)
UNAVAILABLE = MetaError(
    503, 2, "Service temporarily unavailable", "The service is temporarily unavailable. Please retry your request."
)
MISSING_TEMPLATE = MetaError(
    404,
    132001,
    "Template name does not exist in the translation",
    "template name (missing_template) does not exist in {language}",
    2494073,
)
PARAM_MISMATCH = MetaError(
    400,
    132000,
    "Number of parameters does not match the expected number of params",
    "body: number of localizable_params does not match the expected number of params",
    2494072,
)

# Meta refuses a text parameter with a line break, a tab or more than four spaces in a row,
# and an empty one, whatever the template.
PARAM_FORMAT = MetaError(
    400,
    132018,
    "There was an issue with the parameters in your template.",
    "Param text cannot have new-line/tab characters or more than 4 consecutive spaces",
    2494073,
)
PARAM_MISSING = MetaError(400, 131008, "Required parameter is missing", "Parameter text is empty")
_BAD_PARAM_TEXT = re.compile(r"[\n\t]| {5,}")

# Suffix of the recipient's digits -> the synchronous error for it. Meta answers throughput
# errors (130429, 131056) with HTTP 400, not 429: only the code says "retry".
SUFFIX_ERRORS: dict[str, MetaError] = {
    "0000131026": UNDELIVERABLE,
    "0000131047": REENGAGEMENT,
    "0000130429": THROUGHPUT,
    "0000131056": PAIR_RATE,
    "0000000429": APP_RATE,
    "0000000500": SERVER_ERROR,
}
TEMPLATE_ERRORS: dict[str, MetaError] = {
    "missing_template": MISSING_TEMPLATE,
    "param_mismatch": PARAM_MISMATCH,
}
# Accepted, then failed by webhook: Meta reports most undeliverable numbers this way.
ASYNC_FAILURE_SUFFIX = "9999131026"

# The page's example numbers put each trigger after an Austrian mobile prefix: its national
# numbers are long enough for a 10-digit suffix to still make a valid number, which tidings'
# API checks before anything reaches the sandbox.
EXAMPLE_PREFIX = "+4366"
EXAMPLE_TEMPLATE = "otp_code"
EXAMPLE_PARAMETER = "123456"


@dataclasses.dataclass(frozen=True, slots=True)
class Trigger:
    """One way to make the sandbox fail on purpose, with a request that does it."""

    when: str
    to: str
    error: MetaError
    template: str = EXAMPLE_TEMPLATE
    parameter: str = EXAMPLE_PARAMETER
    # Calls that fail before the number succeeds (0: every call fails).
    fails_first: int = 0
    # The call succeeds; the failure comes later, as a `failed` status webhook.
    by_webhook: bool = False

    @property
    def example(self) -> str:
        if self.template != EXAMPLE_TEMPLATE:
            return self.template
        if self.parameter != EXAMPLE_PARAMETER:
            return orjson.dumps(self.parameter).decode()
        return self.to

    @property
    def answer(self) -> str:
        if self.by_webhook:
            return f"HTTP 200, then a failed status webhook: code {self.error.code} {self.error.title}"
        if self.fails_first:
            calls = "the first call" if self.fails_first == 1 else f"the first {self.fails_first} calls"
            return f"{self.error.summary()} on {calls} for that number, then HTTP 200"
        return self.error.summary()


def triggers() -> list[Trigger]:
    """Every deterministic failure, in the order the checks run (the first that matches wins)."""
    plain = f"{EXAMPLE_PREFIX}0123456789"
    found = [
        Trigger(f"the template is named {name}", plain, error, template=name) for name, error in TEMPLATE_ERRORS.items()
    ]
    found += [
        Trigger(
            "a text parameter with a line break, a tab or more than four spaces in a row",
            plain,
            PARAM_FORMAT,
            parameter="12\n34",
        ),
        Trigger("an empty text parameter", plain, PARAM_MISSING, parameter=""),
    ]
    found += [Trigger(f"to ends {suffix}", EXAMPLE_PREFIX + suffix, e) for suffix, e in SUFFIX_ERRORS.items()]
    found.append(Trigger(f"to ends {FAIL_ONCE_SUFFIX}", EXAMPLE_PREFIX + FAIL_ONCE_SUFFIX, UNAVAILABLE, fails_first=1))
    found.append(
        Trigger(
            f"to ends {FAIL_FIRST_N_PREFIX}N (N = 1-9)",
            f"{EXAMPLE_PREFIX}{FAIL_FIRST_N_PREFIX}3",
            UNAVAILABLE,
            fails_first=3,
        )
    )
    found.append(
        Trigger(
            f"to ends {ASYNC_FAILURE_SUFFIX}", EXAMPLE_PREFIX + ASYNC_FAILURE_SUFFIX, UNDELIVERABLE, by_webhook=True
        )
    )
    return found


class _Invalid(Exception):
    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


@dataclasses.dataclass(eq=False)
class Sandbox:
    """The sandbox's configuration and everything it saw. `base_url` is set by `start_sandbox`."""

    access_token: str | None = None
    webhook_url: str | None = None
    app_secret: str | None = None
    phone_number_id: str | None = None
    business_account_id: str = "102290129340398"
    display_phone_number: str = "15550783881"
    webhook_delay_s: float = 0.5
    record_requests: bool = True
    keep_max: int = DEFAULT_KEEP_MAX
    base_url: str = ""

    # Accepted messages: wamid, to, wa_id, template, language, body_parameters,
    # button_parameters, received_at (aware UTC datetime), status (last webhook status sent).
    messages: collections.deque[dict[str, Any]] = dataclasses.field(init=False)
    # Every request to the messages route: method, path, headers, body (parsed JSON or None),
    # status (HTTP status answered), received_at.
    requests: collections.deque[dict[str, Any]] = dataclasses.field(init=False)
    # Every webhook delivery attempt: wamid, status, http_status (None if unreachable), error.
    webhooks: collections.deque[dict[str, Any]] = dataclasses.field(init=False)
    accepted_count: int = dataclasses.field(default=0, init=False)
    request_count: int = dataclasses.field(default=0, init=False)

    def __post_init__(self) -> None:
        self.messages = collections.deque(maxlen=self.keep_max)
        self.requests = collections.deque(maxlen=self.keep_max)
        self.webhooks = collections.deque(maxlen=self.keep_max)
        self._attempts: dict[str, int] = {}
        self._armed_failures: dict[str, int] = {}
        self._by_wamid: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        # Set on every accepted message, so waiters wake without polling.
        self._accepted = asyncio.Event()

    @property
    def webhooks_enabled(self) -> bool:
        return bool(self.webhook_url and self.app_secret)

    def reset(self) -> None:
        """Forget every message, request, webhook and attempt counter (between benchmark rounds)."""
        self.messages.clear()
        self.requests.clear()
        self.webhooks.clear()
        self._attempts.clear()
        self._armed_failures.clear()
        self._by_wamid.clear()
        self.accepted_count = 0
        self.request_count = 0

    def fail_next(self, to: str, times: int = 1) -> None:
        """The next `times` sends to `to` fail with 503, code 2 (transient), then succeed."""
        digits = to.lstrip("+")
        self._armed_failures[digits] = self._armed_failures.get(digits, 0) + times

    def messages_to(self, to: str) -> list[dict[str, Any]]:
        digits = to.lstrip("+")
        return [m for m in self.messages if m["wa_id"] == digits]

    def message(self, wamid: str) -> dict[str, Any] | None:
        return self._by_wamid.get(wamid)

    async def wait_for_messages(self, count: int, timeout_s: float = 5.0) -> None:
        """Until `accepted_count` reaches `count`; raises TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            while self.accepted_count < count:
                self._accepted.clear()
                await self._accepted.wait()

    async def wait_for_webhooks(self, timeout_s: float = 5.0) -> None:
        """Until every webhook task in flight has finished."""
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- decisions -------------------------------------------------------------------------

    def _transient_failure(self, digits: str) -> MetaError | None:
        """Fail-first-N triggers: count attempts per number and fail while under N."""
        armed = self._armed_failures.get(digits, 0)
        if armed:
            self._armed_failures[digits] = armed - 1
            return UNAVAILABLE
        if digits.endswith(FAIL_ONCE_SUFFIX):
            limit = 1
        else:
            match = _FAIL_FIRST_N.search(digits)
            if match is None:
                return None
            limit = int(match.group(1))
        seen = self._attempts.get(digits, 0)
        self._attempts[digits] = seen + 1
        return UNAVAILABLE if seen < limit else None

    def _remember_request(self, request: web.Request, body: Any, status: int) -> None:
        self.request_count += 1
        if self.record_requests:
            self.requests.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "headers": dict(request.headers),
                    "body": body,
                    "status": status,
                    "received_at": _now(),
                }
            )

    def _accept(self, digits: str, to: str, body: dict[str, Any]) -> dict[str, Any]:
        template = body.get("template") or {}
        body_params: list[str] = []
        button_params: list[str] = []
        for component in template.get("components") or []:
            texts = [p.get("text", "") for p in component.get("parameters") or []]
            if component.get("type") == "body":
                body_params.extend(texts)
            elif component.get("type") == "button":
                button_params.extend(texts)
        wamid = _new_wamid(digits)
        record = {
            "wamid": wamid,
            "to": to,
            "wa_id": digits,
            "type": body.get("type"),
            "template": template.get("name"),
            "language": (template.get("language") or {}).get("code"),
            "body_parameters": body_params,
            "button_parameters": button_params,
            "text": (body.get("text") or {}).get("body"),
            "received_at": _now(),
            "status": "accepted",
        }
        if self.messages.maxlen is not None and len(self.messages) == self.messages.maxlen:
            self._by_wamid.pop(self.messages[0]["wamid"], None)
        self.messages.append(record)
        self._by_wamid[wamid] = record
        self.accepted_count += 1
        self._accepted.set()
        return record

    # -- webhooks --------------------------------------------------------------------------

    def _schedule_webhooks(self, record: dict[str, Any]) -> None:
        if not self.webhooks_enabled:
            return
        if record["wa_id"].endswith(ASYNC_FAILURE_SUFFIX):
            steps: list[tuple[str, MetaError | None]] = [("sent", None), ("failed", UNDELIVERABLE)]
        else:
            steps = [("sent", None), ("delivered", None), ("read", None)]
        task = asyncio.create_task(self._post_statuses(record, steps))
        # Keep a reference: the loop holds tasks only weakly.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_statuses(self, record: dict[str, Any], steps: list[tuple[str, MetaError | None]]) -> None:
        for status, error in steps:
            await asyncio.sleep(self.webhook_delay_s)
            payload = self.status_payload(record, status, error)
            outcome: dict[str, Any] = {"wamid": record["wamid"], "status": status, "http_status": None, "error": None}
            try:
                outcome["http_status"] = await self.post_webhook(orjson.dumps(payload))
            except Exception as exc:  # the target being down must never reach the send
                outcome["error"] = f"{type(exc).__name__}: {exc}"
                log.warning("sandbox_webhook_failed", wamid=record["wamid"], status=status, error=outcome["error"])
            record["status"] = status
            self.webhooks.append(outcome)

    async def post_webhook(self, raw: bytes) -> int:
        """POST one signed webhook body to `webhook_url`; returns the HTTP status."""
        assert self.webhook_url and self.app_secret
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": "sha256=" + sign(raw, self.app_secret),
            # Meta still sends the SHA-1 signature beside the SHA-256 one.
            "X-Hub-Signature": "sha1=" + hmac.new(self.app_secret.encode(), raw, hashlib.sha1).hexdigest(),
        }
        async with self._http.post(self.webhook_url, data=raw, headers=headers) as resp:
            await resp.read()
            return resp.status

    def status_payload(self, record: dict[str, Any], status: str, error: MetaError | None = None) -> dict[str, Any]:
        """One `statuses` webhook exactly as Meta shapes it."""
        entry: dict[str, Any] = {
            "id": record["wamid"],
            "status": status,
            "timestamp": str(int(time.time())),
            "recipient_id": record["wa_id"],
        }
        if status in ("sent", "delivered"):
            # Meta adds conversation and pricing to `sent` and to one of delivered/read.
            entry["conversation"] = {
                "id": hashlib.md5(record["wa_id"].encode(), usedforsecurity=False).hexdigest(),
                "origin": {"type": "utility"},
            }
            if status == "sent":
                entry["conversation"]["expiration_timestamp"] = str(int(time.time()) + 86_400)
            entry["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "utility", "type": "regular"}
        if error is not None:
            entry["errors"] = [
                {
                    "code": error.code,
                    "title": error.title.rstrip("."),
                    "message": error.title.rstrip("."),
                    "error_data": {"details": error.details},
                    "href": _GRAPH_DOCS,
                }
            ]
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": self.business_account_id,
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": self.display_phone_number,
                                    "phone_number_id": self.phone_number_id or "106540352242922",
                                },
                                "statuses": [entry],
                            },
                            "field": "messages",
                        }
                    ],
                }
            ],
        }

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None


SANDBOX = web.AppKey("whatsapp_sandbox", Sandbox)


def sign(raw: bytes, app_secret: str) -> str:
    """The hex HMAC-SHA256 Meta puts after `sha256=` in X-Hub-Signature-256."""
    return hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()


def create_sandbox_app(
    *,
    access_token: str | None = None,
    webhook_url: str | None = None,
    app_secret: str | None = None,
    phone_number_id: str | None = None,
    **options: Any,
) -> web.Application:
    """The sandbox app; `options` are further `Sandbox` fields (`webhook_delay_s`, `keep_max`...)."""
    sandbox = Sandbox(
        access_token=access_token or None,
        webhook_url=webhook_url or None,
        app_secret=app_secret or None,
        phone_number_id=phone_number_id or None,
        **options,
    )
    app = web.Application()
    app[SANDBOX] = sandbox
    app.router.add_post("/{version}/{phone_number_id}/messages", _send_message)
    app.router.add_get("/", _index)
    app.router.add_get("/_sandbox/messages", _messages_json)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[SANDBOX].aclose()

    app.cleanup_ctx.append(lifecycle)
    return app


async def start_sandbox(host: str = "127.0.0.1", port: int = 0, **kw: Any) -> tuple[web.AppRunner, str, Sandbox]:
    """Serve a sandbox on host:port (0: any free port); returns the runner (call `cleanup()`),
    the base URL to put in WHATSAPP_API_BASE_URL, and the `Sandbox`."""
    app = create_sandbox_app(**kw)
    # No access log: at benchmark rates a line per request would cost more than the answer.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound_port = int(address[1])
            break
    shown_host = "127.0.0.1" if host in ("", "0.0.0.0") else ("[::1]" if host == "::" else host)
    if ":" in shown_host and not shown_host.startswith("["):
        shown_host = f"[{shown_host}]"
    base_url = f"http://{shown_host}:{bound_port}"
    sandbox = app[SANDBOX]
    sandbox.base_url = base_url
    return runner, base_url, sandbox


# -- handlers ------------------------------------------------------------------------------


async def _send_message(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    raw = await request.read()
    body = _loads(raw)

    def answer(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
        sandbox._remember_request(request, body, status)
        return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json", headers=headers)

    def fail(error: MetaError, **fmt: str) -> web.Response:
        if fmt:
            error = dataclasses.replace(error, details=error.details.format(**fmt))
        return answer(error.http_status, error.body(), error.headers)

    if sandbox.access_token is not None:
        expected = f"Bearer {sandbox.access_token}".encode()
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            # Graph API: 401 with code 190 for a missing, malformed or wrong token alike.
            return answer(
                401,
                {
                    "error": {
                        "message": "Invalid OAuth access token - Cannot parse access token",
                        "type": "OAuthException",
                        "code": 190,
                        "fbtrace_id": _fbtrace_id(),
                    }
                },
            )
    path_id = request.match_info["phone_number_id"]
    if sandbox.phone_number_id is not None and path_id != sandbox.phone_number_id:
        return fail(
            MetaError(
                400,
                100,
                "Invalid parameter",
                f"Unsupported post request. Object with ID '{path_id}' does not exist, cannot be loaded due to "
                "missing permissions, or does not support this operation.",
                33,
            )
        )

    try:
        to, digits = _validate(body)
    except _Invalid as exc:
        return fail(MetaError(400, 100, "Invalid parameter", exc.details))
    assert isinstance(body, dict)

    template_name = (body.get("template") or {}).get("name")
    if body.get("type") == "template" and template_name in TEMPLATE_ERRORS:
        language = str(((body.get("template") or {}).get("language") or {}).get("code"))
        return fail(TEMPLATE_ERRORS[template_name], language=language)
    param_error = _parameter_error(body)
    if param_error is not None:
        return fail(param_error)
    for suffix, error in SUFFIX_ERRORS.items():
        if digits.endswith(suffix):
            return fail(error)
    transient = sandbox._transient_failure(digits)
    if transient is not None:
        return fail(transient)

    record = sandbox._accept(digits, to, body)
    sandbox._schedule_webhooks(record)
    response: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": digits}],
        "messages": [{"id": record["wamid"]}],
    }
    if body.get("type") == "template":
        # Meta adds the pacing state to template messages; "accepted" is the normal one.
        response["messages"][0]["message_status"] = "accepted"
    return answer(200, response)


def _parameter_error(body: dict[str, Any]) -> MetaError | None:
    for component in (body.get("template") or {}).get("components") or []:
        for param in component.get("parameters") or []:
            if param.get("type") != "text":
                continue
            if not param["text"]:
                return PARAM_MISSING
            if _BAD_PARAM_TEXT.search(param["text"]):
                return PARAM_FORMAT
    return None


def _validate(body: Any) -> tuple[str, str]:
    """Meta's checks on a send-message body; returns (to as given, its digits)."""
    if not isinstance(body, dict):
        raise _Invalid("The request body must be a JSON object.")
    if body.get("messaging_product") != "whatsapp":
        raise _Invalid("The parameter messaging_product is required and must be 'whatsapp'.")
    recipient_type = body.get("recipient_type", "individual")
    if recipient_type != "individual":
        raise _Invalid(f"Invalid recipient_type: {recipient_type!r}.")
    to = body.get("to")
    if not isinstance(to, str) or not to:
        raise _Invalid("The parameter to is required.")
    match = _DIGITS.match(to.strip())
    if match is None:
        raise _Invalid(f"Invalid phone number: {to!r}.")
    kind = body.get("type", "text")
    if kind == "template":
        _validate_template(body.get("template"))
    elif kind == "text":
        text = body.get("text")
        if not isinstance(text, dict) or not isinstance(text.get("body"), str) or not text["body"]:
            raise _Invalid("The parameter text['body'] is required.")
    else:
        raise _Invalid(f"The sandbox supports type 'template' and 'text', not {kind!r}.")
    return to, match.group(1)


def _validate_template(template: Any) -> None:
    if not isinstance(template, dict):
        raise _Invalid("The parameter template is required.")
    name = template.get("name")
    if not isinstance(name, str) or not name:
        raise _Invalid("The parameter template['name'] is required.")
    language = template.get("language")
    if not isinstance(language, dict) or not isinstance(language.get("code"), str) or not language["code"]:
        raise _Invalid("The parameter template['language']['code'] is required.")
    components = template.get("components", [])
    if not isinstance(components, list):
        raise _Invalid("The parameter template['components'] must be an array.")
    for i, component in enumerate(components):
        where = f"template['components'][{i}]"
        if not isinstance(component, dict) or component.get("type") not in ("header", "body", "button"):
            raise _Invalid(f"{where}['type'] must be one of header, body, button.")
        if component["type"] == "button":
            if component.get("sub_type") not in ("url", "quick_reply", "copy_code", "flow"):
                raise _Invalid(f"{where}['sub_type'] is required for a button component.")
            index = component.get("index")
            if not isinstance(index, (str, int)) or not str(index).isdigit():
                raise _Invalid(f"{where}['index'] is required for a button component.")
        parameters = component.get("parameters", [])
        if not isinstance(parameters, list):
            raise _Invalid(f"{where}['parameters'] must be an array.")
        for j, param in enumerate(parameters):
            if not isinstance(param, dict) or "type" not in param:
                raise _Invalid(f"{where}['parameters'][{j}]['type'] is required.")
            if param["type"] == "text" and not isinstance(param.get("text"), str):
                raise _Invalid(f"{where}['parameters'][{j}]['text'] is required.")


async def _index(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    # What each status webhook got back from tidings, by wamid ("delivered 200", ...).
    posted: dict[str, list[str]] = {}
    for outcome in sandbox.webhooks:
        answer = str(outcome["http_status"]) if outcome["http_status"] is not None else "unreachable"
        posted.setdefault(outcome["wamid"], []).append(f"{outcome['status']} {answer}")
    rows = []
    for i, m in enumerate(reversed(sandbox.messages)):
        if i >= HTML_ROWS_MAX:
            break
        params = ", ".join(m["body_parameters"] + [f"[button] {p}" for p in m["button_parameters"]])
        cells = (
            m["received_at"].strftime("%H:%M:%S"),
            "+" + m["wa_id"],
            m["template"] or "(text)",
            m["language"] or "",
            params or m["text"] or "",
            m["status"],
            ", ".join(posted.get(m["wamid"], [])) or "-",
            m["wamid"],
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    webhooks = (
        f"webhooks to {html.escape(sandbox.webhook_url or '')}"
        if sandbox.webhooks_enabled
        else "webhooks off (no webhook_url / app_secret)"
    )
    statuses = (
        f"<p>Like Meta, the sandbox follows every accepted message with signed status webhooks to "
        f"{html.escape(sandbox.webhook_url or '')}: <b>sent</b>, then <b>delivered</b>, then <b>read</b>, "
        f"{sandbox.webhook_delay_s:g} s apart (a number ending {ASYNC_FAILURE_SUFFIX}: sent, then failed). "
        "<i>status</i> is the last one posted; <i>webhooks</i> shows what tidings answered to each. tidings moves "
        "its message along (GET /orgs/{org_id}/messages/{id}) and, with an endpoint registered, sends "
        "<code>message.delivered</code> and <code>message.read</code> webhooks of its own.</p>"
        if sandbox.webhooks_enabled
        else ""
    )
    failures = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(c)}</td>"
            for c in (t.when, t.example, t.answer, "transient (retry)" if t.error.transient else "permanent")
        )
        + "</tr>"
        for t in triggers()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>WhatsApp sandbox</title>
<meta http-equiv="refresh" content="5">
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left}}td:last-child{{color:#888;font-size:12px}}
h2{{font-size:1.1em;margin-top:2em}}</style>
</head><body>
<h1>WhatsApp sandbox</h1>
<p>{sandbox.accepted_count} message(s) accepted, {sandbox.request_count} request(s); {webhooks}.
Newest first; this page refreshes every 5 s.</p>
{statuses}
<table><tr><th>received</th><th>to</th><th>template</th><th>language</th><th>parameters</th>
<th>status</th><th>webhooks</th><th>wamid</th></tr>
{"".join(rows) or '<tr><td colspan="8">nothing yet</td></tr>'}
</table>
<h2 id="failures">Failing on purpose</h2>
<p>These requests fail the way Meta's Cloud API does; any other well-formed one is accepted.
Checked in this order, the first that matches wins.</p>
<table class="failures"><tr><th>when</th><th>for example</th><th>the sandbox answers</th><th>kind</th></tr>
{failures}
</table></body></html>"""
    return web.Response(text=page, content_type="text/html")


async def _messages_json(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    return web.Response(
        body=orjson.dumps(
            {"accepted_count": sandbox.accepted_count, "messages": list(reversed(sandbox.messages))},
            option=orjson.OPT_UTC_Z,
        ),
        content_type="application/json",
    )


# -- helpers -------------------------------------------------------------------------------


def _new_wamid(digits: str) -> str:
    # Real wamids are base64 of a small binary record holding the recipient and a random id;
    # imitate the shape so that code printing or storing them meets realistic lengths.
    raw = (
        b"\x15\x02\x00\x11\x18\x12"
        + digits.encode()
        + b"\x15\x02\x00\x12\x18\x14"
        + secrets.token_hex(10).upper().encode()
        + b"\x00"
    )
    return "wamid." + base64.b64encode(raw).decode()


def _fbtrace_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(12)).decode().rstrip("=")


def _loads(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
