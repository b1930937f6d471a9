"""Double opt-in through the Transactionals API: the documented example and behaviour table,
the Liquid variables, and the public confirmation page fetched over HTTP."""

from __future__ import annotations

import re

from shared import confirmations, orgs
from tests.helpers import unique_email
from tests.transactionals_helpers import (
    PUBLIC_BASE,
    fetch,
    heading,
    make_subscriber,
    one_mail,
    path_of,
    post_json,
    send,
)

DOCUMENTED_BODY = (
    '<p>Hi {{ first_name }},</p><p>Thanks for signing up! Please <a href="{{ confirmation_url }}">confirm your '
    "subscription</a> to start receiving our newsletter.</p><p>If you did not sign up, you can ignore this email.</p>"
)
ENGLISH = confirmations.ENGLISH_PAGES
TOKEN_URL = re.compile(re.escape(PUBLIC_BASE) + r"/confirm/([A-Za-z0-9_-]{43})$")


async def subscriber_row(pool, org, email):
    return await pool.fetchrow(
        "SELECT c.* FROM contacts c JOIN contact_channels ch ON ch.contact_id = c.id"
        " WHERE ch.org_id = $1 AND ch.type = 'email' AND ch.address = $2",
        org.id,
        email,
    )


async def open_page(client, url: str) -> tuple[int, str]:
    r = await client.get(path_of(url))
    assert r.headers["Content-Type"].startswith("text/html")
    return r.status, await r.text()


async def test_documented_double_opt_in_example_end_to_end(client, org, pool, worker, smtp_server) -> None:
    to = unique_email("john")
    out = await send(
        client,
        org,
        {
            "to": to,
            "subject": "Confirm your subscription to Acme Newsletter",
            "body": DOCUMENTED_BODY,
            "double_opt_in": True,
            "subscriber": {"first_name": "John", "last_name": "Doe"},
        },
    )
    assert out["recipient_email"] == to
    assert out["subject"] == "Confirm your subscription to Acme Newsletter"
    assert out["status"] == "queued"
    assert out["confirmation_status"] == "pending"
    assert TOKEN_URL.match(out["confirmation_url"]), out["confirmation_url"]
    assert out["status_url"] == f"{PUBLIC_BASE}/api/v1/transactionals/{out['id']}.json"
    assert out["recipient_name"] == "John Doe"

    # 1. the subscriber was created, unconfirmed, with the given names
    row = await subscriber_row(pool, org, to)
    assert row["first_name"] == "John" and row["last_name"] == "Doe" and row["confirmed_at"] is None
    r = await client.get(f"/api/v1/subscribers/{row['id']}.json", headers=org.auth("read"))
    assert (await r.json())["confirmed"] is False
    # 2. a confirmation record with an unguessable token
    token = TOKEN_URL.match(out["confirmation_url"]).group(1)
    link = await pool.fetchrow("SELECT * FROM confirmations WHERE token = $1", token)
    assert link["contact_id"] == row["id"] and link["confirmed_at"] is None
    # 3. the email carries the real link
    mail = await one_mail(smtp_server, to)
    assert "<p>Hi John,</p>" in mail.html
    assert out["confirmation_url"] in mail.links()
    assert out["confirmation_url"] in mail.text  # a text-only reader can confirm too

    # 4. following it confirms the subscriber
    status, page = await open_page(client, out["confirmation_url"])
    assert status == 200 and heading(page) == ENGLISH["confirmed"]["heading"]
    row = await subscriber_row(pool, org, to)
    assert row["confirmed_at"] is not None
    assert (await fetch(client, org, out["id"]))["confirmation_status"] == "confirmed"
    r = await client.get(f"/api/v1/subscribers/{row['id']}.json", headers=org.auth("read"))
    assert (await r.json())["confirmed"] is True

    # Clicked again: already confirmed, never the `confirmed` copy.
    status, page = await open_page(client, out["confirmation_url"])
    assert status == 200 and heading(page) == ENGLISH["already_confirmed"]["heading"]
    assert ENGLISH["confirmed"]["heading"] not in page


async def test_behaviour_by_subscriber_state(client, org, pool, worker, smtp_server) -> None:
    # Exists, unconfirmed: a new confirmation, a fresh URL; stored names are not overwritten.
    to = unique_email("pending")
    await make_subscriber(client, org, email=to, first_name="Ada")
    body = {"to": to, "subject": "Confirm", "body": DOCUMENTED_BODY, "double_opt_in": True}
    first = await send(client, org, {**body, "subscriber": {"first_name": "Someone", "last_name": "Else"}})
    second = await send(client, org, body)
    assert first["confirmation_status"] == second["confirmation_status"] == "pending"
    assert first["confirmation_url"] != second["confirmation_url"]
    row = await subscriber_row(pool, org, to)
    assert row["first_name"] == "Ada" and row["last_name"] == "Else"  # a missing name is filled in
    mails = await smtp_server.wait_for(2, rcpt=to)
    assert {u for m in mails for u in m.links()} == {first["confirmation_url"], second["confirmation_url"]}
    assert await pool.fetchval("SELECT count(*) FROM confirmations WHERE contact_id = $1", row["id"]) == 2
    # Either link confirms; the other then says so.
    assert heading((await open_page(client, second["confirmation_url"]))[1]) == ENGLISH["confirmed"]["heading"]
    assert heading((await open_page(client, first["confirmation_url"]))[1]) == ENGLISH["already_confirmed"]["heading"]

    # Exists, confirmed: double_opt_in ignored, sent normally, {{ confirmation_url }} blank.
    confirmed = unique_email("confirmed")
    await make_subscriber(client, org, email=confirmed, first_name="Cy", confirmed=True)
    out = await send(
        client,
        org,
        {"to": confirmed, "subject": "Hello", "body": "<p>link:[{{ confirmation_url }}]</p>", "double_opt_in": True},
    )
    assert out["status"] == "queued"
    assert out["confirmation_status"] == "confirmed" and out["confirmation_url"] is None
    mail = await one_mail(smtp_server, confirmed)
    assert "link:[]" in mail.html
    contact_id = (await subscriber_row(pool, org, confirmed))["id"]
    assert await pool.fetchval("SELECT count(*) FROM confirmations WHERE contact_id = $1", contact_id) == 0


async def test_documented_liquid_variables(client, org, worker, smtp_server) -> None:
    to = unique_email("vars")
    body = (
        "<p>c=[{{ confirmation_url }}] e=[{{ email }}] f=[{{ first_name }}] l=[{{ last_name }}] "
        "n=[{{ name }}] u=[{{ unsubscribe_url }}]</p>"
    )
    out = await send(
        client,
        org,
        {
            "to": to,
            "subject": "Vars",
            "body": body,
            "double_opt_in": True,
            "include_unsubscribe_link": True,
            "subscriber": {"first_name": "Grace", "last_name": "Hopper"},
        },
    )
    mail = await one_mail(smtp_server, to)
    # A long header value is folded onto a continuation line: unfolded, it starts with a space.
    unsubscribe_url = mail.header("List-Unsubscribe").strip().strip("<>")
    assert unsubscribe_url.startswith(f"{PUBLIC_BASE}/unsubscribe/")
    assert (
        f"c=[{out['confirmation_url']}] e=[{to}] f=[Grace] l=[Hopper] n=[Grace Hopper] u=[{unsubscribe_url}]"
        in mail.html
    )
    # Without double opt-in, confirmation_url renders blank and there is no confirmation field.
    plain = unique_email("plain")
    out = await send(client, org, {"to": plain, "subject": "s", "body": "<p>c=[{{ confirmation_url }}]</p>"})
    assert "confirmation_status" not in out and "confirmation_url" not in out
    assert "c=[]" in (await one_mail(smtp_server, plain)).html


async def test_unknown_and_expired_tokens_get_the_invalid_page(client, org, pool, worker) -> None:
    for token in ("nope", "A" * 43, "x" * 500):
        r = await client.get(f"/confirm/{token}")
        page = await r.text()
        assert r.status == 404 and heading(page) == ENGLISH["invalid"]["heading"]
        assert r.headers["Content-Type"].startswith("text/html") and "Traceback" not in page

    to = unique_email("late")
    out = await send(
        client, org, {"to": to, "subject": "Confirm", "body": "{{ confirmation_url }}", "double_opt_in": True}
    )
    token = TOKEN_URL.match(out["confirmation_url"]).group(1)
    await pool.execute("UPDATE confirmations SET expires_at = now() - interval '1 second' WHERE token = $1", token)
    status, page = await open_page(client, out["confirmation_url"])
    assert status == 404 and heading(page) == ENGLISH["invalid"]["heading"]
    assert (await subscriber_row(pool, org, to))["confirmed_at"] is None
    assert (await fetch(client, org, out["id"]))["confirmation_status"] == "expired"


async def test_confirmation_template_copy_per_state(client, org, pool, worker) -> None:
    pages = {
        "confirmed": {"heading": "Welcome aboard!", "body": "You're in.\n\nSee you soon."},
        "already_confirmed": {"heading": "Been there", "body": "Nothing to do."},
        "invalid": {"heading": "Hmm, <that> link", "body": "Try again & again."},
    }
    status, tpl = await post_json(
        client, "/confirmation_templates.json", org.auth("write"), {"name": "newsletter", "pages": pages}
    )
    assert status == 201 and tpl["pages"] == pages and tpl["name"] == "newsletter" and tpl["default"] is False
    r = await client.get(f"/api/v1/confirmation_templates/{tpl['id']}.json", headers=org.auth("read"))
    assert await r.json() == tpl

    body = {"subject": "Confirm", "body": "{{ confirmation_url }}", "double_opt_in": True}
    out = await send(client, org, {**body, "to": unique_email(), "confirmation_template_id": tpl["id"]})
    status, page = await open_page(client, out["confirmation_url"])
    assert heading(page) == "Welcome aboard!" and "<p>You&#x27;re in.</p><p>See you soon.</p>" in page
    assert heading((await open_page(client, out["confirmation_url"]))[1]) == "Been there"
    # An expired link of this template shows the template's invalid copy, escaped.
    out = await send(client, org, {**body, "to": unique_email(), "confirmation_template_id": tpl["id"]})
    await pool.execute(
        "UPDATE confirmations SET expires_at = now() - interval '1 second' WHERE token = $1",
        TOKEN_URL.match(out["confirmation_url"]).group(1),
    )
    status, page = await open_page(client, out["confirmation_url"])
    assert status == 404 and heading(page) == "Hmm, &lt;that&gt; link" and "Try again &amp; again." in page


async def test_org_default_then_english_defaults(client, org, worker) -> None:
    body = {"subject": "Confirm", "body": "{{ confirmation_url }}", "double_opt_in": True}
    # No template anywhere: English.
    out = await send(client, org, {**body, "to": unique_email()})
    assert heading((await open_page(client, out["confirmation_url"]))[1]) == ENGLISH["confirmed"]["heading"]

    status, default = await post_json(
        client,
        "/confirmation_templates.json",
        org.auth("write"),
        {"name": "house", "default": True, "pages": {"confirmed": {"heading": "House style confirmed"}}},
    )
    assert status == 201 and default["default"] is True
    status, partial = await post_json(
        client,
        "/confirmation_templates.json",
        org.auth("write"),
        {"name": "partial", "pages": {"already_confirmed": {"heading": "Partial: again", "body": "b"}}},
    )
    # No template named: the org's default, field by field, then English.
    out = await send(client, org, {**body, "to": unique_email()})
    status, page = await open_page(client, out["confirmation_url"])
    assert heading(page) == "House style confirmed" and ENGLISH["confirmed"]["body"] in page
    # A template without copy for a state falls back to the org default, then English.
    out = await send(client, org, {**body, "to": unique_email(), "confirmation_template_id": partial["id"]})
    assert heading((await open_page(client, out["confirmation_url"]))[1]) == "House style confirmed"
    assert heading((await open_page(client, out["confirmation_url"]))[1]) == "Partial: again"

    # A new default replaces the old one.
    status, newer = await post_json(
        client, "/confirmation_templates.json", org.auth("write"), {"name": "newer", "default": True}
    )
    assert status == 201 and newer["default"] is True
    r = await client.get(f"/api/v1/confirmation_templates/{default['id']}.json", headers=org.auth("read"))
    assert (await r.json())["default"] is False


async def test_confirmation_template_validation_and_tenancy(client, org, pool) -> None:
    status, out = await post_json(client, "/confirmation_templates.json", org.auth("write"), {"pages": {}})
    assert status == 422 and out == {"errors": {"name": ["can't be blank"]}}
    status, out = await post_json(
        client,
        "/confirmation_templates.json",
        org.auth("write"),
        {"name": "x", "pages": {"confirmed": {"heading": "h" * 201}}},
    )
    assert status == 422 and out["errors"]["pages"] == ["confirmed.heading is too long (maximum is 200 characters)"]
    status, out = await post_json(
        client, "/confirmation_templates.json", org.auth("write"), {"name": "x", "pages": {"expired": {}}}
    )
    assert status == 422 and "pages" in out["errors"]

    other_id = await orgs.create_org(pool, "other")
    other = {"Authorization": f"Bearer {await orgs.create_key(pool, other_id, ['write', 'read'])}"}
    status, theirs = await post_json(client, "/confirmation_templates.json", other, {"name": "theirs"})
    assert status == 201
    r = await client.get(f"/api/v1/confirmation_templates/{theirs['id']}.json", headers=org.auth("read"))
    assert r.status == 404
    out = await send(
        client,
        org,
        {
            "to": unique_email(),
            "subject": "s",
            "body": "b",
            "double_opt_in": True,
            "confirmation_template_id": theirs["id"],
        },
        expect=422,
    )
    assert out == {"errors": {"confirmation_template_id": ["not found"]}}


async def test_confirming_resubscribes_an_unsubscribed_subscriber(client, org, pool, worker) -> None:
    to = unique_email()
    await make_subscriber(client, org, email=to, unsubscribed=True)
    out = await send(client, org, {"to": to, "subject": "s", "body": "b", "double_opt_in": True})
    assert out["status"] == "queued"  # transactional email bypasses unsubscribe
    await open_page(client, out["confirmation_url"])
    row = await subscriber_row(pool, org, to)
    assert row["status"] == "subscribed" and row["confirmed_at"] is not None


async def test_public_pages_are_locked_down(client, org, worker) -> None:
    out = await send(client, org, {"to": unique_email(), "subject": "s", "body": "b", "double_opt_in": True})
    r = await client.get(path_of(out["confirmation_url"]))
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY"
