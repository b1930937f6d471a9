"""The console's Domains room in a real browser (Debian's Chromium, Playwright) against the
real stack: a domain added in the console gets the record the API answers, and that record, as
the page shows it, verifies the mail the worker signs From the domain (dkimpy's `dnsfunc`);
errors come beside the field with the API's own messages; another org's domain is 404; a POST
without the CSRF token changes nothing; delete asks first. Screenshots go to .screenshots/."""

from __future__ import annotations

import contextlib
import re
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import dkim
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.console.web import COOKIE
from shared import console, errors, keys, orgs, sending_domains
from shared.config import Settings
from tests import test_console
from tests.conftest import Org
from tests.helpers import EMAIL_TEMPLATE, make_broadcast, unique_email
from tests.test_console import base, shot
from tests.transactionals_helpers import one_mail

# The browser fixtures of the console's tests, shared (one Chromium per module).
browser = test_console.browser
page = test_console.page
BOUNCE_DOMAIN = "bounces.tidings-console.test"


def unique_domain(tag: str = "shop") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}.test"


@pytest.fixture
async def cleanup(pool: asyncpg.Pool) -> AsyncIterator[list[tuple[uuid.UUID, str]]]:
    """(org, domain) of every domain a test may register: removed after it, so that no stored
    key is left for other tests' start-up checks."""
    made: list[tuple[uuid.UUID, str]] = []
    yield made
    for org_id, name in made:
        for row in await sending_domains.list_for(pool, org_id):
            if row["domain"] == name:
                with contextlib.suppress(errors.NotFound):
                    await sending_domains.delete(pool, org_id, row["id"])


@pytest.fixture
async def sign_in(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[Any]:
    """Signs the browser in with a session made as the sign-in form makes it (the form itself is
    tested in test_console.py, whose last test spends this minute's sign-in attempts from
    127.0.0.1: going through it here would meet its 429)."""
    tokens: list[str] = []

    async def sign_in(page: Any, root: str, key: str, wanted: str) -> None:
        key_hash = keys.hash_key(key)
        row = await orgs.find_key(pool, key_hash)
        assert row is not None
        token = await console.open_session(pool, row["org_id"], row["id"], key_hash, settings.console_session_s)
        tokens.append(token)
        host = urllib.parse.urlsplit(root).hostname
        await page.context.add_cookies(
            [{"name": COOKIE, "value": token, "domain": host, "path": "/console", "httpOnly": True, "sameSite": "Lax"}]
        )
        await page.goto(root + wanted)
        assert page.url == root + wanted

    yield sign_in
    for token in tokens:
        await console.close_session(pool, token)


def dnsfunc_for(name: str, value: str) -> Any:
    def dnsfunc(asked: bytes, timeout: float = 5) -> bytes | None:
        return value.encode() if asked.rstrip(b".") == name.encode() else None

    return dnsfunc


async def test_add_a_domain_publish_its_record_verify_mail_and_delete_it(
    page, client, org: Org, worker, smtp_server, cleanup, sign_in
) -> None:
    from playwright.async_api import expect

    root = base(client)
    domain = unique_domain()
    cleanup.append((org.id, domain))
    # Signed out, the room leads to the sign-in form, which remembers it.
    await page.goto(root + "/console/domains")
    assert "/console/login?next=%2Fconsole%2Fdomains" in page.url
    await sign_in(page, root, org.keys["admin"], "/console/domains")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sending domains")

    # Not a domain: the API's 422 message beside the field, what was typed kept.
    for bad in ("https://acme.test/x", "not a domain", "10.0.0.1"):
        r = await client.post(org.path("/domains"), headers=org.auth("admin"), json={"domain": bad})
        assert r.status == 422
        api_message = (await r.json())["error"]["message"]
        await page.get_by_label("Domain").fill(bad)
        await page.get_by_role("button", name="Add domain").click()
        await expect(page.locator("#d-domain-err")).to_have_text(api_message)
        await expect(page.get_by_label("Domain")).to_have_value(bad)
        assert await page.get_by_label("Domain").get_attribute("aria-invalid") == "true"
    await shot(page, "40-domain-error")

    # Added (typed in capitals with the root's dot: stored as the API stores it).
    await page.get_by_label("Domain").fill(domain.upper() + ".")
    await page.get_by_role("button", name="Add domain").click()
    await page.wait_for_url(re.compile(r"/console/domains/[0-9a-f-]{36}\?notice=added$"))
    domain_id = page.url.split("/console/domains/")[1].split("?")[0]
    await expect(page.get_by_role("heading", level=1)).to_have_text(domain)
    await expect(page.locator(".notice")).to_contain_text("Publish the DKIM record")
    await shot(page, "41-domain")

    # The record on the page is the API's answer.
    r = await client.get(org.path(f"/domains/{domain_id}"), headers=org.auth("read"))
    assert r.status == 200
    api = (await r.json())["dkim"]
    dns_name = await page.get_by_label("Name", exact=True).input_value()
    dns_value = await page.get_by_label("Value", exact=True).input_value()
    assert (dns_name, dns_value) == (api["dns_name"], api["dns_value"])
    assert dns_name.endswith(f"._domainkey.{domain}") and dns_value.startswith("v=DKIM1; k=rsa; p=")
    # The zone-file form: quoted strings of at most 255 characters that join to the value.
    zone = await page.locator("#dkim-zone").text_content()
    assert zone is not None and zone.startswith(f"{dns_name}. 3600 IN TXT (")
    strings = re.findall(r'"([^"]*)"', zone)
    assert len(strings) >= 2 and all(len(s) <= 255 for s in strings) and "".join(strings) == dns_value
    # No bounce domain in this installation: the page says SPF is the domain's own.
    await expect(page.locator("#spf-h + p")).to_contain_text(f"{domain}'s own SPF record")
    await expect(page.locator("#dmarc-zone")).to_have_text(
        f'_dmarc.{domain}. 3600 IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"'
    )

    # Published as the page shows it, the record verifies the worker's mail From the domain.
    b = await make_broadcast(client, org, templates=[{**EMAIL_TEMPLATE, "from_email": f"otp@{domain}"}])
    to = unique_email("console-dkim")
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": to, "variables": {"otp": "7"}},
    )
    assert r.status == 200, await r.text()
    mail = await one_mail(smtp_server, to)
    assert f"d={domain};" in mail.raw.split(b"\r\n\r\n")[0].decode().replace("\r\n ", "")
    assert dkim.verify(mail.raw, dnsfunc=dnsfunc_for(dns_name, dns_value))
    assert dkim.verify(mail.raw, dnsfunc=dnsfunc_for(dns_name, "".join(strings)))

    # Listed; added again (here, as the API would say): the API's 409 message beside the field.
    await page.get_by_role("link", name="Domains", exact=True).click()
    await expect(page.get_by_role("link", name=domain)).to_be_visible()
    await page.get_by_label("Domain").fill(domain)
    await page.get_by_role("button", name="Add domain").click()
    r = await client.post(org.path("/domains"), headers=org.auth("admin"), json={"domain": domain})
    assert r.status == 409
    await expect(page.locator("#d-domain-err")).to_have_text((await r.json())["error"]["message"])
    await expect(page.get_by_label("Domain")).to_have_value(domain)
    await shot(page, "42-domains")

    # Delete: a confirmation first; Cancel keeps it.
    await page.get_by_role("link", name=domain).click()
    await page.get_by_role("link", name=f"Delete {domain}…").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(f"Delete {domain}?")
    await shot(page, "43-domain-delete")
    await page.get_by_role("link", name="Cancel").click()
    await page.wait_for_url(root + f"/console/domains/{domain_id}")
    await page.get_by_role("link", name=f"Delete {domain}…").click()
    await page.get_by_role("button", name=f"Delete {domain}").click()
    await page.wait_for_url(root + "/console/domains?notice=deleted")
    await expect(page.locator(".notice")).to_contain_text("deleted")
    assert await page.get_by_role("link", name=domain).count() == 0
    r = await client.get(org.path(f"/domains/{domain_id}"), headers=org.auth("read"))
    assert r.status == 404
    response = await page.goto(root + f"/console/domains/{domain_id}")
    assert response.status == 404


async def test_another_orgs_domain_is_404_and_a_post_without_csrf_changes_nothing(
    page, client, org: Org, pool: asyncpg.Pool, settings: Settings, cleanup, sign_in
) -> None:
    from playwright.async_api import expect

    other_id = await orgs.create_org(pool, "other org")
    theirs = unique_domain("theirs")
    cleanup.append((other_id, theirs))
    row = await sending_domains.create(pool, settings.secret_key, other_id, theirs)
    root = base(client)
    await sign_in(page, root, org.keys["admin"], "/console/domains")
    assert theirs not in await page.content()
    for path in (f"/console/domains/{row['id']}", f"/console/domains/{uuid.uuid4()}", "/console/domains/x"):
        response = await page.goto(root + path)
        assert response.status == 404, path
        response = await page.goto(root + path + "/delete")
        assert response.status == 404, path
    token = await page.locator("input[name=csrf_token]").first.get_attribute("value")
    r = await page.request.post(root + f"/console/domains/{row['id']}/delete", form={"csrf_token": token})
    assert r.status == 404
    # Their domain, added here: the API's 409 (which does not say whose it is), beside the field.
    await page.goto(root + "/console/domains")
    await page.get_by_label("Domain").fill(theirs)
    await page.get_by_role("button", name="Add domain").click()
    r = await client.post(org.path("/domains"), headers=org.auth("admin"), json={"domain": theirs})
    assert r.status == 409
    await expect(page.locator("#d-domain-err")).to_have_text((await r.json())["error"]["message"])
    assert await sending_domains.get(pool, other_id, row["id"])  # still theirs

    # Without the CSRF token (or with a wrong one): 403, nothing added or deleted.
    mine = unique_domain("csrf")
    cleanup.append((org.id, mine))
    for form in ({"domain": mine}, {"domain": mine, "csrf_token": "forged"}):
        r = await page.request.post(root + "/console/domains", form=form)
        assert r.status == 403
    assert [d["domain"] for d in map(sending_domains.domain_json, await sending_domains.list_for(pool, org.id))] == []
    r = await client.post(org.path("/domains"), headers=org.auth("admin"), json={"domain": mine})
    assert r.status == 201
    mine_id = (await r.json())["id"]
    r = await page.request.post(root + f"/console/domains/{mine_id}/delete", form={})
    assert r.status == 403
    r = await client.get(org.path(f"/domains/{mine_id}"), headers=org.auth("read"))
    assert r.status == 200
    # Bad input is a clear 4xx, never a 5xx.
    for form in ({"domain": "a\x00b.test"}, {"domain": ""}, {"domain": "x" * 300 + ".test"}, {}):
        r = await page.request.post(root + "/console/domains", form={**form, "csrf_token": token})
        assert r.status == 422, form


async def test_without_secret_key_the_form_says_so_and_the_bounce_domain_is_shown(
    page, settings: Settings, client, org: Org, cleanup, sign_in
) -> None:
    from playwright.async_api import expect

    from api.app import create_app

    domain = unique_domain("bounce")
    cleanup.append((org.id, domain))
    r = await client.post(org.path("/domains"), headers=org.auth("admin"), json={"domain": domain})
    assert r.status == 201
    domain_id = (await r.json())["id"]
    bare_settings = settings.replace(secret_key="", bounce_domain=BOUNCE_DOMAIN, bounce_secret="b" * 32)
    async with TestClient(TestServer(create_app(bare_settings))) as bare:
        r = await bare.post(org.path("/domains"), headers=org.auth("admin"), json={"domain": unique_domain()})
        assert r.status == 503
        api_message = (await r.json())["error"]["message"]
        root = base(bare)
        await sign_in(page, root, org.keys["admin"], "/console/domains")
        typed = unique_domain("nokey")
        await page.get_by_label("Domain").fill(typed)
        await page.get_by_role("button", name="Add domain").click()
        await expect(page.locator("#d-domain-err")).to_have_text(api_message)
        assert "SECRET_KEY" in api_message
        await expect(page.get_by_label("Domain")).to_have_value(typed)
        # Reading a domain needs no secret: its page, with this installation's bounce domain.
        await page.goto(root + f"/console/domains/{domain_id}")
        await expect(page.locator("#spf-h + p")).to_contain_text(f"bounces+…@{BOUNCE_DOMAIN}")
        await expect(page.locator("#mx-h ~ pre")).to_contain_text(f"{BOUNCE_DOMAIN}. IN MX 10")
        await shot(page, "44-domain-bounce-domain")
