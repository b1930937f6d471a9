"""Batch sends on both surfaces, against the real stack (api, Postgres, Redis, worker, SMTP).

`POST /orgs/{org}/broadcasts/{id}/send/batch` and `POST /api/v1/transactionals/batch.json`:
up to 500 items, each validated and resolved on its own, the accepted ones committed
together and delivered by the worker; one request against the rate limit; an
Idempotency-Key covers the whole batch.
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import json
import os
import uuid
from email.message import EmailMessage
from typing import Any

import asyncpg
import msgspec
import pytest

from api.broadcasts import batch as broadcast_batch
from api.broadcasts import schemas
from api.idempotency import request_hash
from api.routing import batch_body_limit
from api.state import STATE
from api.transactionals import batch as transactionals_batch
from api.transactionals import schemas as v1_schemas
from shared import attachments, errors, idempotency_keys, sending, transactionals
from shared.config import Settings
from tests.helpers import eventually, make_broadcast, unique_email
from tests.transactionals_helpers import V1

BATCH_SIZE = 500


def batch_path(org: Any, broadcast: dict[str, Any]) -> str:
    return org.path(f"/broadcasts/{broadcast['id']}/send/batch")


async def count(pool: asyncpg.Pool, table: str, org_id: uuid.UUID) -> int:
    value: int = await pool.fetchval(f"SELECT count(*) FROM {table} WHERE org_id = $1", org_id)
    return value


async def delivered_to(smtp_server: Any, addresses: list[str], timeout_s: float = 60.0) -> None:
    """Every address got its mail (bounded wait)."""
    wanted = {a.lower() for a in addresses}

    def all_there() -> bool:
        got = {r.lower() for m in smtp_server.messages for r in m.rcpt_tos}
        return wanted <= got

    await eventually(all_there, timeout_s=timeout_s, interval_s=0.2)


def mailed(smtp_server: Any, address: str) -> bool:
    return any(address.lower() in (r.lower() for r in m.rcpt_tos) for m in smtp_server.messages)


# ---- the Broadcasts API ----


async def test_broadcast_batch_of_500_mixes_accepted_and_refused_items(
    client: Any, org: Any, pool: asyncpg.Pool, worker: Any, smtp_server: Any
) -> None:
    b = await make_broadcast(client, org)
    unsubscribed = unique_email("unsub")
    r = await client.post(
        org.path("/contacts"), headers=org.auth("admin"), json={"email": unsubscribed, "status": "unsubscribed"}
    )
    assert r.status == 201, await r.text()

    items: list[dict[str, Any]] = []
    expected: list[str] = []  # per item: "ok" or the error code
    good: list[str] = []
    refused_addresses: list[str] = []
    for i in range(BATCH_SIZE):
        kind = i % 10
        if kind == 3:
            items.append({"email": unsubscribed, "variables": {"otp": str(i)}})
            expected.append("recipient_unsubscribed")
        elif kind == 5:
            to = unique_email("novars")
            items.append({"email": to})
            expected.append("missing_variables")
            refused_addresses.append(to)
        elif kind == 7:
            items.append({"email": f"not-an-email-{i}", "variables": {"otp": str(i)}})
            expected.append("validation_error")
        elif kind == 8:
            to = unique_email("typo")
            items.append({"email": to, "variabels": {"otp": str(i)}})
            expected.append("validation_error")
            refused_addresses.append(to)
        elif i == 9:
            items.append({"email": unique_email("bg"), "variables": {"otp": "1"}, "background": False})
            expected.append("validation_error")
        elif i == 19:
            items.append("not an object")
            expected.append("validation_error")
        else:
            to = unique_email("batch")
            items.append({"email": to, "name": f"N{i}", "variables": {"otp": f"{i:06d}"}})
            expected.append("ok")
            good.append(to)

    r = await client.post(batch_path(org, b), headers=org.auth("write"), json={"items": items})
    assert r.status == 202, await r.text()
    assert r.headers["RateLimit-Limit"] == "100" and r.headers["RateLimit-Remaining"] == "99"
    body = await r.json()
    msgspec.convert(body, broadcast_batch.BatchSendResponse)
    data = body["data"]
    assert [d["index"] for d in data] == list(range(BATCH_SIZE))
    for d, want in zip(data, expected, strict=True):
        if want == "ok":
            assert "error" not in d, d
            (rec,) = d["recipients"]
            assert rec["status"] == "queued" and rec["channel"] == "email"
            assert rec["status_url"].endswith(f"/messages/{rec['id']}")
        else:
            assert "send_id" not in d, d
            assert d["error"]["code"] == want, d
    missing = data[5]["error"]
    assert missing["missing"] == ["otp"] and missing["fields"] == {"variables": ["otp has no value and no default"]}
    assert data[8]["error"]["fields"] == {"variabels": ["Object contains unknown field `variabels`"]}
    assert "background" in data[9]["error"]["fields"]

    accepted = expected.count("ok")
    assert await count(pool, "sends", org.id) == accepted
    await delivered_to(smtp_server, good)
    # Each its own send, with its own variables.
    (mail,) = [m for m in smtp_server.messages if good[0] in m.rcpt_tos]
    assert b"Your code is 000000" in mail.raw
    for address in [unsubscribed, *refused_addresses]:
        assert not mailed(smtp_server, address)

    # A send of the batch reads back like any other.
    rec = data[0]["recipients"][0]
    msg = await (await client.get(org.path(f"/messages/{rec['id']}"), headers=org.auth("read"))).json()
    assert msg["send_id"] == data[0]["send_id"] and msg["source"] == "api"


async def test_broadcast_batch_replays_under_its_idempotency_key(client: Any, org: Any, pool: asyncpg.Pool) -> None:
    b = await make_broadcast(client, org)
    items = [{"email": unique_email(), "variables": {"otp": "1"}}, {"email": unique_email()}]
    headers = {**org.auth("write"), "Idempotency-Key": f"batch-{uuid.uuid4()}"}
    first = await client.post(batch_path(org, b), headers=headers, json={"items": items})
    assert first.status == 202
    again = await client.post(batch_path(org, b), headers=headers, json={"items": items})
    assert again.status == 202 and again.headers.get("Idempotent-Replayed") == "true"
    assert await again.json() == await first.json()
    assert await count(pool, "sends", org.id) == 1
    other = await client.post(batch_path(org, b), headers=headers, json={"items": items[:1]})
    assert other.status == 422 and (await other.json())["error"]["code"] == "idempotency_key_reused"


async def test_broadcast_batch_retry_after_a_lost_first_request_sends_nothing_twice(
    client: Any, org: Any, pool: asyncpg.Pool
) -> None:
    """A first request committed its batch under a key and died before answering: the retry
    answers those sends (found from the one the key names) and runs only the refused items."""
    b = await make_broadcast(client, org)
    items = [
        {"email": unique_email(), "variables": {"otp": "1"}},
        {"email": unique_email()},  # missing variables
        {"email": unique_email(), "variables": {"otp": "3"}},
    ]
    raw = json.dumps({"items": items}).encode()
    key = f"batch-{uuid.uuid4()}"
    path = batch_path(org, b)
    state = client.app[STATE]
    holder = uuid.uuid4()
    assert await idempotency_keys.claim(pool, org.id, key, request_hash("POST", path, raw), holder, 60.0)
    claim = sending.KeyClaim(sending.KeyFence(org.id, key, holder), None)
    first = await state.acceptor.trigger_many(
        org.id,
        uuid.UUID(b["id"]),
        [broadcast_batch.decode_item(msgspec.Raw(json.dumps(item).encode())) for item in items],
        source="api",
        request_id=None,
        claim=claim,
    )
    assert isinstance(first[0], sending.PreparedSend) and isinstance(first[2], sending.PreparedSend)
    # The first request "dies": its lease lapses with no answer stored.
    await pool.execute(
        "UPDATE idempotency_keys SET lease_expires_at = now() WHERE org_id = $1 AND key = $2", org.id, key
    )

    headers = {**org.auth("write"), "Idempotency-Key": key, "Content-Type": "application/json"}
    r = await client.post(path, headers=headers, data=raw)
    assert r.status == 202, await r.text()
    data = (await r.json())["data"]
    assert data[0]["send_id"] == str(first[0].send_id) and data[2]["send_id"] == str(first[2].send_id)
    assert data[1]["error"]["code"] == "missing_variables"
    assert await count(pool, "sends", org.id) == 2


async def test_broadcast_batch_body_must_be_a_list_of_1_to_500(client: Any, org: Any, pool: asyncpg.Pool) -> None:
    b = await make_broadcast(client, org)
    item = {"email": unique_email(), "variables": {"otp": "1"}}
    for body in ({"items": item}, {"items": []}, {"items": [item] * 501}, {}, [item], {"items": [item], "x": 1}):
        r = await client.post(batch_path(org, b), headers=org.auth("write"), json=body)
        assert r.status == 422, (body, await r.text())
        error = (await r.json())["error"]
        assert error["code"] == "validation_error" and error["fields"], error
    r = await client.post(batch_path(org, b), headers=org.auth("write"), json={"items": []})
    assert "items" in (await r.json())["error"]["fields"]
    assert await count(pool, "sends", org.id) == 0

    # What Postgres cannot store (a NUL) refuses its own item only.
    nul = {"email": unique_email(), "name": "A\u0000B", "variables": {"otp": "1"}}
    r = await client.post(batch_path(org, b), headers=org.auth("write"), json={"items": [nul, item]})
    assert r.status == 202
    bad, good = (await r.json())["data"]
    assert bad["error"]["fields"] == {"name": ["must not contain the NUL character (\\u0000)"]} and good["send_id"]


async def test_broadcast_batch_refused_whole_when_the_broadcast_cannot_send(client: Any, org: Any) -> None:
    b = await make_broadcast(client, org)
    await client.post(org.path(f"/broadcasts/{b['id']}/pause"), headers=org.auth("admin"))
    body = {"items": [{"email": unique_email(), "variables": {"otp": "1"}}]}
    r = await client.post(batch_path(org, b), headers=org.auth("write"), json=body)
    assert r.status == 409 and (await r.json())["error"]["code"] == "broadcast_not_active"
    r = await client.post(org.path(f"/broadcasts/{uuid.uuid4()}/send/batch"), headers=org.auth("write"), json=body)
    assert r.status == 404
    r = await client.post(batch_path(org, b), headers=org.auth("read"), json=body)
    assert r.status == 403


async def test_a_batch_counts_once_against_the_rate_limit(client: Any, org: Any) -> None:
    b = await make_broadcast(client, org)
    items = [{"email": unique_email(), "variables": {"otp": "1"}} for _ in range(50)]
    remaining = []
    for _ in range(2):
        r = await client.post(batch_path(org, b), headers=org.auth("write"), json={"items": items})
        assert r.status == 202
        remaining.append(int(r.headers["RateLimit-Remaining"]))
    r = await client.post(
        f"{V1}/transactionals/batch.json",
        headers=org.auth("write"),
        json={"transactionals": [{"to": unique_email(), "subject": "s", "body": "b"}] * 20},
    )
    assert r.status == 200
    remaining.append(int(r.headers["RateLimit-Remaining"]))
    assert remaining == [99, 98, 97]


async def test_batch_bodies_have_their_own_size_limit(client: Any, org: Any, settings: Settings) -> None:
    b = await make_broadcast(client, org)
    # 500 items of about 5 KiB each: well over MAX_BODY_BYTES, within BATCH_MAX_BODY_BYTES.
    padding = "x" * 5000
    items = [{"email": unique_email(), "variables": {"otp": "1", "pad": padding}} for _ in range(BATCH_SIZE)]
    raw = json.dumps({"items": items}).encode()
    assert settings.max_body_bytes < len(raw) < settings.batch_max_body_bytes
    headers = {**org.auth("write"), "Content-Type": "application/json"}
    r = await client.post(batch_path(org, b), headers=headers, data=io.BytesIO(raw))
    assert r.status == 202, (await r.text())[:500]
    assert len((await r.json())["data"]) == BATCH_SIZE
    # The limit is BATCH_MAX_BODY_BYTES plus one email's attachments' base64.
    assert batch_body_limit(settings) > settings.batch_max_body_bytes
    too_big = b'{"items": [' + b" " * batch_body_limit(settings) + b"]}"
    r = await client.post(batch_path(org, b), headers=headers, data=io.BytesIO(too_big))
    assert r.status == 413 and (await r.json())["error"]["code"] == "body_too_large"
    r = await client.post(f"{V1}/transactionals/batch.json", headers=headers, data=io.BytesIO(too_big))
    assert r.status == 413 and "errors" in await r.json()


# ---- the Transactionals API ----


async def test_transactional_batch_of_500_mixes_accepted_and_refused_items(
    client: Any, org: Any, pool: asyncpg.Pool, worker: Any, smtp_server: Any
) -> None:
    suppressed = unique_email("suppressed")
    r = await client.post(
        f"{V1}/suppressions.json", headers=org.auth("write"), json={"email": suppressed, "reason": "manual"}
    )
    assert r.status in (200, 201), await r.text()
    r = await client.post(
        f"{V1}/templates.json",
        headers=org.auth("write"),
        json={"name": "t", "subject": "From a template {{ first_name }}", "body": "<p>hello {{ email }}</p>"},
    )
    assert r.status == 201, await r.text()
    template_id = (await r.json())["id"]

    items: list[Any] = []
    expected: list[str] = []  # "queued", "rejected", or the field named in errors
    good: list[str] = []
    for i in range(BATCH_SIZE):
        kind = i % 10
        if kind == 2:
            items.append({"to": f"bad-address-{i}", "subject": "s", "body": "b"})
            expected.append("recipient_email")
        elif kind == 4:
            items.append({"to": unique_email("nosubject"), "body": "b"})
            expected.append("subject")
        elif kind == 6:
            items.append({"to": suppressed, "subject": "s", "body": "b"})
            expected.append("rejected")
        elif i == 8:
            items.append({"to": unique_email(), "subject": "s", "body": "b", "sujbect": "typo"})
            expected.append("sujbect")
        elif i == 18:
            items.append({"to": unique_email(), "template_id": str(uuid.uuid4())})
            expected.append("template_id")
        elif kind == 9:
            to = unique_email("tpl")
            items.append({"to": to, "template_id": template_id, "subscriber": {"first_name": f"F{i}"}})
            expected.append("queued")
            good.append(to)
        else:
            to = unique_email("v1batch")
            items.append({"to": to, "subject": f"Hello {i}", "body": f"Item {i} for {{{{ email }}}}"})
            expected.append("queued")
            good.append(to)

    r = await client.post(f"{V1}/transactionals/batch.json", headers=org.auth("write"), json={"transactionals": items})
    assert r.status == 200, await r.text()
    assert r.headers["RateLimit-Remaining"] == "99"
    data = (await r.json())["data"]
    assert [d["index"] for d in data] == list(range(BATCH_SIZE))
    for d, want in zip(data, expected, strict=True):
        if want in ("queued", "rejected"):
            out = {k: v for k, v in d.items() if k != "index"}
            msgspec.convert(out, v1_schemas.TransactionalOut)
            assert d["status"] == want, d
        else:
            assert set(d) == {"index", "errors"} and want in d["errors"], d
    assert data[4]["errors"]["subject"] == ["can't be blank"]

    accepted = sum(1 for e in expected if e in ("queued", "rejected"))
    assert await count(pool, "transactionals", org.id) == accepted
    await delivered_to(smtp_server, good)
    assert not mailed(smtp_server, suppressed)
    (mail,) = [m for m in smtp_server.messages if good[0] in m.rcpt_tos]
    assert f"Item 0 for {good[0]}".encode() in mail.raw
    tpl = next(d for d, e in zip(data, expected, strict=True) if e == "queued" and d["subject"].startswith("From"))
    assert tpl["recipient_name"] is not None and tpl["subject"] == "From a template {{ first_name }}"

    # Each reads back as the single create's answer does.
    one = data[0]
    r = await client.get(f"{V1}/transactionals/{one['id']}.json", headers=org.auth("read"))
    assert (await r.json())["recipient_email"] == good[0]


async def test_transactional_batch_replays_under_its_idempotency_key(client: Any, org: Any, pool: asyncpg.Pool) -> None:
    items = [{"to": unique_email(), "subject": "s", "body": "b"}, {"to": "nope"}]
    headers = {**org.auth("write"), "Idempotency-Key": f"v1-batch-{uuid.uuid4()}"}
    first = await client.post(f"{V1}/transactionals/batch.json", headers=headers, json={"transactionals": items})
    assert first.status == 200
    again = await client.post(f"{V1}/transactionals/batch.json", headers=headers, json={"transactionals": items})
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert await again.json() == await first.json()
    assert await count(pool, "transactionals", org.id) == 1


async def test_transactional_batch_retry_after_a_lost_first_request_sends_nothing_twice(
    client: Any, org: Any, pool: asyncpg.Pool
) -> None:
    items = [
        {"to": unique_email(), "subject": "one", "body": "b"},
        {"to": "not-an-address", "subject": "two", "body": "b"},
        {"to": unique_email(), "subject": "three", "body": "b"},
    ]
    raw = json.dumps({"transactionals": items}).encode()
    key = f"v1-batch-{uuid.uuid4()}"
    path = f"{V1}/transactionals/batch.json"
    state = client.app[STATE]
    holder = uuid.uuid4()
    assert await idempotency_keys.claim(pool, org.id, key, request_hash("POST", path, raw), holder, 60.0)
    claim = sending.KeyClaim(sending.KeyFence(org.id, key, holder), None)
    first = await state.acceptor.transactional_many(
        org.id,
        [transactionals_batch.decode_item(msgspec.Raw(json.dumps(item).encode())) for item in items],
        request_id=None,
        claim=claim,
    )
    assert not isinstance(first[0], Exception) and not isinstance(first[2], Exception)
    await pool.execute(
        "UPDATE idempotency_keys SET lease_expires_at = now() WHERE org_id = $1 AND key = $2", org.id, key
    )

    headers = {**org.auth("write"), "Idempotency-Key": key, "Content-Type": "application/json"}
    r = await client.post(path, headers=headers, data=raw)
    assert r.status == 200, await r.text()
    data = (await r.json())["data"]
    assert data[0]["id"] == str(first[0]["id"]) and data[2]["id"] == str(first[2]["id"])
    assert data[1]["errors"] == {"recipient_email": ["is invalid"]}
    assert await count(pool, "transactionals", org.id) == 2


async def test_transactional_batch_body_must_be_a_list_of_1_to_500(client: Any, org: Any, pool: asyncpg.Pool) -> None:
    item = {"to": unique_email(), "subject": "s", "body": "b"}
    for body in ({"transactionals": item}, {"transactionals": []}, {"transactionals": [item] * 501}, {}):
        r = await client.post(f"{V1}/transactionals/batch.json", headers=org.auth("write"), json=body)
        assert r.status == 422, (body, await r.text())
        assert list((await r.json())["errors"]) == ["transactionals"], body
    r = await client.post(f"{V1}/transactionals/batch.json", headers=org.auth("write"), json=[item])
    assert r.status == 422 and "errors" in await r.json()
    assert await count(pool, "transactionals", org.id) == 0


async def test_transactional_batch_double_opt_in_and_unsubscribe_links(
    client: Any, org: Any, worker: Any, smtp_server: Any
) -> None:
    """The links a batch's items make are written with them (set-based, like the rest)."""
    a, c = unique_email("doi"), unique_email("unsub")
    items = [
        {"to": a, "subject": "Confirm", "body": "Click {{ confirmation_url }}", "double_opt_in": True},
        {"to": c, "subject": "News", "body": "Bye {{ unsubscribe_url }}", "include_unsubscribe_link": True},
    ]
    r = await client.post(f"{V1}/transactionals/batch.json", headers=org.auth("write"), json={"transactionals": items})
    assert r.status == 200
    first, second = (await r.json())["data"]
    assert first["confirmation_status"] == "pending" and first["confirmation_url"]
    await delivered_to(smtp_server, [a, c], timeout_s=20)
    (mail,) = [m for m in smtp_server.messages if c in m.rcpt_tos]
    assert b"List-Unsubscribe:" in mail.raw
    page = await client.get(first["confirmation_url"].removeprefix("http://tidings.test"))
    assert page.status == 200
    assert second["status"] == "queued"


def test_batch_item_schema_is_the_single_send_schema() -> None:
    """Items decode as the single send's body, so a field it gains is a batch item's too."""
    assert broadcast_batch.decode_item.__annotations__  # documented
    assert isinstance(broadcast_batch.decode_item(msgspec.Raw(b'{"email": "a@b.example"}')), schemas.SendRequest)


@pytest.mark.parametrize(
    "items",
    [
        [{"email": "a@b.example", "variables": {"otp": "1"}}, {"phone": "+14155550123", "name": "N"}],
        # Each of these sends the batch item by item, so that each fault is its own item's answer.
        [{"email": "a@b.example"}, {"email": "c@d.example", "background": True}],
        [{"email": "a@b.example"}, {"email": "c@d.example", "variables": {"otp": "\u0000"}}],
        [{"email": "a@b.example"}, {"email": "c@d.example", "variables": {"n": 12345678901234567890}}],
        [{"email": "a@b.example"}, {"email": "c@d.example", "variables": {"deep": {"x": [1, {"y": 2}]}}}],
        [{"email": "a@b.example"}, {"emial": "c@d.example"}],
        [{"email": "a@b.example"}, {"email": 7}],
    ],
)
def test_a_batch_decoded_in_one_call_answers_as_item_by_item(items: list[dict[str, Any]]) -> None:
    """The one-call decode of a whole batch (`decode_items`) answers every item as
    `decode_item` does alone: the same trigger, or the same refusal."""
    body = json.dumps({"items": items}).encode()
    raw_items = msgspec.json.decode(body, type=broadcast_batch.BatchSendRequest).items
    together = broadcast_batch.decode_items(body, raw_items)
    alone = [broadcast_batch.decode_item(raw) for raw in raw_items]
    assert [type(t) for t in together] == [type(a) for a in alone]
    for t, a in zip(together, alone, strict=True):
        if isinstance(a, errors.TidingsError):
            assert isinstance(t, errors.TidingsError) and str(t) == str(a)
        else:
            assert t == a


async def test_a_group_item_that_fails_alone_is_answered_alone(
    org: Any, pool: asyncpg.Pool, settings: Settings, client: Any
) -> None:
    """When a group's statement fails and its sends are written one by one, one that still fails
    is that item's answer: the others were committed, so the request must not fail whole."""
    acceptor = client.app[STATE].acceptor
    reqs = [
        await transactionals.validate(pool, org.id, transactionals.Submission(to=unique_email(), subject="s", body="b"))
        for _ in range(3)
    ]
    group = await transactionals.prepare_many(pool, settings, org.id, reqs, request_id=None)
    group[1].contact_id = uuid.uuid4()  # no such contact: its insert fails
    ring = await acceptor._commit_group(group)
    assert ring is not None
    assert isinstance(acceptor._refusals.pop(id(group[1])), errors.NotFound)
    assert not acceptor._refusals
    assert group[0].row is not None and group[2].row is not None
    assert await count(pool, "transactionals", org.id) == 2


async def test_batch_recipients_resolve_as_single_sends_do(client: Any, org: Any) -> None:
    """Known recipients are found together; one given with an address its contact lacks still
    gets it attached, and a new address still makes a contact."""
    b = await make_broadcast(client, org)
    known, other = unique_email("known"), unique_email("other")
    created = []
    for address in (known, other):
        r = await client.post(org.path("/contacts"), headers=org.auth("admin"), json={"email": address})
        created.append((await r.json())["id"])
    phone = "+14155550177"
    items = [
        {"email": known, "variables": {"otp": "1"}},
        {"email": other, "phone": phone, "variables": {"otp": "2"}},
        {"email": unique_email("fresh"), "variables": {"otp": "3"}},
    ]
    r = await client.post(batch_path(org, b), headers=org.auth("write"), json={"items": items})
    assert r.status == 202
    data = (await r.json())["data"]
    assert [d["recipients"][0]["contact_id"] for d in data[:2]] == created
    assert data[2]["recipients"][0]["contact_id"] not in created
    r = await client.get(org.path(f"/contacts/{created[1]}"), headers=org.auth("read"))
    assert phone in {c["address"] for c in (await r.json())["channels"]}


# ---- batches with attachments and test keys (the two meet in a batch item) ----


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _files_of(smtp_server: Any, address: str) -> list[tuple[str | None, bytes]]:
    (mail,) = [m for m in smtp_server.messages if address.lower() in (r.lower() for r in m.rcpt_tos)]
    message = email.message_from_bytes(mail.raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return [(p.get_filename(), p.get_payload(decode=True)) for p in message.iter_attachments()]


async def _test_key_headers(client: Any, org: Any) -> dict[str, str]:
    r = await client.post(
        org.path("/keys"), headers=org.auth("admin"), json={"scopes": ["read", "write"], "mode": "test"}
    )
    assert r.status == 201, await r.text()
    return {"Authorization": f"Bearer {(await r.json())['key']}"}


async def test_broadcast_batch_items_carry_their_attachments(
    client: Any, org: Any, pool: asyncpg.Pool, worker: Any, smtp_server: Any
) -> None:
    b = await make_broadcast(client, org)
    pdf = os.urandom(30_000)
    with_file, without, bad = unique_email("file"), unique_email("plain"), unique_email("exe")
    items = [
        {
            "email": with_file,
            "variables": {"otp": "1"},
            "attachments": [{"filename": "terms.pdf", "content": _b64(pdf)}],
        },
        {"email": without, "variables": {"otp": "2"}},
        {"email": bad, "variables": {"otp": "3"}, "attachments": [{"filename": "x.exe", "content": _b64(b"MZ")}]},
    ]
    r = await client.post(batch_path(org, b), headers=org.auth("write"), json={"items": items})
    assert r.status == 202, await r.text()
    data = (await r.json())["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    assert data[0]["recipients"][0]["status"] == "queued" and data[1]["recipients"][0]["status"] == "queued"
    # The bad file refuses its own item only, as a single send would (nothing stored for it).
    assert data[2]["error"]["code"] == "validation_error" and "attachments" in data[2]["error"]["fields"]
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE to_address = $1", bad) == 0

    await delivered_to(smtp_server, [with_file, without])
    assert _files_of(smtp_server, with_file) == [("terms.pdf", pdf)]
    assert _files_of(smtp_server, without) == []
    # Settled: the stored copy is erased.
    send_id = uuid.UUID(data[0]["send_id"])
    await eventually(lambda: _no_files(pool, send_id), timeout_s=10)


async def _no_files(pool: asyncpg.Pool, send_id: uuid.UUID) -> bool:
    return await attachments.count_for_send(pool, send_id) == 0


async def test_transactional_batch_items_carry_their_attachments(
    client: Any, org: Any, pool: asyncpg.Pool, worker: Any, smtp_server: Any
) -> None:
    text = "Grüße\n".encode()
    with_file, bad = unique_email("v1file"), unique_email("v1bad")
    items = [
        {
            "to": with_file,
            "subject": "Your receipt",
            "body": "<p>Attached.</p>",
            "attachments": [{"filename": "receipt.txt", "content": _b64(text), "content_type": "text/plain"}],
        },
        {"to": bad, "subject": "Hi", "body": "<p>Hi</p>", "attachments": [{"filename": "a.txt", "content": "!!"}]},
    ]
    r = await client.post(f"{V1}/transactionals/batch.json", headers=org.auth("write"), json={"transactionals": items})
    assert r.status == 200, await r.text()
    data = (await r.json())["data"]
    assert data[0]["status"] == "queued" and data[0]["test"] is False
    assert set(data[1]) == {"index", "errors"} and "attachments" in data[1]["errors"]
    await delivered_to(smtp_server, [with_file])
    assert _files_of(smtp_server, with_file) == [("receipt.txt", text)]
    assert await pool.fetchval("SELECT count(*) FROM messages WHERE to_address = $1", bad) == 0


async def test_a_test_keys_broadcast_batch_makes_test_sends(
    client: Any, org: Any, pool: asyncpg.Pool, worker: Any, smtp_server: Any
) -> None:
    test = await _test_key_headers(client, org)
    b = await make_broadcast(client, org)
    domain = f"t{uuid.uuid4().hex[:12]}.example.com"
    items = [
        {"email": f"bounce@{domain}", "variables": {"otp": "1"}},
        {"email": f"ok@{domain}", "variables": {"otp": "2"}},
    ]
    r = await client.post(batch_path(org, b), headers=test, json={"items": items})
    assert r.status == 202, await r.text()
    data = (await r.json())["data"]
    assert all(d["recipients"][0]["test"] is True for d in data)
    ids = [uuid.UUID(d["recipients"][0]["id"]) for d in data]

    async def final() -> list[str] | None:
        rows = await pool.fetch("SELECT id, status, test FROM messages WHERE id = ANY($1::uuid[])", ids)
        assert all(row["test"] for row in rows)
        by_id = {row["id"]: row["status"] for row in rows}
        statuses = [by_id[i] for i in ids]
        return statuses if statuses == ["bounced", "sent"] else None

    assert await eventually(final, timeout_s=15) == ["bounced", "sent"]
    assert not any(r.endswith("@" + domain) for m in smtp_server.messages for r in m.rcpt_tos)
    # A live key never sees them.
    live = org.auth("read")
    assert (await client.get(org.path(f"/messages/{ids[0]}"), headers=live)).status == 404


async def test_a_test_keys_transactional_batch_makes_test_emails(
    client: Any, org: Any, pool: asyncpg.Pool, worker: Any, smtp_server: Any
) -> None:
    test = await _test_key_headers(client, org)
    domain = f"t{uuid.uuid4().hex[:12]}.example.com"
    items = [
        {"to": f"complaint@{domain}", "subject": "Hi", "body": "<p>Hi</p>"},
        {
            "to": f"fine@{domain}",
            "subject": "Hi",
            "body": "<p>Hi</p>",
            "attachments": [{"filename": "a.txt", "content": _b64(b"a")}],
        },
    ]
    r = await client.post(f"{V1}/transactionals/batch.json", headers=test, json={"transactionals": items})
    assert r.status == 200, await r.text()
    data = (await r.json())["data"]
    assert [d["test"] for d in data] == [True, True]
    for d in data:
        v1_schemas.TransactionalOut(**{k: v for k, v in d.items() if k != "index"})

    async def status(transactional_id: str, wanted: str) -> str | None:
        r = await client.get(f"{V1}/transactionals/{transactional_id}.json", headers=test)
        assert r.status == 200
        s: str = (await r.json())["status"]
        return s if s == wanted else None

    assert await eventually(lambda: status(data[0]["id"], "complained"), timeout_s=15) == "complained"
    assert await eventually(lambda: status(data[1]["id"], "sent"), timeout_s=15) == "sent"
    assert not any(r.endswith("@" + domain) for m in smtp_server.messages for r in m.rcpt_tos)
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE org_id = $1", org.id) == 0
    live = org.auth("read")
    assert (await client.get(f"{V1}/transactionals/{data[0]['id']}.json", headers=live)).status == 404
    # The test emails are listed for the test key only.
    r = await client.get(f"{V1}/transactionals.json", headers=test)
    assert {d["id"] for d in data} <= {t["id"] for t in (await r.json())["data"]}
    r = await client.get(f"{V1}/transactionals.json", headers=live)
    assert not {d["id"] for d in data} & {t["id"] for t in (await r.json())["data"]}


async def test_a_batch_idempotency_key_never_replays_across_modes(client: Any, org: Any) -> None:
    test = await _test_key_headers(client, org)
    b = await make_broadcast(client, org)
    body = {"items": [{"email": unique_email(), "variables": {"otp": "1"}}]}
    key = {"Idempotency-Key": f"mode-{uuid.uuid4().hex}"}
    r = await client.post(batch_path(org, b), headers={**org.auth("write"), **key}, json=body)
    assert r.status == 202, await r.text()
    r = await client.post(batch_path(org, b), headers={**test, **key}, json=body)
    assert r.status == 422, await r.text()
