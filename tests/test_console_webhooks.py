"""The console's Webhooks room in a real browser (tests/test_console.py's Chromium and helpers),
against a real receiver that verifies every request with the `standardwebhooks` library and a
real deliverer (the session's worker delivers no webhooks).

Screenshots go to .screenshots/ (ignored by git)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from shared import orgs, webhook_endpoints
from shared.config import Settings
from tests.helpers import eventually
from tests.test_console import base, browser, page, shot, sign_in  # noqa: F401  (fixtures)
from tests.webhook_support import deliverer, receiver


async def _delivery(client: TestClient[Any, Any], org: Any, endpoint_id: str, event_id: str) -> dict[str, Any] | None:
    r = await client.get(org.path(f"/webhooks/{endpoint_id}/deliveries"), headers=org.auth("read"))
    assert r.status == 200, await r.text()
    return next((d for d in (await r.json())["data"] if d["event_id"] == event_id), None)


async def _settled(
    client: TestClient[Any, Any], org: Any, endpoint_id: str, event_id: str, attempts: int
) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        d = await _delivery(client, org, endpoint_id, event_id)
        return d if d is not None and d["status"] == "succeeded" and d["attempts"] == attempts else None

    found: dict[str, Any] = await eventually(done, timeout_s=15)
    return found


async def test_the_webhooks_room_end_to_end(page, client, org, settings: Settings) -> None:  # noqa: F811
    from playwright.async_api import expect

    root = base(client)
    async with receiver() as rx, deliverer(settings):
        await sign_in(page, root, org.keys["admin"], "/console/webhooks")
        await expect(page.get_by_role("heading", level=1)).to_have_text("Webhooks")

        # A URL the API refuses: the problem beside the field, what was typed kept.
        await page.get_by_label("URL").fill("ftp://example.com/hook")
        await page.get_by_label("Description").fill("Orders")
        await page.get_by_label("message.delivered").check()
        await page.get_by_role("button", name="Add endpoint").click()
        await expect(page.locator("#w-url-err")).to_have_text("URL must be an http or https URL")
        await expect(page.get_by_label("URL")).to_have_value("ftp://example.com/hook")
        await expect(page.get_by_label("Description")).to_have_value("Orders")
        await expect(page.get_by_label("message.delivered")).to_be_checked()

        # Created: the secret is on the page that follows, and only there.
        await page.get_by_label("URL").fill(rx.url("console"))
        await page.get_by_label("message.failed").check()
        await page.get_by_role("button", name="Add endpoint").click()
        secret = await page.get_by_label("Signing secret").input_value()
        assert secret.startswith("whsec_")
        rx.trust("console", secret)
        await shot(page, "13-webhook-created")
        await page.get_by_role("link", name="Go to the endpoint").click()
        await page.wait_for_url(re.compile(r"/console/webhooks/[0-9a-f-]{36}$"))
        endpoint_id = page.url.rsplit("/", 1)[1]
        assert secret not in await page.content()
        r = await client.get(org.path(f"/webhooks/{endpoint_id}"), headers=org.auth("read"))
        made = await r.json()
        assert made["url"] == rx.url("console") and made["description"] == "Orders"
        assert made["events"] == ["message.delivered", "message.failed"] and "secret" not in made

        # A test event: signed with the secret, verified by the receiver, succeeded in the log.
        await page.get_by_role("button", name="Send test event").click()
        await expect(page.locator(".notice")).to_contain_text("webhook.test event is queued")
        (hit,) = await rx.wait("console", 1)
        assert hit.verified_by == [secret] and hit.payload["type"] == "webhook.test"
        event_id = hit.webhook_id
        await _settled(client, org, endpoint_id, event_id, attempts=1)
        await page.reload()
        row = page.locator("tbody tr", has_text=event_id)
        await expect(row).to_contain_text("succeeded")
        await expect(row).to_contain_text("HTTP 200")

        # Retry: one more attempt of the same delivery, the same webhook-id.
        await row.get_by_role("button", name=f"Retry {event_id}").click()
        await expect(page.locator(".notice")).to_contain_text("due again")
        hits = await rx.wait("console", 2)
        assert [h.webhook_id for h in hits] == [event_id, event_id]
        await _settled(client, org, endpoint_id, event_id, attempts=2)
        await page.reload()
        await expect(page.locator("tbody tr", has_text=event_id).locator("td").nth(3)).to_have_text("2")
        await shot(page, "14-webhook")

        # The log's status filter.
        await page.get_by_label("Status").select_option("failed")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("tbody")).to_contain_text("No deliveries with status failed")
        await page.get_by_label("Status").select_option("succeeded")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("tbody tr", has_text=event_id)).to_be_visible()

        # Rotation: a new secret shown once; the next event is signed with it (and the old one).
        await page.get_by_role("button", name="Rotate secret").click()
        rotated = await page.get_by_label("Signing secret").input_value()
        assert rotated.startswith("whsec_") and rotated != secret
        await shot(page, "15-webhook-secret-rotated")
        rx.trust("console", rotated)
        await page.get_by_role("link", name="Go to the endpoint").click()
        await page.get_by_role("button", name="Send test event").click()
        hits = await rx.wait("console", 3)
        assert hits[2].verified_by == [rotated] and len(hits[2].signatures) == 2

        # Edit: a refused URL comes back beside its field; then events, description, enabled.
        await page.get_by_label("URL").fill("ftp://example.com/edited")
        await page.get_by_role("button", name="Save endpoint").click()
        await expect(page.locator("#w-url-err")).to_be_visible()
        await expect(page.get_by_label("URL")).to_have_value("ftp://example.com/edited")
        await page.get_by_label("URL").fill(rx.url("console"))
        await page.get_by_label("message.failed").uncheck()
        await page.get_by_label("Description").fill("")
        await page.get_by_label("Enabled").uncheck()
        await page.get_by_role("button", name="Save endpoint").click()
        await expect(page.locator(".notice")).to_contain_text("Endpoint saved")
        await expect(page.get_by_label("Enabled")).not_to_be_checked()
        r = await client.get(org.path(f"/webhooks/{endpoint_id}"), headers=org.auth("read"))
        saved = await r.json()
        assert saved["events"] == ["message.delivered"] and saved["description"] is None and not saved["enabled"]

        # The list, then delete.
        await page.get_by_role("link", name="Webhooks", exact=True).click()
        await expect(page.locator("tbody")).to_contain_text(rx.url("console"))
        await expect(page.locator("tbody")).to_contain_text("disabled")
        await shot(page, "16-webhooks")
        await page.get_by_role("link", name=rx.url("console")).click()
        await page.get_by_role("button", name="Delete endpoint").click()
        await expect(page.locator(".notice")).to_contain_text("Endpoint deleted")
        r = await client.get(org.path(f"/webhooks/{endpoint_id}"), headers=org.auth("read"))
        assert r.status == 404
    assert rx.unverified == []


async def test_another_orgs_endpoint_answers_404_and_a_csrf_less_post_403(
    page,  # noqa: F811
    client,
    org,
    pool: asyncpg.Pool,
) -> None:
    other_id = await orgs.create_org(pool, "other org")
    theirs = await webhook_endpoints.create(
        pool, other_id, url="https://example.com/theirs", events=[], description=None
    )
    mine = await webhook_endpoints.create(pool, org.id, url="https://example.com/mine", events=[], description=None)
    root = base(client)
    try:
        await sign_in(page, root, org.keys["admin"], "/console/webhooks")
        token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
        for path in (f"/console/webhooks/{theirs['id']}", f"/console/webhooks/{uuid.uuid4()}", "/console/webhooks/x"):
            response = await page.goto(root + path)
            assert response.status == 404, path
        # Another org's endpoint: every action is 404 and changes nothing.
        for action in ("", "/test", "/rotate-secret", "/delete", f"/deliveries/{uuid.uuid4()}/retry"):
            r = await page.request.post(
                root + f"/console/webhooks/{theirs['id']}{action}",
                form={"csrf_token": token or "", "url": "https://example.com/stolen"},
            )
            assert r.status == 404, action
        assert (await webhook_endpoints.get(pool, other_id, theirs["id"]))["url"] == "https://example.com/theirs"

        # Without the session's CSRF token: 403, nothing done.
        before = await webhook_endpoints.page(pool, org.id, cursor=None, limit=100)
        for path, form in (
            ("/console/webhooks", {"url": "https://example.com/csrf"}),
            (f"/console/webhooks/{mine['id']}/delete", {}),
            (f"/console/webhooks/{mine['id']}", {"url": "https://example.com/csrf"}),
            (f"/console/webhooks/{mine['id']}/test", {"csrf_token": "forged"}),
        ):
            r = await page.request.post(root + path, form=form)
            assert r.status == 403, path
        assert await webhook_endpoints.page(pool, org.id, cursor=None, limit=100) == before
        r = await client.get(org.path(f"/webhooks/{mine['id']}/deliveries"), headers=org.auth("read"))
        assert (await r.json())["data"] == []

        # Bad input: a clear 4xx with the form again, never a 5xx.
        for form in (
            {"url": "https://example.com/" + "x" * 2000},
            {"url": "https://example.com/a", "events": "no.such.event"},
            {"url": "https://example.com/a", "description": "d" * 1001},
            {"url": "https://example.com/a\x00"},
            {"url": ""},
        ):
            r = await page.request.post(root + "/console/webhooks", form={**form, "csrf_token": token or ""})
            assert r.status == 422, form
        r = await page.request.get(root + f"/console/webhooks/{mine['id']}?status=nope")
        assert r.status == 422
        r = await page.request.get(root + f"/console/webhooks/{mine['id']}?cursor=garbage")
        assert 400 <= r.status < 500
        assert await webhook_endpoints.page(pool, org.id, cursor=None, limit=100) == before

        # The delivery log pages by 50, newest first (nothing delivers these: the suite's worker
        # sends no webhooks).
        queued = [await webhook_endpoints.send_test(pool, org.id, mine["id"]) for _ in range(51)]
        await page.goto(root + f"/console/webhooks/{mine['id']}")
        rows = page.locator("tbody tr[data-delivery]")
        assert await rows.count() == 50
        assert queued[-1] in await rows.first.inner_text()
        await page.get_by_role("link", name="Older deliveries").click()
        assert await rows.count() == 1
        assert queued[0] in await rows.first.inner_text()
        await page.goto(root + f"/console/webhooks/{mine['id']}?status=succeeded")
        assert await rows.count() == 0
    finally:
        for org_id, made in ((other_id, theirs), (org.id, mine)):
            await webhook_endpoints.delete(pool, org_id, made["id"])


async def test_the_console_refuses_private_targets_as_the_api_does(settings: Settings, org, pool) -> None:
    """The SSRF check is the API's own (`webhook_endpoints.check_fields`): with private URLs not
    allowed, the console refuses them at create and at edit, beside the URL field."""
    from aiohttp.test_utils import TestServer

    from api.app import create_app

    strict = settings.replace(webhook_allow_private_urls=False)
    async with TestClient(TestServer(create_app(strict))) as c:
        form = await c.get("/console/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', await form.text())
        assert token is not None
        r = await c.post(
            "/console/login",
            data={"csrf_token": token.group(1), "api_key": org.keys["admin"], "next": "/console/webhooks"},
        )
        assert r.status == 200 and str(r.url).endswith("/console/webhooks")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', await r.text())
        assert csrf is not None
        made = await webhook_endpoints.create(
            pool, org.id, url="https://93.184.216.34/hook", events=[], description=None
        )
        try:
            for url in ("http://127.0.0.1:8080/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]/"):
                for path in ("/console/webhooks", f"/console/webhooks/{made['id']}"):
                    r = await c.post(path, data={"csrf_token": csrf.group(1), "url": url, "events": "message.sent"})
                    assert r.status == 422, (path, url)
                    html = await r.text()
                    assert 'id="w-url-err"' in html and "WEBHOOK_ALLOW_PRIVATE_URLS" in html
                    assert f'value="{url}"' in html  # what was typed, kept
            assert (await webhook_endpoints.get(pool, org.id, made["id"]))["url"] == "https://93.184.216.34/hook"
            rows, _ = await webhook_endpoints.page(pool, org.id, cursor=None, limit=100)
            assert [e["id"] for e in rows] == [made["id"]]
        finally:
            await webhook_endpoints.delete(pool, org.id, made["id"])
