"""The real WhatsApp client against the real sandbox over loopback HTTP: no Postgres, no Redis.

Every error trigger of `tidings.dev.whatsapp_sandbox` must be sorted by the channel the way the
pipeline needs it: transient (retry later) or permanent (give up), quoting Meta's code.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from shared.config import Settings
from tidings.dev.whatsapp_sandbox import Sandbox, start_sandbox
from worker.channels.base import PermanentDeliveryError, RenderedWhatsApp, TransientDeliveryError
from worker.channels.whatsapp import WhatsAppChannel, parse_response, parse_retry_after, request_body

TOKEN = "sandbox-token"
PHONE_NUMBER_ID = "1000001"


def phone(suffix: str = "") -> str:
    """A unique E.164 number (per test run) ending in `suffix`."""
    head = f"+1{uuid.uuid4().int % 10**14:014d}"
    return head[: len(head) - len(suffix)] + suffix if suffix else head


def otp(
    to: str, *, template: str = "otp_code", body: list[str] | None = None, buttons: list[str] | None = None
) -> RenderedWhatsApp:
    return RenderedWhatsApp(
        to=to,
        template_name=template,
        language="en_US",
        body_parameters=["123456"] if body is None else body,
        button_parameters=["123456"] if buttons is None else buttons,
    )


def settings_for(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "whatsapp_api_base_url": base_url,
        "whatsapp_access_token": TOKEN,
        "whatsapp_phone_number_id": PHONE_NUMBER_ID,
        "whatsapp_timeout_s": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
async def sandbox() -> AsyncIterator[Sandbox]:
    runner, _, sb = await start_sandbox("127.0.0.1", 0, access_token=TOKEN, phone_number_id=PHONE_NUMBER_ID)
    yield sb
    await runner.cleanup()


@pytest.fixture
async def channel(sandbox: Sandbox) -> AsyncIterator[WhatsAppChannel]:
    ch = WhatsAppChannel(settings_for(sandbox.base_url))
    yield ch
    await ch.close()


# -- success -------------------------------------------------------------------------------


async def test_send_returns_the_wamid_and_posts_a_cloud_api_template(
    sandbox: Sandbox, channel: WhatsAppChannel
) -> None:
    to = phone()
    result = await channel.send(otp(to, body=["123456", "Ada"], buttons=["abc"]))

    assert result.external_message_id.startswith("wamid.")
    (stored,) = sandbox.messages_to(to)
    assert stored["wamid"] == result.external_message_id
    assert stored["template"] == "otp_code" and stored["language"] == "en_US"
    assert stored["body_parameters"] == ["123456", "Ada"]
    assert stored["button_parameters"] == ["abc"]

    request = next(r for r in reversed(sandbox.requests) if r["body"] and r["body"].get("to") == to[1:])
    assert request["path"] == f"/v21.0/{PHONE_NUMBER_ID}/messages"
    assert request["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert request["body"] == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to.lstrip("+"),
        "type": "template",
        "template": {
            "name": "otp_code",
            "language": {"code": "en_US"},
            "components": [
                {"type": "body", "parameters": [{"type": "text", "text": "123456"}, {"type": "text", "text": "Ada"}]},
                {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "abc"}]},
            ],
        },
    }


async def test_template_without_parameters_has_no_components(sandbox: Sandbox, channel: WhatsAppChannel) -> None:
    to = phone()
    await channel.send(otp(to, body=[], buttons=[]))
    request = next(r for r in reversed(sandbox.requests) if r["body"] and r["body"].get("to") == to[1:])
    assert request["body"]["template"] == {"name": "otp_code", "language": {"code": "en_US"}}


def test_each_button_parameter_is_its_own_component_indexed_by_position() -> None:
    body = request_body(otp("+15550001111", body=[], buttons=["a", "b"]))
    assert body["template"]["components"] == [
        {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "a"}]},
        {"type": "button", "sub_type": "url", "index": "1", "parameters": [{"type": "text", "text": "b"}]},
    ]


async def test_concurrent_sends_share_one_keep_alive_session(sandbox: Sandbox, channel: WhatsAppChannel) -> None:
    results = await asyncio.gather(*(channel.send(otp(phone())) for _ in range(50)))
    assert len({r.external_message_id for r in results}) == 50
    assert channel._session is not None and not channel._session.closed


# -- errors sorted by the channel ----------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "template", "kind", "code"),
    [
        ("0000131026", "otp_code", PermanentDeliveryError, 131026),
        ("0000131047", "otp_code", PermanentDeliveryError, 131047),
        ("0000130429", "otp_code", TransientDeliveryError, 130429),
        ("0000131056", "otp_code", TransientDeliveryError, 131056),
        ("0000000429", "otp_code", TransientDeliveryError, 4),
        ("0000000500", "otp_code", TransientDeliveryError, 131000),
        ("", "missing_template", PermanentDeliveryError, 132001),
        ("", "param_mismatch", PermanentDeliveryError, 132000),
    ],
)
async def test_error_triggers_are_sorted_and_quote_metas_code(
    channel: WhatsAppChannel, suffix: str, template: str, kind: type[Exception], code: int
) -> None:
    with pytest.raises(kind) as caught:
        await channel.send(otp(phone(suffix), template=template))
    detail = caught.value.detail  # type: ignore[attr-defined]
    assert detail.startswith(f"whatsapp error {code}: "), detail


async def test_undeliverable_detail_reads_like_metas_title(channel: WhatsAppChannel) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await channel.send(otp(phone("0000131026")))
    assert caught.value.detail == "whatsapp error 131026: Message Undeliverable."
    # Undeliverable is not proof the number is bad (old app, terms not accepted): no suppression.
    assert caught.value.hard_bounce is False


async def test_retry_after_header_is_passed_on(channel: WhatsAppChannel) -> None:
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(otp(phone("0000000429")))
    assert caught.value.retry_after_s == 2.0


async def test_rate_limit_without_retry_after_leaves_the_delay_to_the_backoff(channel: WhatsAppChannel) -> None:
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(otp(phone("0000130429")))
    assert caught.value.retry_after_s is None


async def test_first_call_fails_transiently_then_the_retry_is_sent(sandbox: Sandbox, channel: WhatsAppChannel) -> None:
    to = phone("00000503")
    with pytest.raises(TransientDeliveryError) as caught:
        await channel.send(otp(to))
    assert caught.value.detail.startswith("whatsapp error 2: Service temporarily unavailable")
    result = await channel.send(otp(to))
    assert [m["wamid"] for m in sandbox.messages_to(to)] == [result.external_message_id]


async def test_first_n_calls_fail_then_succeed(sandbox: Sandbox, channel: WhatsAppChannel) -> None:
    to = phone("00005033")
    for _ in range(3):
        with pytest.raises(TransientDeliveryError):
            await channel.send(otp(to))
    await channel.send(otp(to))
    assert len(sandbox.messages_to(to)) == 1


async def test_fail_next_arms_a_transient_failure_for_any_number(sandbox: Sandbox, channel: WhatsAppChannel) -> None:
    to = phone()
    sandbox.fail_next(to, 2)
    for _ in range(2):
        with pytest.raises(TransientDeliveryError):
            await channel.send(otp(to))
    await channel.send(otp(to))
    assert len(sandbox.messages_to(to)) == 1


async def test_wrong_token_is_permanent_with_code_190(sandbox: Sandbox) -> None:
    ch = WhatsAppChannel(settings_for(sandbox.base_url, whatsapp_access_token="not-the-token"))
    try:
        with pytest.raises(PermanentDeliveryError) as caught:
            await ch.send(otp(phone()))
    finally:
        await ch.close()
    assert caught.value.detail.startswith("whatsapp error 190: Invalid OAuth access token")
    assert sandbox.requests[-1]["status"] == 401


async def test_unknown_phone_number_id_is_permanent_with_code_100(sandbox: Sandbox) -> None:
    ch = WhatsAppChannel(settings_for(sandbox.base_url, whatsapp_phone_number_id="999"))
    try:
        with pytest.raises(PermanentDeliveryError) as caught:
            await ch.send(otp(phone()))
    finally:
        await ch.close()
    assert caught.value.detail.startswith("whatsapp error 100: Invalid parameter")


async def test_malformed_number_is_refused_like_meta_does(channel: WhatsAppChannel) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        await channel.send(otp("+12"))
    assert caught.value.detail.startswith("whatsapp error 100: Invalid parameter")


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ch = WhatsAppChannel(settings_for(f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            await ch.send(otp(phone()))
    finally:
        await ch.close()
    assert caught.value.detail.startswith("whatsapp connection error")


async def test_timeout_is_transient() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({"messages": [{"id": "wamid.late"}]})

    app = web.Application()
    app.router.add_post("/{version}/{phone_number_id}/messages", slow)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    ch = WhatsAppChannel(settings_for(f"http://127.0.0.1:{port}", whatsapp_timeout_s=0.1))
    try:
        with pytest.raises(TransientDeliveryError) as caught:
            await ch.send(otp(phone()))
    finally:
        await ch.close()
        await runner.cleanup()
    assert "timeout" in caught.value.detail


async def test_an_injected_session_is_used_and_left_open(sandbox: Sandbox) -> None:
    async with aiohttp.ClientSession() as session:
        ch = WhatsAppChannel(settings_for(sandbox.base_url), session=session)
        await ch.start()
        result = await ch.send(otp(phone()))
        await ch.close()
        assert result.external_message_id.startswith("wamid.")
        assert not session.closed


async def test_close_without_a_send_is_harmless() -> None:
    ch = WhatsAppChannel(settings_for("http://127.0.0.1:9"))
    await ch.close()
    await ch.close()


# -- response parsing beyond what the sandbox produces --------------------------------------


def test_unknown_code_with_a_5xx_is_transient() -> None:
    body = orjson.dumps({"error": {"message": "(#999999) New thing", "code": 999999}})
    with pytest.raises(TransientDeliveryError):
        parse_response(502, body)


def test_unknown_code_with_a_4xx_is_permanent() -> None:
    body = orjson.dumps({"error": {"message": "(#999999) New thing", "code": 999999}})
    with pytest.raises(PermanentDeliveryError, match="whatsapp error 999999: New thing"):
        parse_response(400, body)


def test_permission_error_stays_permanent_even_as_a_500() -> None:
    body = orjson.dumps({"error": {"message": "(#3) Application does not have the capability", "code": 3}})
    with pytest.raises(PermanentDeliveryError):
        parse_response(500, body)


def test_proxy_error_page_is_transient_and_quoted() -> None:
    with pytest.raises(TransientDeliveryError, match="whatsapp HTTP 502: <html>bad gateway</html>"):
        parse_response(502, b"<html>bad gateway</html>")


def test_success_status_without_a_wamid_is_not_taken_for_delivery() -> None:
    with pytest.raises(TransientDeliveryError, match="without a message id"):
        parse_response(200, b"{}")


def test_details_are_appended_when_they_add_something() -> None:
    body = orjson.dumps(
        {
            "error": {
                "message": "(#131009) Parameter value is not valid",
                "code": 131009,
                "error_data": {"details": "to is not a phone number"},
            }
        }
    )
    with pytest.raises(PermanentDeliveryError) as caught:
        parse_response(400, body)
    assert caught.value.detail == "whatsapp error 131009: Parameter value is not valid - to is not a phone number"


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    delay = parse_retry_after(later)
    assert delay is not None and 25 <= delay <= 31
    assert parse_retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0


# -- the sandbox itself ---------------------------------------------------------------------


async def test_sandbox_refuses_malformed_bodies_with_code_100(sandbox: Sandbox) -> None:
    url = f"{sandbox.base_url}/v21.0/{PHONE_NUMBER_ID}/messages"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for body in (
            b"not json",
            b"[]",
            orjson.dumps(
                {"messaging_product": "whatsapp", "to": "15550001111", "type": "template", "template": {"name": "x"}}
            ),
        ):
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == 400
                error = (await resp.json())["error"]
                assert error["code"] == 100 and error["type"] == "OAuthException"
                assert error["message"] == "(#100) Invalid parameter"
                assert error["error_data"]["messaging_product"] == "whatsapp"
                assert error["fbtrace_id"]


async def test_sandbox_error_body_has_metas_exact_shape(sandbox: Sandbox) -> None:
    url = f"{sandbox.base_url}/v21.0/{PHONE_NUMBER_ID}/messages"
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url, data=orjson.dumps(request_body(otp(phone("0000131026")))), headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp,
    ):
        assert resp.status == 400
        body = await resp.json()
    assert set(body["error"]) == {"message", "type", "code", "error_data", "error_subcode", "fbtrace_id"}
    assert body["error"]["message"] == "(#131026) Message Undeliverable."
    assert body["error"]["code"] == 131026 and body["error"]["error_subcode"] == 2494010


async def test_sandbox_success_body_names_the_contact(sandbox: Sandbox) -> None:
    to = phone()
    url = f"{sandbox.base_url}/v21.0/{PHONE_NUMBER_ID}/messages"
    payload = request_body(otp(to)) | {"to": to}  # with the '+', as Meta also accepts
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=orjson.dumps(payload), headers={"Authorization": f"Bearer {TOKEN}"}) as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    assert body["messaging_product"] == "whatsapp"
    assert body["contacts"] == [{"input": to, "wa_id": to[1:]}]
    assert body["messages"][0]["id"].startswith("wamid.")


async def test_sandbox_page_lists_messages_newest_first(sandbox: Sandbox, channel: WhatsAppChannel) -> None:
    first, second = phone(), phone()
    await channel.send(otp(first, body=["<b>111111</b>"]))
    await channel.send(otp(second, body=["222222"]))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sandbox.base_url}/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.text()
        async with http.get(f"{sandbox.base_url}/_sandbox/messages") as resp:
            listed = await resp.json()
    assert page.index(second) < page.index(first)
    assert "&lt;b&gt;111111&lt;/b&gt;" in page and "<b>111111</b>" not in page
    assert listed["messages"][0]["wa_id"] == second[1:]


class WebhookSink:
    """A stand-in for tidings' webhook route: records what the sandbox posts."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((await request.read(), dict(request.headers)))
        self.arrived.set()
        return web.Response(text="ok")


async def test_sandbox_posts_signed_status_webhooks_in_metas_shape() -> None:
    sink = WebhookSink()
    app = web.Application()
    app.router.add_post("/webhooks/whatsapp", sink.handle)
    sink_runner = web.AppRunner(app, access_log=None)
    await sink_runner.setup()
    await web.TCPSite(sink_runner, "127.0.0.1", 0).start()
    sink_url = f"http://127.0.0.1:{sink_runner.addresses[0][1]}/webhooks/whatsapp"
    runner, base_url, sb = await start_sandbox(
        "127.0.0.1",
        0,
        access_token=TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
        webhook_url=sink_url,
        app_secret="shh",
        webhook_delay_s=0.01,
    )
    ch = WhatsAppChannel(settings_for(base_url))
    try:
        to = phone()
        result = await ch.send(otp(to))
        failing = await ch.send(otp(phone("9999131026")))
        await sb.wait_for_webhooks()
    finally:
        await ch.close()
        await runner.cleanup()
        await sink_runner.cleanup()

    statuses: dict[str, list[dict[str, Any]]] = {}
    for raw, headers in sink.received:
        expected = hmac.new(b"shh", raw, hashlib.sha256).hexdigest()
        assert headers["X-Hub-Signature-256"] == f"sha256={expected}"
        payload = orjson.loads(raw)
        assert payload["object"] == "whatsapp_business_account"
        (entry,) = payload["entry"]
        (change,) = entry["changes"]
        assert change["field"] == "messages"
        value = change["value"]
        assert value["messaging_product"] == "whatsapp"
        assert value["metadata"]["phone_number_id"] == PHONE_NUMBER_ID
        for status in value["statuses"]:
            statuses.setdefault(status["id"], []).append(status)

    ok = statuses[result.external_message_id]
    assert [s["status"] for s in ok] == ["sent", "delivered", "read"]
    assert all(s["recipient_id"] == to[1:] and s["timestamp"].isdigit() for s in ok)
    bad = statuses[failing.external_message_id]
    assert [s["status"] for s in bad] == ["sent", "failed"]
    assert bad[1]["errors"][0]["code"] == 131026
    assert sb.message(result.external_message_id)["status"] == "read"  # type: ignore[index]


async def test_sandbox_send_succeeds_when_the_webhook_target_is_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    runner, base_url, sb = await start_sandbox(
        "127.0.0.1",
        0,
        access_token=TOKEN,
        phone_number_id=PHONE_NUMBER_ID,
        webhook_url=f"http://127.0.0.1:{dead_port}/webhooks/whatsapp",
        app_secret="shh",
        webhook_delay_s=0.0,
    )
    ch = WhatsAppChannel(settings_for(base_url))
    try:
        result = await ch.send(otp(phone()))
        await sb.wait_for_webhooks()
    finally:
        await ch.close()
        await runner.cleanup()
    assert result.external_message_id.startswith("wamid.")
    attempts = [w for w in sb.webhooks if w["wamid"] == result.external_message_id]
    assert attempts and all(w["http_status"] is None and w["error"] for w in attempts)
