"""Unsubscribe links: the List-Unsubscribe headers (RFC 8058 one-click), `{{ unsubscribe_url }}`,
the public page over HTTP, and its effect on both APIs."""

from __future__ import annotations

from shared import orgs
from tests.helpers import make_broadcast, unique_email
from tests.transactionals_helpers import (
    PUBLIC_BASE,
    heading,
    inbox,
    make_subscriber,
    one_mail,
    path_of,
    send,
    wait_status,
)

ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}


def unsubscribe_url_of(mail) -> str:
    # Folded onto a continuation line when long; unfolded it starts with a space.
    return mail.header("List-Unsubscribe").strip().removeprefix("<").removesuffix(">")


async def status_of(pool, org, email) -> str | None:
    return await pool.fetchval(
        "SELECT c.status::text FROM contacts c JOIN contact_channels ch ON ch.contact_id = c.id"
        " WHERE ch.org_id = $1 AND ch.type = 'email' AND ch.address = $2",
        org.id,
        email,
    )


async def test_headers_and_variable_only_with_the_flag(client, org, worker, smtp_server) -> None:
    with_link, without = unique_email("with"), unique_email("without")
    body = {"subject": "News", "body": '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> [{{ unsubscribe_url }}]</p>'}
    await send(client, org, {**body, "to": with_link, "include_unsubscribe_link": True})
    await send(client, org, {**body, "to": without, "include_unsubscribe_link": False})

    mail = await one_mail(smtp_server, with_link)
    url = unsubscribe_url_of(mail)
    assert url.startswith(f"{PUBLIC_BASE}/unsubscribe/") and len(url.rsplit("/", 1)[1]) >= 22
    assert mail.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert url in mail.links() and f"[{url}]" in mail.html

    mail = await one_mail(smtp_server, without)
    assert mail.header("List-Unsubscribe") is None and mail.header("List-Unsubscribe-Post") is None
    assert "[]" in mail.html


async def test_page_then_one_click_post_unsubscribes_a_new_address(client, org, pool, worker, smtp_server) -> None:
    to = unique_email("oneclick")
    await send(client, org, {"to": to, "subject": "s", "body": "b", "include_unsubscribe_link": True})
    url = unsubscribe_url_of(await one_mail(smtp_server, to))

    # GET shows a page with a button, and changes nothing (link scanners open links too).
    r = await client.get(path_of(url))
    page = await r.text()
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    assert '<form method="post">' in page and "<button" in page
    assert await status_of(pool, org, to) is None

    # The mail client's RFC 8058 one-click POST.
    r = await client.post(path_of(url), data="List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert r.status == 200 and heading(await r.text()) == "You are unsubscribed"
    # No contact had the address: one is created, unsubscribed.
    assert await status_of(pool, org, to) == "unsubscribed"
    assert await pool.fetchval("SELECT used_at FROM unsubscribe_tokens WHERE email = $1", to) is not None
    # Repeating is harmless, and the page now says so without a button.
    r = await client.post(path_of(url), data="List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert r.status == 200
    r = await client.get(path_of(url))
    page = await r.text()
    assert heading(page) == "You are unsubscribed" and "<form" not in page


async def test_form_unsubscribe_affects_broadcasts_but_not_transactionals(
    client, org, pool, worker, smtp_server
) -> None:
    to = unique_email("sub")
    subscriber = await make_subscriber(client, org, email=to, first_name="Ann")
    await send(client, org, {"to": to, "subject": "First", "body": "b", "include_unsubscribe_link": True})
    url = unsubscribe_url_of(await one_mail(smtp_server, to))
    r = await client.post(path_of(url))  # the page's form: an empty POST
    assert r.status == 200
    assert await status_of(pool, org, to) == "unsubscribed"
    r = await client.get(f"/api/v1/subscribers/{subscriber['id']}.json", headers=org.auth("read"))
    assert (await r.json())["unsubscribed"] is True

    # The Broadcasts API refuses the address from now on...
    b = await make_broadcast(client, org)
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": to, "variables": {"otp": "1"}},
    )
    assert r.status == 422 and (await r.json())["error"]["code"] == "recipient_unsubscribed"
    # ...while transactional email still reaches it, by design.
    out = await send(client, org, {"to": to, "subject": "Your receipt", "body": "b"})
    await wait_status(client, org, out["id"], "sent")
    assert [m.subject for m in inbox(smtp_server, to)] == ["First", "Your receipt"]


async def test_blocked_contact_stays_blocked(client, org, pool, worker, smtp_server) -> None:
    to = unique_email("blocked")
    await send(client, org, {"to": to, "subject": "s", "body": "b", "include_unsubscribe_link": True})
    url = unsubscribe_url_of(await one_mail(smtp_server, to))
    r = await client.post(org.path("/contacts"), headers=org.auth("admin"), json={"email": to, "status": "blocked"})
    assert r.status == 201
    r = await client.post(path_of(url), data="List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert r.status == 200
    assert await status_of(pool, org, to) == "blocked"
    # A blocked contact gets no transactional email either.
    out = await send(client, org, {"to": to, "subject": "s", "body": "b"})
    assert out["status"] == "rejected" and "blocked" in out["error"]


async def test_unknown_token_and_escaping(client, pool, worker, smtp_server) -> None:
    for method in ("GET", "POST"):
        r = await client.request(method, "/unsubscribe/not-a-token")
        assert r.status == 404 and heading(await r.text()) == "This link is not valid"

    org_id = await orgs.create_org(pool, "<script>alert(1)</script> & Co")
    headers = {"Authorization": f"Bearer {await orgs.create_key(pool, org_id, ['write'])}"}
    to = unique_email()
    r = await client.post(
        "/api/v1/transactionals.json",
        headers=headers,
        json={"to": to, "subject": "s", "body": "b", "include_unsubscribe_link": True},
    )
    assert r.status == 201
    url = unsubscribe_url_of(await one_mail(smtp_server, to))
    page = await (await client.get(path_of(url))).text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in page
    assert to not in page  # the page says nothing about the subscriber
