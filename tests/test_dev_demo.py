"""What `tidings dev` shows: the demo broadcast reaches both channels through the curl it prints,
and the WhatsApp sandbox's page lists the requests that fail on purpose (the inbox's are in
tests/test_dev_inbox.py)."""

from __future__ import annotations

import html
import shlex
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from shared import orgs
from shared.addresses import normalize_phone
from tidings.dev import whatsapp_sandbox as wa
from tidings.dev.stack import (
    DEMO_BROADCAST,
    DEMO_SCOPES,
    DEMO_SEND_BODY,
    DEMO_TEMPLATES,
    DevConfig,
    DevState,
    banner,
    ensure_demo_broadcast,
)
from worker.channels.base import RenderedWhatsApp
from worker.channels.whatsapp import request_body


def printed_curl(text: str) -> tuple[str, str, dict[str, str], bytes]:
    """The method, URL, headers and body of the curl command in the banner, as curl reads them."""
    command = text[text.index("curl ") :].split("\n\n", 1)[0].replace("\\\n", " ")
    argv = shlex.split(command)
    assert argv[0] == "curl"
    method, url, headers, data = "GET", "", {}, b""
    args = iter(argv[1:])
    for arg in args:
        if arg == "-sS":
            continue
        if arg == "-X":
            method = next(args)
        elif arg == "-H":
            name, _, value = next(args).partition(":")
            headers[name.strip()] = value.strip()
        elif arg == "-d":
            data = next(args).encode()
        else:
            assert not arg.startswith("-"), f"an option this test does not know: {arg}"
            url = arg
    return method, url, headers, data


async def demo_state(pool: Any, client: Any) -> tuple[DevState, aiohttp.ClientSession]:
    org_id = await orgs.create_org(pool, f"demo {uuid.uuid4().hex[:6]}")
    key = await orgs.create_key(pool, org_id, DEMO_SCOPES)
    state = DevState(org_id=str(org_id), api_key=key)
    http = aiohttp.ClientSession(str(client.make_url("")), headers={"Authorization": f"Bearer {key}"})
    return state, http


async def test_the_printed_curl_sends_by_email_and_by_whatsapp(
    client: Any, pool: Any, worker: Any, smtp_server: Any, wa_sandbox: Any, tmp_path: Path
) -> None:
    state, http = await demo_state(pool, client)
    async with http:
        state.broadcast_id = await ensure_demo_broadcast(http, state)
        async with http.get(f"/orgs/{state.org_id}/broadcasts/{state.broadcast_id}") as r:
            broadcast = await r.json()
        # A second run keeps the broadcast it remembers, adding nothing.
        assert await ensure_demo_broadcast(http, state) == state.broadcast_id
        async with http.get(f"/orgs/{state.org_id}/broadcasts/{state.broadcast_id}") as r:
            assert len((await r.json())["templates"]) == 2
    assert broadcast["status"] == "active" and broadcast["readiness"]["ready"]
    assert sorted(t["channel"] for t in broadcast["templates"]) == ["email", "whatsapp"]

    config = DevConfig(
        data_dir=tmp_path,
        api_port=client.port,
        smtp_port=2525,
        inbox_port=8025,
        whatsapp_port=8090,
        database_url="",
        redis_url="",
        public_base_url="",
    )
    text = banner(config, state, "http://127.0.0.1:8025", "http://127.0.0.1:8090", "postgresql://…", "redis://…")
    assert "http://127.0.0.1:8025" in text and "http://127.0.0.1:8090" in text and "/docs" in text
    method, url, headers, data = printed_curl(text)
    assert orjson.loads(data) == DEMO_SEND_BODY

    email, phone = DEMO_SEND_BODY["email"], DEMO_SEND_BODY["phone"]
    emails_before = len([m for m in smtp_server.messages if email in m.rcpt_tos])
    whatsapps_before = len(wa_sandbox.messages_to(phone))
    async with aiohttp.ClientSession() as plain, plain.request(method, url, headers=headers, data=data) as r:
        assert r.status == 200, await r.text()
        recipients = (await r.json())["recipients"]
    assert {x["channel"]: x["status"] for x in recipients} == {"email": "sent", "whatsapp": "sent"}
    (mail, *_) = reversed(await smtp_server.wait_for(emails_before + 1, rcpt=email))
    assert mail.subject == "Your code is 123456"
    whatsapps = wa_sandbox.messages_to(phone)
    assert len(whatsapps) == whatsapps_before + 1
    assert whatsapps[-1]["template"] == "otp_code" and whatsapps[-1]["body_parameters"] == ["123456"]


async def test_a_remembered_broadcast_without_a_whatsapp_template_gets_one(client: Any, pool: Any) -> None:
    state, http = await demo_state(pool, client)
    async with http:
        # What an older `tidings dev` made: the email template only, then paused by hand.
        base = f"/orgs/{state.org_id}/broadcasts"
        async with http.post(base, json=DEMO_BROADCAST) as r:
            state.broadcast_id = (await r.json())["id"]
        email_template = next(t for t in DEMO_TEMPLATES if t["channel"] == "email")
        for path, body in (
            (f"{state.broadcast_id}/templates", email_template),
            (f"{state.broadcast_id}/activate", None),
        ):
            async with http.post(f"{base}/{path}", json=body) as r:
                assert r.status in (200, 201), await r.text()
        async with http.post(f"{base}/{state.broadcast_id}/pause") as r:
            assert r.status == 200

        assert await ensure_demo_broadcast(http, state) == state.broadcast_id
        async with http.get(f"{base}/{state.broadcast_id}") as r:
            broadcast = await r.json()
    assert broadcast["status"] == "active"
    assert sorted(t["channel"] for t in broadcast["templates"]) == ["email", "whatsapp"]


# ---- the WhatsApp sandbox's failure triggers ----


async def test_each_sandbox_trigger_fails_as_listed_and_its_number_passes_the_api() -> None:
    # Webhooks go to a closed port: the sandbox records what it tried to post.
    runner, base_url, sandbox = await wa.start_sandbox(
        access_token="t", phone_number_id="1", webhook_url="http://127.0.0.1:1/", app_secret="s", webhook_delay_s=0.01
    )
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer t"}) as http:

            async def call(trigger: wa.Trigger) -> tuple[int, dict[str, Any]]:
                message = RenderedWhatsApp(
                    to=trigger.to,
                    template_name=trigger.template,
                    language="en_US",
                    body_parameters=[trigger.parameter],
                    button_parameters=[],
                )
                async with http.post(f"{base_url}/v21.0/1/messages", json=request_body(message)) as r:
                    return r.status, await r.json()

            triggers = wa.triggers()
            assert len(triggers) == len({t.when for t in triggers})
            for trigger in triggers:
                # The listed number is one tidings' API takes as it is, so it reaches the sandbox.
                assert normalize_phone(trigger.to) == trigger.to
                # Refused every time (two calls show it), the first N times, or never (by webhook).
                refusals = 0 if trigger.by_webhook else trigger.fails_first or 2
                for _ in range(refusals):
                    status, body = await call(trigger)
                    assert (status, body["error"]["code"]) == (trigger.error.http_status, trigger.error.code), trigger
                    assert body["error"].get("is_transient", False) == trigger.error.transient
                if trigger.by_webhook or trigger.fails_first:
                    status, body = await call(trigger)
                    assert status == 200, (trigger, body)
                if trigger.by_webhook:
                    wamid = body["messages"][0]["id"]
                    await sandbox.wait_for_webhooks()
                    assert [w["status"] for w in sandbox.webhooks if w["wamid"] == wamid] == ["sent", "failed"]
    finally:
        await runner.cleanup()


async def test_the_sandbox_page_lists_every_trigger_of_its_tables() -> None:
    runner, base_url, _ = await wa.start_sandbox()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base_url}/") as r:
            page = await r.text()
    finally:
        await runner.cleanup()
    section = page[page.index('id="failures"') :]
    for trigger in wa.triggers():
        start = section.index(f"<td>{html.escape(trigger.when)}</td>")
        row = section[start:].split("</tr>", 1)[0]
        assert f"<td>{html.escape(trigger.example)}</td>" in row
        assert f"<td>{html.escape(trigger.answer)}</td>" in row
        assert ("transient" if trigger.error.transient else "permanent") in row
    # Every entry of the tables the checks use is on the page.
    for listed in [
        *wa.SUFFIX_ERRORS,
        *wa.TEMPLATE_ERRORS,
        wa.FAIL_ONCE_SUFFIX,
        wa.FAIL_FIRST_N_PREFIX,
        wa.ASYNC_FAILURE_SUFFIX,
    ]:
        assert listed in section, listed
    for error in [*wa.SUFFIX_ERRORS.values(), *wa.TEMPLATE_ERRORS.values(), wa.PARAM_FORMAT, wa.PARAM_MISSING]:
        assert f"code {error.code} " in section, error
