"""WhatsApp parameters as Meta accepts them, through the API, the real worker and the sandbox
(which refuses what Meta refuses): whitespace folded, empty ones failed with a clear error and
never sent, and URL buttons addressed by their index."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import Settings
from tests.helpers import WHATSAPP_TEMPLATE, eventually, make_broadcast, unique_phone
from tidings.dev.whatsapp_sandbox import start_sandbox
from worker.channels.base import PermanentDeliveryError, RenderedWhatsApp
from worker.channels.whatsapp import WhatsAppChannel, request_body


def received(wa_sandbox: Any, phone: str) -> list[dict[str, Any]]:
    digits = phone.lstrip("+")
    return [m for m in wa_sandbox.messages if m["to"].lstrip("+") == digits]


async def trigger(client: Any, org: Any, broadcast_id: str, phone: str, **variables: Any) -> dict[str, Any]:
    r = await client.post(
        org.path(f"/broadcasts/{broadcast_id}/send"),
        headers=org.auth("write"),
        json={"phone": phone, "variables": variables},
    )
    assert r.status == 200, await r.text()
    out: dict[str, Any] = await r.json()
    return out


async def test_the_sandbox_refuses_line_breaks_tabs_long_spaces_and_empty_parameters_like_meta() -> None:
    runner, base_url, _ = await start_sandbox("127.0.0.1", 0, access_token="t", phone_number_id="1")
    channel = WhatsAppChannel(
        Settings(whatsapp_api_base_url=base_url, whatsapp_access_token="t", whatsapp_phone_number_id="1")
    )
    try:
        for bad, code in (("a\nb", 132018), ("a\tb", 132018), ("a     b", 132018), ("", 131008)):
            message = RenderedWhatsApp(unique_phone(), "otp_code", "en_US", [bad], [])
            with pytest.raises(PermanentDeliveryError) as caught:
                await channel.send(message)
            assert f"({code})" in caught.value.detail or str(code) in caught.value.detail
        ok = RenderedWhatsApp(unique_phone(), "otp_code", "en_US", ["a    b"], [])
        assert (await channel.send(ok)).external_message_id
    finally:
        await channel.close()
        await runner.cleanup()


async def test_whitespace_meta_refuses_is_folded_before_sending(client, org, worker, wa_sandbox) -> None:
    template = {**WHATSAPP_TEMPLATE, "body_parameters": ["Code:\n{{ otp }}"], "button_parameters": ["{{ otp }}"]}
    b = await make_broadcast(client, org, templates=[template])
    phone = unique_phone()
    await trigger(client, org, b["id"], phone, otp="12\t34      56\n")
    got = await eventually(lambda: received(wa_sandbox, phone))
    assert got[0]["body_parameters"] == ["Code: 12 34 56"]
    assert got[0]["button_parameters"] == ["12 34 56"]


async def test_an_empty_parameter_fails_the_message_and_sends_nothing(client, org, worker, wa_sandbox) -> None:
    b = await make_broadcast(client, org, templates=[WHATSAPP_TEMPLATE])
    phone = unique_phone()
    out = await trigger(client, org, b["id"], phone, otp="   ")
    (recipient,) = out["recipients"]
    assert recipient["status"] == "failed"
    assert recipient["error"] == "body_parameters[0] rendered empty; WhatsApp refuses an empty parameter"
    assert received(wa_sandbox, phone) == []


async def test_a_button_parameter_can_name_its_button(client, org, worker, wa_sandbox) -> None:
    template = {
        **WHATSAPP_TEMPLATE,
        "button_parameters": [{"index": 1, "text": "track/{{ otp }}"}, {"index": 0, "text": "{{ otp }}"}],
    }
    b = await make_broadcast(client, org, templates=[template])
    got_template = next(t for t in b["templates"] if t["channel"] == "whatsapp")
    assert got_template["button_parameters"] == template["button_parameters"]
    phone = unique_phone()
    await trigger(client, org, b["id"], phone, otp="777")
    await eventually(lambda: received(wa_sandbox, phone))
    request = next(r for r in reversed(wa_sandbox.requests) if r["body"] and r["body"].get("to") == phone.lstrip("+"))
    buttons = [c for c in request["body"]["template"]["components"] if c["type"] == "button"]
    assert [(c["index"], c["parameters"][0]["text"]) for c in buttons] == [("1", "track/777"), ("0", "777")]


@pytest.mark.parametrize(
    "buttons",
    [
        [{"index": 10, "text": "x"}],
        [{"index": -1, "text": "x"}],
        ["{{ otp }}", {"index": 0, "text": "x"}],  # the string fills button 0 too
        [{"index": 0}],
        [{"index": 0, "text": "x", "extra": 1}],
    ],
)
async def test_button_indexes_are_validated(client, org, buttons: list[Any]) -> None:
    r = await client.post(
        org.path("/broadcasts"), headers=org.auth("admin"), json={"name": "b", "type": "transactional"}
    )
    b = await r.json()
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/templates"),
        headers=org.auth("admin"),
        json={**WHATSAPP_TEMPLATE, "button_parameters": buttons},
    )
    assert r.status == 422, await r.text()
    assert "button_parameters" in await r.text()


def test_positional_buttons_keep_their_order_as_index() -> None:
    body = request_body(RenderedWhatsApp("+14155550123", "t", "en_US", [], ["a", "b"]))
    assert [(c["index"], c["parameters"][0]["text"]) for c in body["template"]["components"]] == [
        ("0", "a"),
        ("1", "b"),
    ]
