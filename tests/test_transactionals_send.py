"""POST and GET /api/v1/transactionals: the documented examples and every parameter, end to end
through Postgres, Redis, the worker and the SMTP server."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import uuid

import orjson

from shared import attachments, orgs
from shared.sql import Q
from tests.helpers import make_broadcast, unique_email
from tests.transactionals_helpers import (
    PUBLIC_BASE,
    V1,
    fetch,
    inbox,
    make_subscriber,
    make_template,
    one_mail,
    post_json,
    send,
    wait_status,
)


def parse_time(value: str) -> dt.datetime:
    assert value.endswith("Z"), value
    return dt.datetime.fromisoformat(value)


async def test_documented_example_send_then_get(client, org, worker, smtp_server) -> None:
    to = unique_email("john")
    out = await send(
        client,
        org,
        {
            "to": to,
            "subject": "Welcome to Our Service",
            "body": "Thank you for signing up!",
            "reply_to": "support@example.com",
        },
    )
    assert out["recipient_email"] == to
    assert out["recipient_name"] is None
    assert out["subject"] == "Welcome to Our Service"
    assert out["body"] == "Thank you for signing up!"
    assert out["preheader"] is None
    assert out["reply_to"] == "support@example.com"
    assert out["sent_at"] is None
    assert out["status"] == "queued"
    assert out["status_url"] == f"{PUBLIC_BASE}/api/v1/transactionals/{out['id']}.json"
    assert isinstance(out["id"], str) and uuid.UUID(out["id"])
    # No queue_at given: queued at once, so queue_at is the time of the request.
    created = parse_time(out["created_at"])
    assert abs((parse_time(out["queue_at"]) - created).total_seconds()) < 1
    assert parse_time(out["updated_at"]) >= created

    mail = await one_mail(smtp_server, to)
    assert mail.subject == "Welcome to Our Service"
    assert mail.header("Reply-To") == "support@example.com"
    assert "no-reply@tidings.local" in mail.from_
    # A plain string body is wrapped in html/body tags; the text part is the body itself.
    assert "<html>" in mail.html and "<body>" in mail.html and "Thank you for signing up!" in mail.html
    assert mail.text.strip() == "Thank you for signing up!"
    assert mail.header("List-Unsubscribe") is None

    got = await wait_status(client, org, out["id"], "sent")
    assert got["sent_at"] is not None and parse_time(got["sent_at"]) >= created
    assert parse_time(got["updated_at"]) >= parse_time(got["sent_at"])
    for field in ("id", "recipient_email", "recipient_name", "subject", "body", "preheader", "reply_to", "queue_at"):
        assert got[field] == out[field], field
    assert got["created_at"] == out["created_at"]
    # The Broadcasts API's monitoring sees the same message with its timeline.
    r = await client.get(org.path(f"/messages/{out['id']}"), headers=org.auth("read"))
    message = await r.json()
    assert message["broadcast_id"] is None and message["channel"] == "email" and message["to"] == to
    assert [e["status"] for e in message["events"]] == ["queued", "sending", "sent"]
    assert mail.message_id == message["external_message_id"]


async def test_html_body_is_wrapped_once_and_preheader_is_hidden(client, org, worker, smtp_server) -> None:
    fragment_to, document_to = unique_email("frag"), unique_email("doc")
    await send(
        client,
        org,
        {
            "to": fragment_to,
            "subject": "Fragment",
            "body": "<p>Hello <a href='https://acme.test/x'>there</a></p>",
            "preheader": "A short preview",
        },
    )
    document = "<!DOCTYPE html><html><head><title>t</title></head><body><h1>Designed</h1></body></html>"
    await send(client, org, {"to": document_to, "subject": "Document", "body": document})

    mail = await one_mail(smtp_server, fragment_to)
    assert mail.html.count("<html") == 1 and '<body><div style="display:none' in mail.html
    assert "A short preview" in mail.html
    assert "<p>Hello <a href='https://acme.test/x'>there</a></p>" in mail.html
    assert "https://acme.test/x" in mail.text  # the text part keeps links
    mail = await one_mail(smtp_server, document_to)
    assert mail.html.count("<html") == 1 and "<h1>Designed</h1>" in mail.html


async def test_plain_text_body_keeps_lines_and_is_escaped_in_html(client, org, worker, smtp_server) -> None:
    to = unique_email()
    await make_subscriber(client, org, email=to, first_name="Tom")
    body = "Hi {{ first_name }},\nTom & Jerry say {% if first_name %}hello{% endif %}.\n"
    await send(client, org, {"to": to, "subject": "Plain", "body": body})
    mail = await one_mail(smtp_server, to)
    assert "Hi Tom,<br>" in mail.html and "Tom &amp; Jerry say hello." in mail.html
    assert mail.text.replace("\r\n", "\n").strip() == "Hi Tom,\nTom & Jerry say hello."


async def test_template_defaults_and_explicit_overrides(client, org, worker, smtp_server) -> None:
    template = await make_template(
        client,
        org,
        subject="Welcome, {{ first_name }}",
        body="<p>Hello {{ first_name }} from the template</p>",
        preheader="Template preview",
    )
    first, second = unique_email("tpl"), unique_email("tpl")
    await make_subscriber(client, org, email=first, first_name="Ada")
    # The documented example: only `to` and `template_id`.
    out = await send(client, org, {"to": first, "template_id": template["id"]})
    assert out["subject"] == "Welcome, {{ first_name }}"
    assert out["body"] == template["body"] and out["preheader"] == "Template preview"
    assert out["recipient_name"] == "Ada"
    mail = await one_mail(smtp_server, first)
    assert mail.subject == "Welcome, Ada"
    assert "Hello Ada from the template" in mail.html and "Template preview" in mail.html

    # The documented override example: an explicit subject wins, the rest comes from the template.
    out = await send(client, org, {"to": second, "template_id": template["id"], "subject": "Custom subject override"})
    assert out["subject"] == "Custom subject override" and out["body"] == template["body"]
    mail = await one_mail(smtp_server, second)
    assert mail.subject == "Custom subject override" and "from the template" in mail.html


async def test_template_of_another_org_or_unknown_is_422(client, org, pool) -> None:
    other_id = await orgs.create_org(pool, "other")
    other = {"Authorization": f"Bearer {await orgs.create_key(pool, other_id, ['write', 'read'])}"}
    status, theirs = await post_json(client, "/templates.json", other, {"name": "t", "subject": "s", "body": "b"})
    assert status == 201
    for template_id in (theirs["id"], 123, str(uuid.uuid4()), "nope"):
        out = await send(client, org, {"to": unique_email(), "template_id": template_id}, expect=422)
        assert out == {"errors": {"template_id": ["not found"]}}, template_id
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE org_id = $1", org.id) == 0


async def test_documented_error_shape_lists_every_problem(client, org, pool) -> None:
    out = await send(client, org, {}, expect=422)
    assert out == {
        "errors": {
            "recipient_email": ["can't be blank"],
            "subject": ["can't be blank"],
            "body": ["can't be blank"],
        }
    }
    out = await send(
        client,
        org,
        {
            "to": "not an address",
            "subject": "Line\r\nBcc: victim@example.com",
            "body": "{% if %}",
            "reply_to": "nobody",
            "queue_at": "next tuesday",
            "subscriber": {"first_name": "A\nB"},
        },
        expect=422,
    )
    errors = out["errors"]
    assert errors["recipient_email"] == ["is invalid"]
    assert errors["subject"] == ["can't contain line breaks"]
    assert errors["body"][0].startswith("Liquid syntax error")
    assert errors["reply_to"] == ["is invalid"]
    assert errors["queue_at"] == ["is invalid"]
    assert errors["subscriber.first_name"] == ["can't contain line breaks"]
    # Unknown fields and wrong JSON types are refused too, naming the field.
    out = await send(client, org, {"to": unique_email(), "subject": "s", "body": "b", "sender": "x"}, expect=422)
    assert list(out["errors"]) == ["sender"]
    out = await send(client, org, {"to": 42, "subject": "s", "body": "b"}, expect=422)
    assert list(out["errors"]) == ["to"]
    out = await send(client, org, {"to": unique_email(), "subject": "s", "body": "x" * 200_001}, expect=422)
    assert out["errors"] == {"body": ["is too long (maximum is 200000 characters)"]}
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE org_id = $1", org.id) == 0


async def test_queue_at_in_the_future_is_scheduled_then_sent(client, org, worker, smtp_server) -> None:
    to = unique_email("later")
    queue_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
    out = await send(client, org, {"to": to, "subject": "Later", "body": "Scheduled", "queue_at": queue_at.isoformat()})
    assert out["status"] == "scheduled"
    assert parse_time(out["queue_at"]) == queue_at
    await asyncio.sleep(0.5)
    assert inbox(smtp_server, to) == []
    assert (await fetch(client, org, out["id"]))["status"] == "scheduled"

    mail = await one_mail(smtp_server, to)
    assert mail.subject == "Later"
    got = await wait_status(client, org, out["id"], "sent")
    sent_at = parse_time(got["sent_at"])
    # Never before queue_at, and within 5 s after it.
    assert queue_at <= sent_at <= queue_at + dt.timedelta(seconds=5)
    r = await client.get(org.path(f"/messages/{out['id']}"), headers=org.auth("read"))
    assert [e["status"] for e in (await r.json())["events"]] == ["scheduled", "queued", "sending", "sent"]


async def test_queue_at_in_the_past_sends_now(client, org, worker, smtp_server) -> None:
    to = unique_email("past")
    out = await send(client, org, {"to": to, "subject": "Now", "body": "Past time", "queue_at": "2024-03-21T10:00:00Z"})
    assert out["status"] == "queued" and out["queue_at"] == "2024-03-21T10:00:00Z"
    await one_mail(smtp_server, to)
    # A time without an offset is UTC.
    out = await send(
        client, org, {"to": unique_email(), "subject": "s", "body": "b", "queue_at": "2024-03-21T10:00:00"}
    )
    assert out["queue_at"] == "2024-03-21T10:00:00Z"


async def test_existing_subscriber_gives_recipient_name_and_association(client, org, pool, worker, smtp_server):
    to = unique_email("ada")
    subscriber = await make_subscriber(client, org, email=to, first_name="Ada", last_name="Lovelace")
    out = await send(
        client,
        org,
        {"to": to, "subject": "Hi {{ first_name }}", "body": "<p>{{ name }} / {{ last_name }} / {{ email }}</p>"},
    )
    assert out["recipient_name"] == "Ada Lovelace"
    contact_id = await pool.fetchval("SELECT contact_id FROM messages WHERE id = $1", uuid.UUID(out["id"]))
    assert str(contact_id) == subscriber["id"]
    mail = await one_mail(smtp_server, to)
    assert mail.subject == "Hi Ada"
    assert f"Ada Lovelace / Lovelace / {to}" in mail.html
    assert "Ada Lovelace" in mail.to
    # Without a subscriber, nothing is created and the variables render empty.
    stranger = unique_email("stranger")
    out = await send(client, org, {"to": stranger, "subject": "Hi {{ first_name }}!", "body": "x"})
    assert out["recipient_name"] is None
    assert (await one_mail(smtp_server, stranger)).subject == "Hi !"
    assert await pool.fetchval("SELECT count(*) FROM contact_channels WHERE address = $1", stranger) == 0


async def test_variable_values_are_escaped_in_html(client, org, worker, smtp_server) -> None:
    to = unique_email()
    await make_subscriber(client, org, email=to, first_name="<b>Eve</b>")
    await send(client, org, {"to": to, "subject": "{{ first_name }}", "body": "<p>Hi {{ first_name }}</p>"})
    mail = await one_mail(smtp_server, to)
    assert "&lt;b&gt;Eve&lt;/b&gt;" in mail.html and "<b>Eve</b>" not in mail.html
    assert mail.subject == "<b>Eve</b>"  # a subject is not HTML


async def test_scopes_tenancy_and_error_shapes(client, org, pool) -> None:
    body = {"to": unique_email(), "subject": "s", "body": "b"}
    r = await client.post(f"{V1}/transactionals.json", json=body)
    assert r.status == 401 and list((await r.json())["errors"]) == ["base"]
    r = await client.post(f"{V1}/transactionals.json", headers=org.auth("read"), json=body)
    assert r.status == 403 and list((await r.json())["errors"]) == ["base"]
    r = await client.post(f"{V1}/transactionals.json", headers=org.auth("admin"), json=body)
    assert r.status == 403
    out = await send(client, org, body)
    path = f"{V1}/transactionals/{out['id']}.json"
    r = await client.get(path, headers=org.auth("write"))
    assert r.status == 403
    other_id = await orgs.create_org(pool, "intruder")
    other = {"Authorization": f"Bearer {await orgs.create_key(pool, other_id, ['read', 'write'])}"}
    r = await client.get(path, headers=other)
    assert r.status == 404 and list((await r.json())["errors"]) == ["base"]
    for missing in (str(uuid.uuid4()), "123"):
        r = await client.get(f"{V1}/transactionals/{missing}.json", headers=org.auth("read"))
        assert r.status == 404
    r = await client.post(f"{V1}/transactionals.json", headers=org.auth("write"), data=b"{not json")
    assert r.status == 400 and list((await r.json())["errors"]) == ["base"]
    # This route's limit is MAX_BODY_BYTES plus room for the attachments' base64.
    too_large = attachments.body_limit_bytes(256 * 1024, 10 * 1024 * 1024) + 1
    r = await client.post(f"{V1}/transactionals.json", headers=org.auth("write"), data=io.BytesIO(b"x" * too_large))
    assert r.status == 413 and "errors" in await r.json()
    r = await client.get(f"{V1}/no-such-thing.json", headers=org.auth("read"))
    assert r.status == 404 and "errors" in await r.json()


async def test_rate_limit_is_shared_with_the_broadcast_send(client, org, pool, worker) -> None:
    await pool.execute(Q.update_org_rate_limit, org.id, 3, 60)
    b = await make_broadcast(client, org)
    for _ in range(2):
        r = await client.post(
            org.path(f"/broadcasts/{b['id']}/send"),
            headers=org.auth("write"),
            json={"email": unique_email(), "variables": {"otp": "1"}, "background": True},
        )
        assert r.status == 202
    body = {"to": unique_email(), "subject": "s", "body": "b"}
    r = await client.post(f"{V1}/transactionals.json", headers=org.auth("write"), json=body)
    assert r.status == 201
    assert r.headers["RateLimit-Limit"] == "3" and r.headers["RateLimit-Remaining"] == "0"
    assert int(r.headers["RateLimit-Reset"]) >= 1
    r = await client.post(f"{V1}/transactionals.json", headers=org.auth("write"), json=body)
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    assert list((await r.json())["errors"]) == ["base"]


async def test_idempotency_key_replays_answers_and_refusals(client, org, pool, worker, smtp_server) -> None:
    to = unique_email("idem")
    body = {"to": to, "subject": "Once", "body": "Only once"}
    headers = {**org.auth("write"), "Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = await client.post(f"{V1}/transactionals.json", headers=headers, json=body)
    second = await client.post(f"{V1}/transactionals.json", headers=headers, json=body)
    assert first.status == second.status == 201
    assert await first.json() == await second.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    await one_mail(smtp_server, to)
    await asyncio.sleep(0.2)
    assert len(inbox(smtp_server, to)) == 1
    r = await client.post(f"{V1}/transactionals.json", headers=headers, json={**body, "subject": "Twice"})
    assert r.status == 422 and list((await r.json())["errors"]) == ["base"]

    # A refusal is replayed in this API's shape too.
    refused = {**org.auth("write"), "Idempotency-Key": f"k-{uuid.uuid4()}"}
    for _ in range(2):
        r = await client.post(f"{V1}/transactionals.json", headers=refused, data=orjson.dumps({"to": to}))
        assert r.status == 422
        assert await r.json() == {"errors": {"subject": ["can't be blank"], "body": ["can't be blank"]}}


async def test_openapi_documents_the_v1_surface(client) -> None:
    doc = await (await client.get("/openapi.json")).json()
    post = doc["paths"]["/api/v1/transactionals.json"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("TransactionalCreate")
    assert "201" in post["responses"] and post["x-scope"] == "write"
    assert doc["paths"]["/api/v1/transactionals/{id}.json"]["get"]["x-scope"] == "read"
    for path in ("/confirm/{token}", "/unsubscribe/{token}", "/api/v1/suppressions/{email}.json"):
        assert path in doc["paths"]
