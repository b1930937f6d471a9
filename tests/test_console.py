"""The console in a real browser (Debian's Chromium driven by Playwright) against the real
stack: the api app on a real port, the real worker, the session's SMTP server.

Screenshots of every page go to .screenshots/ (ignored by git)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import pathlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from shared import orgs
from shared.domain import KeyMode
from shared.redis_keys import RedisKeys
from tests.helpers import make_broadcast, unique_email, unique_phone

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHOTS = ROOT / ".screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Generous: the machine running the suite may be busy (a real browser, a real stack).
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    assert pathlib.Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"  # noqa: ASYNC240
    async with async_playwright() as p:
        # --no-sandbox: Chromium refuses its sandbox when run as root (as CI runs).
        b = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        await b.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = await context.new_page()
    yield pg
    await context.close()


def base(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


async def shot(page: Any, name: str, *, full_page: bool = True) -> None:
    SHOTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


async def sign_in(page: Any, root: str, key: str, wanted: str = "/console/") -> None:
    await page.goto(root + wanted)
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(re.escape(root + wanted.split("?")[0]) + r"(\?.*)?$"))


async def wait_for_mail(smtp_server: Any, address: str) -> Any:
    for _ in range(400):
        for m in smtp_server.messages:
            if address in m.rcpt_tos:
                return m
        await asyncio.sleep(0.05)
    raise AssertionError(f"no mail to {address}")


async def test_invent_workflow_end_to_end(page, client, org, worker, smtp_server, wa_sandbox) -> None:
    from playwright.async_api import expect

    root = base(client)
    # Signed out, a page leads to the sign-in form, which remembers it.
    await page.goto(root + "/console/broadcasts")
    assert "/console/login?next=%2Fconsole%2Fbroadcasts" in page.url
    await shot(page, "01-sign-in")
    # A wrong key: the form again, with one sentence.
    await page.get_by_label("API key").fill("tdg_not-a-key")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not valid")
    # A key without the admin scope is refused the same way.
    await page.get_by_label("API key").fill(org.keys["read,write"])
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("not valid")
    await page.get_by_label("API key").fill(org.keys["admin"])
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(root + "/console/broadcasts")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "tidings_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/console"
    for name in ("Broadcasts", "Messages", "Contacts", "Suppressions", "API keys", "Webhooks", "Domains"):
        await expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()

    # Create a broadcast.
    await page.get_by_label("Name").fill("Order shipped")
    await page.get_by_label("Type").select_option("transactional")
    await page.get_by_role("button", name="New broadcast").click()
    await page.wait_for_url(re.compile(r"/console/broadcasts/[0-9a-f-]{36}\?notice=created$"))
    broadcast_id = page.url.split("/console/broadcasts/")[1].split("?")[0]
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Order shipped")
    await expect(page.locator("[data-check=ready]")).to_have_class("todo")

    # Variables with a default.
    await page.get_by_label("Variables, one per line").fill("order_id=A-1000\ncarrier=UPS")
    await page.get_by_role("button", name="Save variables").click()
    await expect(page.locator(".notice")).to_contain_text("Variables saved")

    # A template with a field missing: the form again, the problem beside the field, the input kept.
    await page.get_by_label("Subject").fill("Order {{ order_id }} has shipped")
    await page.get_by_role("button", name="Add template").click()
    await expect(page.locator("#t-from_email-err")).to_contain_text("From email: is required")
    await expect(page.get_by_label("Subject")).to_have_value("Order {{ order_id }} has shipped")

    # An email template, previewed live with sample variables as it is typed.
    await page.get_by_label("Channel", exact=True).select_option("email")
    await page.get_by_label("From email").fill("shop@invent.test")
    await page.get_by_label("Subject").fill("Order {{ order_id }} has shipped")
    await page.get_by_label("HTML body").fill("<p>Hi {{ name }}, order {{ order_id }} left with {{ carrier }}.</p>")
    await expect(page.locator("#live-preview")).to_contain_text("Order A-1000 has shipped")
    frame = page.frame_locator("#live-preview iframe")
    await expect(frame.locator("p")).to_contain_text("Hi Ada Lovelace, order A-1000 left with UPS.")
    await page.get_by_role("button", name="Add template").click()
    await expect(page.locator(".notice")).to_contain_text("Template added")
    await expect(page.locator("[data-check=ready]")).to_have_class("ok")
    # And a WhatsApp template, its parameters previewed too.
    await page.get_by_label("Channel", exact=True).select_option("whatsapp")
    await page.get_by_label("Template name").fill("order_shipped")
    await page.get_by_label("Language").fill("en_US")
    await page.get_by_label("Category").select_option("utility")
    await page.get_by_label("Body parameters").fill("{{ order_id }}\n{{ carrier }}")
    await expect(page.locator("#live-preview ol")).to_contain_text("A-1000")
    await page.get_by_role("button", name="Add template").click()
    await expect(page.locator(".notice")).to_contain_text("Template added")
    await expect(page.locator("article.template")).to_have_count(2)

    # Edit the email template on its own page, previewed live again.
    await page.get_by_role("link", name="Edit this template").first.click()
    await expect(page.get_by_label("Subject")).to_have_value("Order {{ order_id }} has shipped")
    await page.get_by_label("Subject").fill("Your order {{ order_id }} is on its way")
    await expect(page.locator("#live-preview")).to_contain_text("Your order A-1000 is on its way")
    await shot(page, "02-template")
    await page.get_by_role("button", name="Save template").click()
    await expect(page.locator(".notice")).to_contain_text("Template saved")
    await expect(page.locator("article.template").first).to_contain_text("Your order A-1000 is on its way")
    await expect(page.locator("#curl")).to_have_value(re.compile(rf"/orgs/{org.id}/broadcasts/{broadcast_id}/send"))
    await page.locator("article.template iframe").scroll_into_view_if_needed()
    await shot(page, "03-broadcast-draft")

    await page.get_by_role("button", name="Activate").click()
    await expect(page.locator("#live .banner")).to_contain_text("Active and accepting triggers since")

    # A manual send: delivered to the SMTP server, `manual` in the recipients table, which
    # refreshes itself (htmx) until the message is sent.
    email, phone = unique_email("console"), unique_phone()
    await page.get_by_label("Recipient email").fill(email)
    await page.get_by_label("Recipient phone").fill(phone)
    await page.get_by_label("carrier").fill("DHL")
    await page.get_by_role("button", name="Send").click()
    await page.wait_for_url(re.compile(r"\?notice=sent$"))
    mail = await wait_for_mail(smtp_server, email)
    assert "DHL" in (mail.html or "") and mail.subject == "Your order A-1000 is on its way"
    row = page.locator("#live tbody tr", has_text=email)
    await expect(row).to_contain_text("manual")
    await expect(row).to_contain_text("sent")
    await expect(page.locator("#live tbody tr", has_text=phone)).to_contain_text(re.compile("sent|delivered|read"))
    await expect(page.locator("#live .banner")).to_contain_text("2 messages sent across 2 channels")
    r = await client.get(org.path(f"/broadcasts/{broadcast_id}/recipients"), headers=org.auth("read"))
    records = (await r.json())["data"]
    assert {(m["channel"], m["to"], m["source"]) for m in records} == {
        ("email", email, "manual"),
        ("whatsapp", phone, "manual"),
    }
    await shot(page, "04-broadcast-active")
    await page.evaluate("window.scrollTo(0, 0)")
    await shot(page, "04-broadcast-active-top", full_page=False)

    # The message's page with its timeline.
    await row.get_by_role("link").click()
    await expect(page.locator(".timeline")).to_contain_text("sent")
    await shot(page, "05-message")
    await page.go_back()

    # Pause: the API's trigger is refused.
    await page.get_by_role("button", name="Pause").click()
    await expect(page.locator("#live .banner")).to_contain_text("Paused")
    r = await client.post(
        org.path(f"/broadcasts/{broadcast_id}/send"),
        headers=org.auth("write"),
        json={"email": unique_email(), "variables": {"order_id": "X"}},
    )
    assert r.status == 409, await r.text()
    await page.get_by_role("button", name="Resume").click()
    await expect(page.locator("#live .banner")).to_contain_text("Active")

    # The other rooms.
    await page.get_by_role("link", name="Messages", exact=True).click()
    await page.get_by_label("Address").fill(email.upper())
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("tbody")).to_contain_text(email)
    await shot(page, "06-messages")
    await page.get_by_role("link", name="Contacts", exact=True).click()
    await expect(page.locator("tbody")).to_contain_text(email)
    await shot(page, "07-contacts")
    await page.get_by_role("link", name="Suppressions", exact=True).click()
    blocked = unique_email("blocked")
    await page.get_by_label("Email").fill(blocked)
    await page.get_by_role("button", name="Suppress").click()
    await expect(page.locator("tbody")).to_contain_text(blocked)
    await shot(page, "08-suppressions")
    await page.get_by_role("button", name=f"Remove {blocked} from the list").click()
    await expect(page.locator(".notice")).to_contain_text("off the suppression list")
    await expect(page.locator("tbody")).not_to_contain_text(blocked)
    await page.get_by_role("link", name="Broadcasts", exact=True).click()
    await expect(page.locator("tbody")).to_contain_text("Order shipped")
    await shot(page, "09-broadcasts")
    await page.get_by_role("link", name="tidings").click()
    await expect(page.locator(".chart svg > title")).to_contain_text("2 messages in the last 24h")
    await shot(page, "10-overview")

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(re.compile(r"/console/login"))
    await page.goto(root + f"/console/broadcasts/{broadcast_id}")
    assert "/console/login?next=" in page.url


async def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(page, client, org) -> None:
    root = base(client)
    await sign_in(page, root, org.keys["admin"], "/console/broadcasts")
    before = await client.get(org.path("/broadcasts"), headers=org.auth("read"))
    r = await page.request.post(root + "/console/broadcasts", form={"name": "csrf", "type": "transactional"})
    assert r.status == 403
    r = await page.request.post(
        root + "/console/broadcasts", form={"name": "csrf", "type": "transactional", "csrf_token": "forged"}
    )
    assert r.status == 403
    after = await client.get(org.path("/broadcasts"), headers=org.auth("read"))
    assert (await after.json())["data"] == (await before.json())["data"]


async def test_another_orgs_broadcast_and_message_answer_404(page, client, org, pool: asyncpg.Pool) -> None:
    other_id = await orgs.create_org(pool, "other org")
    other_key = await orgs.create_key(pool, other_id, ["admin", "read", "write"])
    other = type(org)(id=other_id, keys={"admin,read": other_key, "admin,read,write": other_key})
    b = await make_broadcast(client, other)
    root = base(client)
    await sign_in(page, root, org.keys["admin"], "/console/broadcasts")
    for path in (f"/console/broadcasts/{b['id']}", f"/console/broadcasts/{uuid.uuid4()}", "/console/broadcasts/x"):
        response = await page.goto(root + path)
        assert response.status == 404, path
    r = await page.request.get(root + f"/console/broadcasts/{b['id']}/live")
    assert r.status == 404


async def test_every_value_is_escaped(page, client, org) -> None:
    name = "<script>document.title='owned'</script><b>bold</b>"
    r = await client.post(
        org.path("/broadcasts"), headers=org.auth("admin"), json={"name": name, "type": "transactional"}
    )
    b = await r.json()
    root = base(client)
    await sign_in(page, root, org.keys["admin"], f"/console/broadcasts/{b['id']}")
    from playwright.async_api import expect

    await expect(page.get_by_role("heading", level=1)).to_contain_text(name)
    assert await page.locator("h1 b").count() == 0
    assert await page.title() == f"{name} · tidings"  # shown as text; the script never ran


async def test_a_key_made_in_the_console_works_once_shown_and_is_refused_once_revoked(page, client, org) -> None:
    from playwright.async_api import expect

    root = base(client)
    await sign_in(page, root, org.keys["admin"], "/console/keys")
    await page.get_by_label("Name").fill("ci deploys")
    await page.get_by_label("admin").uncheck()
    await page.get_by_role("button", name="Create key").click()
    key = await page.get_by_label("API key").input_value()
    assert key.startswith("tdg_")
    await shot(page, "11-key-created")
    r = await client.get(org.path("/broadcasts"), headers={"Authorization": f"Bearer {key}"})
    assert r.status == 200
    await page.get_by_role("link", name="Back to the API keys").click()
    # The list never shows a key again, only its prefix.
    assert key not in await page.content()
    await shot(page, "12-keys")
    await page.get_by_role("button", name="Revoke ci deploys").click()
    await expect(page.locator(".notice")).to_contain_text("revoked")
    r = await client.get(org.path("/broadcasts"), headers={"Authorization": f"Bearer {key}"})
    assert r.status == 401


async def test_a_test_keys_session_sends_and_sees_test_messages_only(page, client, org, pool, worker) -> None:
    from playwright.async_api import expect

    test_key = await orgs.create_key(pool, org.id, ["admin", "read"], mode=KeyMode.test)
    b = await make_broadcast(client, org)
    root = base(client)
    await sign_in(page, root, test_key, f"/console/broadcasts/{b['id']}")
    await expect(page.locator(".testmode")).to_contain_text("Test mode")
    email = unique_email("testmode")
    await page.get_by_label("Recipient email").fill(email)
    await page.get_by_label("otp").fill("123456")
    await page.get_by_role("button", name="Send").click()
    await expect(page.locator("#live tbody tr", has_text=email)).to_contain_text("manual")
    path = org.path(f"/broadcasts/{b['id']}/recipients")
    seen_by_test = await (await client.get(path, headers={"Authorization": f"Bearer {test_key}"})).json()
    assert [m["to"] for m in seen_by_test["data"]] == [email] and seen_by_test["data"][0]["test"] is True
    seen_by_live = await (await client.get(path, headers=org.auth("read"))).json()
    assert seen_by_live["data"] == []


async def test_a_scheduled_transactional_is_found_and_canceled_in_the_console(page, client, org) -> None:
    from playwright.async_api import expect

    from tests.transactionals_helpers import send

    to = unique_email("later")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    out = await send(client, org, {"to": to, "subject": "Later", "body": "Hi", "queue_at": later.isoformat()})
    root = base(client)
    await sign_in(page, root, org.keys["admin"], "/console/messages")
    await page.get_by_label("Address").fill(to)
    await page.get_by_label("Status").select_option("scheduled")
    await page.get_by_role("button", name="Search").click()
    await page.get_by_role("link", name=to).click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("scheduled")
    await page.get_by_role("button", name="Cancel this message").click()
    await expect(page.locator(".notice")).to_contain_text("canceled")
    await expect(page.locator(".timeline")).to_contain_text("canceled")
    r = await client.get(org.path(f"/messages/{out['id']}"), headers=org.auth("read"))
    assert (await r.json())["status"] == "canceled"


async def test_a_revoked_key_ends_its_sessions(page, client, org, pool: asyncpg.Pool) -> None:
    key = await orgs.create_key(pool, org.id, ["admin"], name="session")
    root = base(client)
    await sign_in(page, root, key, "/console/keys")
    await page.get_by_role("button", name="Revoke session").click()
    # Its own session ends with it (the tests' KEY_CACHE_TTL_S is 0; in general, within it).
    await page.wait_for_url(re.compile(r"/console/login\?next="))


async def test_pages_carry_the_security_headers_and_static_files_are_cached(client) -> None:
    r = await client.get("/console/login")
    assert r.status == 200
    csp = r.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "script-src 'self'" in csp
    html = await r.text()
    assert "<script>" not in html and "style=" not in html
    href = re.search(r'href="(/console/static/console\.css\?v=\w+)"', html)
    assert href is not None
    s = await client.get(href.group(1))
    assert s.status == 200 and "immutable" in s.headers["Cache-Control"]
    assert (await client.get("/console/static/nope.js")).status == 404


async def test_the_session_cookie_is_secure_under_https(settings, org) -> None:
    from api.app import create_app

    async with TestClient(TestServer(create_app(settings.replace(public_base_url="https://tidings.test")))) as https:
        form = await https.get("/console/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', await form.text())
        assert token is not None and "Secure" in form.headers["Set-Cookie"]
        # The client keeps a Secure cookie for https only: this one is sent by hand.
        r = await https.post(
            "/console/login",
            data={"csrf_token": token.group(1), "api_key": org.keys["admin"], "next": "/console/keys"},
            headers={"Cookie": f"tidings_console_login={token.group(1)}"},
            allow_redirects=False,
        )
        assert r.status == 303 and r.headers["Location"] == "/console/keys"
        cookie = r.cookies["tidings_console"]
        assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Lax"
        assert cookie["path"] == "/console" and cookie["max-age"] == str(int(settings.console_session_s))


async def test_bad_input_gets_a_clear_4xx_never_a_5xx(page, client, org) -> None:
    root = base(client)
    await sign_in(page, root, org.keys["admin"], "/console/broadcasts")
    token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    for form in (
        {"name": "a\x00b", "type": "transactional"},
        {"name": "x" * 201, "type": "transactional"},
        {"name": "ok", "type": "newsletter"},
        {"name": "", "type": "transactional"},
    ):
        r = await page.request.post(root + "/console/broadcasts", form={**form, "csrf_token": token})
        assert r.status == 422, form
    for path in ("/console/broadcasts?cursor=garbage", "/console/messages?address=%00", "/console/messages/nope"):
        r = await page.request.get(root + path)
        assert 400 <= r.status < 500, path
    r = await page.request.get(root + "/console/messages?status=nope&since=forever&broadcast=x")
    assert r.status == 200


# Last in this file: it spends this minute's failed sign-ins from 127.0.0.1, the address every
# test above signs in from; it gives them back at the end, so that later files can sign in.
async def test_sign_in_attempts_are_rate_limited(client, settings) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    redis = Redis.from_url(settings.redis_url)
    pattern = RedisKeys(settings.redis_prefix).console_sign_in("*", 0).removesuffix("0") + "*"
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        url = str(client.make_url("/console/login"))
        statuses = []
        for _ in range(22):
            async with session.get(url) as r:
                token = re.search(r'name="csrf_token" value="([^"]+)"', await r.text())
            assert token is not None
            async with session.post(url, data={"csrf_token": token.group(1), "api_key": "tdg_wrong"}) as r:
                statuses.append(r.status)
        # At most SIGN_IN_ATTEMPTS failures per window: the 11th attempt of this window at the
        # latest is refused (earlier failures of this file's tests count too; a window that
        # turns over meanwhile gives at most ten more).
        assert set(statuses) <= {401, 429} and 429 in statuses
        assert statuses.index(429) <= 10
    for key in [k async for k in redis.scan_iter(match=pattern)]:
        await redis.delete(key)
    await redis.aclose()
