"""Outbound webhooks against the real stack: the routes, every event type with the contract's
payload, retries, a worker killed mid-delivery, SSRF refusals, bounded answers, secret rotation
and disabling. Every request the receiver gets is verified with the official
`standardwebhooks` library (tests/webhook_support.py)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.broadcasts import schemas
from api.broadcasts import webhook_schemas as ws
from shared import suppressions, webhook_urls
from shared.config import Settings
from tests.helpers import WHATSAPP_TEMPLATE, eventually, make_broadcast, unique_email, unique_phone
from tests.procs import WorkerProcess
from tests.test_bounce_server import bounce_server, deliver_report, report, sent_message  # noqa: F401
from tests.test_whatsapp_webhooks import payload as wa_payload
from tests.test_whatsapp_webhooks import post as wa_post
from tests.test_whatsapp_webhooks import status as wa_status
from tests.webhook_support import Endpoints, Receiver, answer, deliverer, hang_up, hold, receiver, redirect, slow


@pytest.fixture
async def rx() -> AsyncIterator[Receiver]:
    async with receiver() as r:
        yield r
    # Every request that arrived carried a signature the library accepts.
    assert r.unverified == [], [h.headers for h in r.unverified]


@pytest.fixture
async def hooks(client: TestClient[Any, Any], rx: Receiver) -> AsyncIterator[Endpoints]:
    e = Endpoints(client, rx)
    yield e
    await e.cleanup()


async def delivery_of(hooks: Endpoints, org: Any, endpoint_id: str, event_id: str) -> dict[str, Any]:
    for d in await hooks.deliveries(org, endpoint_id):
        if d["event_id"] == event_id:
            return d
    raise AssertionError(f"no delivery of {event_id}")


async def send_test(client: TestClient[Any, Any], org: Any, endpoint_id: str) -> str:
    r = await client.post(org.path(f"/webhooks/{endpoint_id}/test"), headers=org.auth("admin"))
    assert r.status == 202, await r.text()
    event_id: str = (await r.json())["event_id"]
    return event_id


# ---- routes -------------------------------------------------------------------------------


async def test_create_read_list_update_delete(client: TestClient[Any, Any], org: Any, hooks: Endpoints) -> None:
    made = await hooks.create(org, events=["message.sent", "message.bounced"], description="billing")
    msgspec.convert({k: v for k, v in made.items() if k != "name"}, ws.WebhookCreated)
    assert made["enabled"] is True and made["events"] == ["message.sent", "message.bounced"]
    assert made["secret"].startswith("whsec_") and len(base64.b64decode(made["secret"][6:])) >= 24

    r = await client.get(org.path(f"/webhooks/{made['id']}"), headers=org.auth("read"))
    assert r.status == 200
    one = await r.json()
    assert "secret" not in one and one["description"] == "billing"
    msgspec.convert(one, ws.WebhookOut)

    second = await hooks.create(org)
    assert second["events"] == []  # every type
    r = await client.get(org.path("/webhooks"), headers=org.auth("read"), params={"limit": "1"})
    page = await r.json()
    assert [w["id"] for w in page["data"]] == [second["id"]] and page["next_cursor"]
    assert all("secret" not in w for w in page["data"])
    r = await client.get(org.path("/webhooks"), headers=org.auth("read"), params={"cursor": page["next_cursor"]})
    rest = await r.json()
    assert [w["id"] for w in rest["data"]] == [made["id"]] and rest["next_cursor"] is None

    r = await client.patch(
        org.path(f"/webhooks/{made['id']}"),
        headers=org.auth("admin"),
        json={"events": [], "description": None, "enabled": False, "url": hooks.receiver.url("other")},
    )
    assert r.status == 200, await r.text()
    changed = await r.json()
    assert changed["events"] == [] and changed["description"] is None and changed["enabled"] is False
    assert changed["url"].endswith("/hook/other") and changed["updated_at"] >= one["updated_at"]

    r = await client.delete(org.path(f"/webhooks/{made['id']}"), headers=org.auth("admin"))
    assert r.status == 204
    r = await client.get(org.path(f"/webhooks/{made['id']}"), headers=org.auth("read"))
    assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_validation_scopes_and_tenancy(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, pool: asyncpg.Pool
) -> None:
    h = org.auth("admin")
    r = await client.post(org.path("/webhooks"), headers=h, json={"url": "https://a.example", "events": ["nope"]})
    assert r.status == 422
    err = (await r.json())["error"]
    assert err["code"] == "validation_error" and "events" in err["fields"]
    for bad in ("ftp://example.com/x", "https://user:pw@example.com/x", "not a url", "http:///x", "x" * 3000):
        r = await client.post(org.path("/webhooks"), headers=h, json={"url": bad})
        assert r.status == 422, bad
        err = (await r.json())["error"]
        assert err["code"] == "validation_error" and "url" in err["fields"], (bad, err)
    r = await client.post(org.path("/webhooks"), headers=h, json={"url": "https://a.example", "extra": 1})
    assert r.status == 422
    r = await client.post(org.path("/webhooks"), headers=org.auth("read", "write"), json={"url": "https://a.example"})
    assert r.status == 403

    made = await hooks.create(org)
    r = await client.patch(org.path(f"/webhooks/{made['id']}"), headers=h, json={"events": ["message.nope"]})
    assert r.status == 422 and "events" in (await r.json())["error"]["fields"]
    r = await client.patch(org.path(f"/webhooks/{made['id']}"), headers=h, json={"url": "gopher://x"})
    assert r.status == 422 and "url" in (await r.json())["error"]["fields"]
    r = await client.patch(org.path(f"/webhooks/{made['id']}"), headers=org.auth("read"), json={"enabled": False})
    assert r.status == 403
    r = await client.get(
        org.path(f"/webhooks/{made['id']}/deliveries"), headers=org.auth("read"), params={"status": "x"}
    )
    assert r.status == 422 and "status" in (await r.json())["error"]["fields"]

    # Another org's endpoint, and ids that name nothing, are 404 on every route.
    from shared import orgs

    other_id = await orgs.create_org(pool, "other org")
    other_key = await orgs.create_key(pool, other_id, ["admin", "read", "write"])
    oh = {"Authorization": f"Bearer {other_key}"}
    base = f"/orgs/{other_id}/webhooks"
    missing_delivery = uuid.uuid4()
    for endpoint_id in (made["id"], str(uuid.uuid4()), "not-a-uuid"):
        for method, path, body in (
            ("GET", f"{base}/{endpoint_id}", None),
            ("PATCH", f"{base}/{endpoint_id}", {"enabled": False}),
            ("DELETE", f"{base}/{endpoint_id}", None),
            ("POST", f"{base}/{endpoint_id}/rotate-secret", None),
            ("POST", f"{base}/{endpoint_id}/test", None),
            ("GET", f"{base}/{endpoint_id}/deliveries", None),
            ("POST", f"{base}/{endpoint_id}/deliveries/{missing_delivery}/retry", None),
        ):
            r = await client.request(method, path, headers=oh, json=body)
            assert r.status == 404, (method, path, r.status)
    await pool.execute("DELETE FROM orgs WHERE id = $1", other_id)
    r = await client.get(org.path(f"/webhooks/{made['id']}"), headers=org.auth("read"))
    assert r.status == 200 and (await r.json())["enabled"] is True


# ---- SSRF ---------------------------------------------------------------------------------


def test_refused_addresses() -> None:
    refused = {
        "127.0.0.1": "loopback",
        "10.1.2.3": "private",
        "192.168.0.1": "private",
        "172.16.0.1": "private",
        "169.254.169.254": "link-local",
        "224.0.0.1": "multicast",
        "0.0.0.0": "unspecified",
        "::1": "loopback",
        "fe80::1": "link-local",
        "fc00::1": "private",
        "::ffff:127.0.0.1": "loopback",
        "::ffff:10.0.0.1": "private",
        "100.64.0.1": "non-public",
        "240.0.0.1": "reserved",
    }
    for raw, kind in refused.items():
        assert webhook_urls.refused_kind(ipaddress.ip_address(raw)) == kind, raw
    for raw in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34", "8.8.8.8"):
        assert webhook_urls.refused_kind(ipaddress.ip_address(raw)) is None, raw


async def test_private_targets_are_refused_at_create_and_update(settings: Settings, org: Any) -> None:
    strict = settings.replace(webhook_allow_private_urls=False)
    from api.app import create_app

    async with TestClient(TestServer(create_app(strict))) as c:
        h = org.auth("admin")
        for url in (
            "http://127.0.0.1:8080/hook",
            "http://localhost/hook",
            "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://10.0.0.7/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://224.0.0.1/",
            "http://0.0.0.0/",
            "http://2130706433/",  # 127.0.0.1 as a number: resolved, then refused
            "https://no-such-host.invalid/hook",
        ):
            r = await c.post(org.path("/webhooks"), headers=h, json={"url": url})
            assert r.status == 422, (url, await r.text())
            err = (await r.json())["error"]
            assert err["code"] == "validation_error" and list(err["fields"]) == ["url"], (url, err)
        # A public address passes; changing it to a private one is refused the same way.
        r = await c.post(org.path("/webhooks"), headers=h, json={"url": "https://93.184.216.34/hook"})
        assert r.status == 201, await r.text()
        made = await r.json()
        r = await c.patch(org.path(f"/webhooks/{made['id']}"), headers=h, json={"url": "http://127.0.0.1/x"})
        assert r.status == 422 and list((await r.json())["error"]["fields"]) == ["url"]
        r = await c.delete(org.path(f"/webhooks/{made['id']}"), headers=h)
        assert r.status == 204


async def test_private_targets_are_refused_again_at_delivery(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings
) -> None:
    # Created while private URLs were allowed (or DNS said otherwise then); delivered by a
    # worker that refuses them: a failed attempt, and the receiver gets nothing.
    by_ip = await hooks.create(org, "by-ip")
    by_name = await hooks.create(org, "by-name", url=hooks.receiver.url("by-name", host="localhost"))
    events = {e["id"]: await send_test(client, org, e["id"]) for e in (by_ip, by_name)}
    async with deliverer(settings, webhook_allow_private_urls=False):

        async def all_failed() -> bool:
            for endpoint_id, event_id in events.items():
                d = await delivery_of(hooks, org, endpoint_id, event_id)
                if d["attempts"] < 1 or d["status"] != "pending" or not d["last_error"]:
                    return False
            return True

        await eventually(all_failed, timeout_s=10)
    for endpoint_id, event_id in events.items():
        d = await delivery_of(hooks, org, endpoint_id, event_id)
        assert d["last_error"].startswith("refused"), d
        assert d["last_response_status"] is None
    assert hooks.receiver.hits["by-ip"] == [] and hooks.receiver.hits["by-name"] == []


# ---- delivery -----------------------------------------------------------------------------


async def test_test_event_is_signed_and_shaped(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings
) -> None:
    # Subscribed to something else: the test event goes to it all the same, and only to it.
    made = await hooks.create(org, "t", events=["message.read"])
    bystander = await hooks.create(org, "bystander")
    event_id = await send_test(client, org, made["id"])
    assert event_id.startswith("evt_")
    async with deliverer(settings):
        (hit,) = await hooks.receiver.wait("t", 1)
        await eventually(lambda: delivery_of(hooks, org, made["id"], event_id))

        async def succeeded() -> dict[str, Any] | None:
            d = await delivery_of(hooks, org, made["id"], event_id)
            return d if d["status"] == "succeeded" else None

        d = await eventually(succeeded)
    assert hit.webhook_id == event_id and hit.headers["content-type"] == "application/json"
    assert abs(int(hit.headers["webhook-timestamp"]) - time.time()) < 60
    assert hit.payload["type"] == "webhook.test" and hit.payload["data"] == {"endpoint_id": made["id"]}
    dt.datetime.fromisoformat(hit.payload["timestamp"])
    assert len(hit.signatures) == 1 and hit.signatures[0].startswith("v1,")
    msgspec.convert(d, ws.DeliveryOut)
    assert d["attempts"] == 1 and d["last_response_status"] == 200 and d["last_error"] is None
    assert d["next_attempt_at"] is None and d["event_type"] == "webhook.test"
    assert hooks.receiver.hits["bystander"] == [] and await hooks.deliveries(org, bystander["id"]) == []


async def test_a_receiver_failing_twice_gets_the_third_attempt_with_the_same_id(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings
) -> None:
    made = await hooks.create(org, "flaky")
    hooks.receiver.plan("flaky", answer(500, b"boom"), answer(500, b"boom again"))
    retries_before = _sample("tidings_webhook_deliveries_total", {"outcome": "retry"})
    successes_before = _sample("tidings_webhook_deliveries_total", {"outcome": "succeeded"})
    event_id = await send_test(client, org, made["id"])
    async with deliverer(settings):
        hits = await hooks.receiver.wait("flaky", 3)
        await eventually(lambda: _status_is(hooks, org, made["id"], event_id, "succeeded"))
    # The worker's metrics saw it (this process's registry: the deliverer runs here).
    assert _sample("tidings_webhook_deliveries_total", {"outcome": "retry"}) >= retries_before + 2
    assert _sample("tidings_webhook_deliveries_total", {"outcome": "succeeded"}) >= successes_before + 1
    assert _sample("tidings_webhook_delivery_duration_seconds_count", {}) >= 3
    assert [h.webhook_id for h in hits] == [event_id] * 3
    assert len({h.body for h in hits}) == 1  # the same event, re-signed
    d = await delivery_of(hooks, org, made["id"], event_id)
    assert d["attempts"] == 3 and d["last_response_status"] == 200


def _sample(name: str, labels: dict[str, str]) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _status_is(hooks: Endpoints, org: Any, endpoint_id: str, event_id: str, status: str) -> bool:
    return (await delivery_of(hooks, org, endpoint_id, event_id))["status"] == status


async def test_retries_run_out_then_failed_and_the_retry_route_tries_once_more(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings
) -> None:
    made = await hooks.create(org, "down")
    hooks.receiver.plan("down", *[answer(503, b"x" * 5000)] * 4)
    event_id = await send_test(client, org, made["id"])
    async with deliverer(settings):
        await eventually(lambda: _status_is(hooks, org, made["id"], event_id, "failed"), timeout_s=10)
        d = await delivery_of(hooks, org, made["id"], event_id)
        # The session's schedule has three retries: four attempts, then failed.
        assert d["attempts"] == 4 and d["last_response_status"] == 503 and d["next_attempt_at"] is None
        assert d["last_error"].startswith("HTTP 503") and len(d["last_error"]) < 400
        assert [x["id"] for x in await hooks.deliveries(org, made["id"], status="failed")] == [d["id"]]
        assert await hooks.deliveries(org, made["id"], status="succeeded") == []

        r = await client.post(org.path(f"/webhooks/{made['id']}/deliveries/{d['id']}/retry"), headers=org.auth("admin"))
        assert r.status == 202, await r.text()
        assert (await r.json())["status"] == "pending"
        hits = await hooks.receiver.wait("down", 5)
        await eventually(lambda: _status_is(hooks, org, made["id"], event_id, "succeeded"))
    assert {h.webhook_id for h in hits} == {event_id}
    assert (await delivery_of(hooks, org, made["id"], event_id))["attempts"] == 5


async def test_redirects_are_not_followed(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings
) -> None:
    made = await hooks.create(org, "moved")
    hooks.receiver.plan("moved", redirect(f"http://127.0.0.1:{hooks.receiver.port}/elsewhere"))
    event_id = await send_test(client, org, made["id"])
    async with deliverer(settings, webhook_retry_schedule_s="60"):

        async def attempted() -> dict[str, Any] | None:
            d = await delivery_of(hooks, org, made["id"], event_id)
            return d if d["attempts"] == 1 and d["last_error"] else None

        d = await eventually(attempted)
    assert d["status"] == "pending" and d["last_response_status"] == 302
    assert "redirect" in d["last_error"] and d["next_attempt_at"] is not None


async def test_huge_and_slow_answers_are_bounded_and_delay_no_other_endpoint(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings
) -> None:
    huge_fail = await hooks.create(org, "huge-fail")
    huge_ok = await hooks.create(org, "huge-ok")
    sluggish = await hooks.create(org, "sluggish")
    closer = await hooks.create(org, "closer")
    quick = await hooks.create(org, "quick")
    five_mb = b"z" * (5 * 1024 * 1024)
    hooks.receiver.plan("huge-fail", answer(500, five_mb))
    hooks.receiver.plan("huge-ok", answer(200, five_mb))
    hooks.receiver.plan("sluggish", *[slow(30)] * 4)
    hooks.receiver.plan("closer", hang_up())
    events = {e["id"]: await send_test(client, org, e["id"]) for e in (huge_fail, huge_ok, sluggish, closer, quick)}
    started = time.monotonic()
    async with deliverer(settings, webhook_retry_schedule_s="60", webhook_timeout_s=1.0, webhook_lease_s=3.0):
        await hooks.receiver.wait("quick", 1)
        quick_after_s = time.monotonic() - started

        async def settled() -> bool:
            for endpoint_id, event_id in events.items():
                d = await delivery_of(hooks, org, endpoint_id, event_id)
                if d["status"] == "pending" and not d["last_error"]:
                    return False
            return True

        await eventually(settled, timeout_s=10)
    # The sluggish receiver's 30 s never held the others: the quick one was served at once.
    assert quick_after_s < 3.0
    d = await delivery_of(hooks, org, huge_fail["id"], events[huge_fail["id"]])
    assert d["last_response_status"] == 500 and len(d["last_error"]) < 400
    d = await delivery_of(hooks, org, huge_ok["id"], events[huge_ok["id"]])
    assert d["status"] == "succeeded"
    d = await delivery_of(hooks, org, sluggish["id"], events[sluggish["id"]])
    assert d["status"] == "pending" and d["last_error"] == "no answer within 1 s"
    d = await delivery_of(hooks, org, closer["id"], events[closer["id"]])
    assert d["status"] == "pending" and d["last_response_status"] is None and d["last_error"], d
    assert time.monotonic() - started < 10


async def test_rotation_signs_with_both_secrets_during_the_overlap(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings
) -> None:
    made = await hooks.create(org, "rot")
    r = await client.post(org.path(f"/webhooks/{made['id']}/rotate-secret"), headers=org.auth("admin"))
    assert r.status == 200
    new_secret = (await r.json())["secret"]
    assert new_secret.startswith("whsec_") and new_secret != made["secret"]
    hooks.receiver.trust("rot", made["secret"], new_secret)
    await send_test(client, org, made["id"])
    async with deliverer(settings):
        (hit,) = await hooks.receiver.wait("rot", 1)
    assert len(hit.signatures) == 2
    assert hit.verified_by == [made["secret"], new_secret]  # each one verifies on its own

    # Without an overlap the old secret stops signing at once.
    fresh = await hooks.create(org, "rot0")
    strict = settings.replace(webhook_secret_overlap_s=0.0)
    from api.app import create_app

    async with TestClient(TestServer(create_app(strict))) as c:
        r = await c.post(org.path(f"/webhooks/{fresh['id']}/rotate-secret"), headers=org.auth("admin"))
        newest = (await r.json())["secret"]
    hooks.receiver.trust("rot0", fresh["secret"], newest)
    await send_test(client, org, fresh["id"])
    async with deliverer(settings):
        (hit,) = await hooks.receiver.wait("rot0", 1)
    assert hit.verified_by == [newest] and len(hit.signatures) == 1


async def test_an_endpoint_failing_for_the_whole_window_is_disabled(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings, pool: asyncpg.Pool
) -> None:
    made = await hooks.create(org, "dead")
    hooks.receiver.plan("dead", answer(500), answer(500))
    first = await send_test(client, org, made["id"])
    async with deliverer(settings, webhook_retry_schedule_s="60"):
        await hooks.receiver.wait("dead", 1)
        await eventually(lambda: _attempted(hooks, org, made["id"], first))
        # Failing, but not for long yet: still enabled.
        r = await client.get(org.path(f"/webhooks/{made['id']}"), headers=org.auth("read"))
        assert (await r.json())["enabled"] is True
        # As if it had been failing for six days.
        await pool.execute(
            "UPDATE webhook_endpoints SET failing_since = now() - interval '6 days' WHERE id = $1",
            uuid.UUID(made["id"]),
        )
        second = await send_test(client, org, made["id"])
        await hooks.receiver.wait("dead", 2)
        await eventually(lambda: _attempted(hooks, org, made["id"], second))

        async def disabled() -> bool:
            r = await client.get(org.path(f"/webhooks/{made['id']}"), headers=org.auth("read"))
            return (await r.json())["enabled"] is False

        await eventually(disabled)
    reason = await pool.fetchval("SELECT disabled_reason FROM webhook_endpoints WHERE id = $1", uuid.UUID(made["id"]))
    assert "WEBHOOK_DISABLE_AFTER_S" in reason and "HTTP 500" in reason
    # Enabled again by its org: a fresh start.
    r = await client.patch(org.path(f"/webhooks/{made['id']}"), headers=org.auth("admin"), json={"enabled": True})
    assert (await r.json())["enabled"] is True
    row = await pool.fetchrow("SELECT * FROM webhook_endpoints WHERE id = $1", uuid.UUID(made["id"]))
    assert row["disabled_reason"] is None and row["failing_since"] is None


async def _attempted(hooks: Endpoints, org: Any, endpoint_id: str, event_id: str) -> bool:
    try:
        d = await delivery_of(hooks, org, endpoint_id, event_id)
    except AssertionError:
        return False
    return d["attempts"] >= 1 and d["last_response_status"] is not None


async def test_a_worker_killed_mid_delivery_loses_no_event(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings, tmp_path: Any
) -> None:
    made = await hooks.create(org, "held")
    never = asyncio.Event()
    hooks.receiver.plan("held", hold(never))
    event_id = await send_test(client, org, made["id"])
    # A real `tidings worker` (the session's settings: a 2 s timeout, a 4 s lease).
    proc = WorkerProcess(settings.replace(webhook_max_in_flight=4), tmp_path / "worker.log")
    await proc.start()
    try:
        (first,) = await hooks.receiver.wait("held", 1, timeout_s=30)
    finally:
        await proc.kill()  # SIGKILL while the receiver holds the request
    # Once its lease has run out, another worker posts the same delivery again.
    async with deliverer(settings):
        hits = await hooks.receiver.wait("held", 2)
        await eventually(lambda: _status_is(hooks, org, made["id"], event_id, "succeeded"))
    assert [h.webhook_id for h in hits] == [event_id, event_id] and first.body == hits[1].body
    assert (await delivery_of(hooks, org, made["id"], event_id))["attempts"] == 2


# ---- every event type ---------------------------------------------------------------------


def _by_type(hits: list[Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for h in hits:
        out.setdefault(h.payload["type"], []).append(h.payload)
    return out


async def test_every_event_type_fires_with_the_contracts_payload(
    client: TestClient[Any, Any],
    org: Any,
    hooks: Endpoints,
    settings: Settings,
    pool: asyncpg.Pool,
    worker: Any,
    bounce_server: Any,  # noqa: F811
) -> None:
    made = await hooks.create(org, "all")
    rx = hooks.receiver

    # WhatsApp: sent by the worker, then delivered and read in one status batch; another
    # one failed by Meta after it was sent.
    b = await make_broadcast(client, org, templates=[WHATSAPP_TEMPLATE])
    wa: list[dict[str, Any]] = []
    for _ in range(2):
        r = await client.post(
            org.path(f"/broadcasts/{b['id']}/send"),
            headers=org.auth("write"),
            json={"phone": unique_phone(), "variables": {"otp": "4242"}},
        )
        assert r.status in (200, 201), await r.text()
        (rec,) = (await r.json())["recipients"]
        assert rec["status"] == "sent", rec
        wa.append(rec)
    now = int(time.time())
    await wa_post(
        client,
        settings,
        wa_payload(
            wa_status(wa[0]["external_message_id"], "delivered", now),
            wa_status(wa[0]["external_message_id"], "read", now + 1),
            wa_status(
                wa[1]["external_message_id"],
                "failed",
                now,
                errors=[{"code": 131026, "title": "Message undeliverable"}],
            ),
        ),
    )

    # Email through /api/v1: a double opt-in transactional, sent, then its link followed.
    to = unique_email("optin")
    r = await client.post(
        "/api/v1/transactionals.json",
        headers=org.auth("write"),
        json={"to": to, "subject": "Confirm", "body": "<p>{{ confirmation_url }}</p>", "double_opt_in": True},
    )
    assert r.status in (200, 201), await r.text()
    tx = await r.json()
    await eventually(
        lambda: pool.fetchval("SELECT status = 'sent' FROM messages WHERE id = $1", uuid.UUID(tx["id"])), timeout_s=10
    )
    r = await client.get(tx["confirmation_url"].removeprefix(settings.public_base))
    assert r.status == 200
    # A transactional to a suppressed address: rejected at once.
    blocked = unique_email("suppressed")
    await suppressions.add(pool, org.id, blocked, "manual")
    r = await client.post(
        "/api/v1/transactionals.json", headers=org.auth("write"), json={"to": blocked, "subject": "S", "body": "B"}
    )
    rejected_tx = await r.json()
    assert rejected_tx["status"] == "rejected", rejected_tx

    # Bounce and complaint reports over real SMTP to the bounce server.
    bounced = await sent_message(pool, org.id, "bounce")
    await deliver_report(bounce_server, report("postfix_hard.eml", bounced), bounced.verp)
    complained = await sent_message(pool, org.id, "complaint")
    await deliver_report(bounce_server, report("arf_complaint.eml", complained), complained.verp)

    # A contact unsubscribed through the API.
    r = await client.post(
        org.path("/contacts"), headers=org.auth("admin"), json={"email": unique_email("c"), "phone": unique_phone()}
    )
    contact = await r.json()
    r = await client.patch(
        org.path(f"/contacts/{contact['id']}"), headers=org.auth("admin"), json={"status": "unsubscribed"}
    )
    assert r.status == 200

    await send_test(client, org, made["id"])

    wanted = {
        "message.sent": 3,  # two WhatsApp, one transactional
        "message.delivered": 1,
        "message.read": 1,
        "message.failed": 1,
        "message.bounced": 1,
        "message.complained": 1,
        "message.rejected": 1,
        "contact.unsubscribed": 2,  # the API's, the complaint's
        "subscriber.confirmed": 1,
        "webhook.test": 1,
    }
    async with deliverer(settings):

        def all_arrived() -> bool:
            got = _by_type(rx.hits["all"])
            return all(len(got.get(t, [])) >= n for t, n in wanted.items())

        await eventually(all_arrived, timeout_s=20)
    got = _by_type(rx.hits["all"])
    assert {t: len(v) for t, v in got.items()} == wanted
    assert len({h.webhook_id for h in rx.hits["all"]}) == len(rx.hits["all"])

    # message.*: the message object as its status_url answers it, without `events`, with the
    # event's own status (WhatsApp's delivered and read came in one batch: each has its own).
    for event_type in ("message.sent", "message.delivered", "message.read", "message.failed"):
        for p in got[event_type]:
            data = p["data"]
            assert data["status"] == event_type.removeprefix("message.")
            if data["channel"] == "whatsapp":
                r = await client.get(org.path(f"/messages/{data['id']}"), headers=org.auth("read"))
                current = await r.json()
                del current["events"]
                assert set(data) == set(current)
                if data["status"] == current["status"]:  # the message's latest event: as it is now
                    same = {k for k in current if k != "updated_at"}
                    assert {k: data[k] for k in same} == {k: current[k] for k in same}
                msgspec.convert(data, schemas.MessageOut)
    delivered, read = got["message.delivered"][0]["data"], got["message.read"][0]["data"]
    assert delivered["id"] == read["id"] == wa[0]["id"]
    assert dt.datetime.fromisoformat(delivered["updated_at"]) == dt.datetime.fromtimestamp(now, dt.UTC)
    assert dt.datetime.fromisoformat(read["updated_at"]) == dt.datetime.fromtimestamp(now + 1, dt.UTC)
    assert got["message.failed"][0]["data"]["id"] == wa[1]["id"]
    tx_sent = [p["data"] for p in got["message.sent"] if p["data"]["channel"] == "email"]
    assert [d["id"] for d in tx_sent] == [tx["id"]]
    assert got["message.rejected"][0]["data"]["id"] == rejected_tx["id"]
    assert got["message.rejected"][0]["data"]["channel"] == "email"

    bounce = got["message.bounced"][0]["data"]
    assert bounce["id"] == str(bounced.id) and bounce["status"] == "bounced"
    assert bounce["bounce"]["type"] == "hard" and bounce["bounce"]["diagnostic"]
    assert got["message.complained"][0]["data"]["id"] == str(complained.id)
    assert "bounce" not in got["message.complained"][0]["data"]

    unsubscribed = {p["data"]["contact_id"]: p["data"] for p in got["contact.unsubscribed"]}
    assert unsubscribed[contact["id"]] == {
        "contact_id": contact["id"],
        "email": contact["email"],
        "phone": contact["phone"],
    }
    assert unsubscribed[str(complained.contact_id)]["contact_id"] == str(complained.contact_id)
    confirmed = got["subscriber.confirmed"][0]["data"]
    assert confirmed["email"] == to and set(confirmed) == {"contact_id", "email"}
    assert got["webhook.test"][0]["data"] == {"endpoint_id": made["id"]}
    for p in rx.hits["all"]:
        assert set(p.payload) == {"type", "timestamp", "data"}
        orjson.loads(p.body)


async def test_subscriptions_filter_and_disabled_endpoints_get_nothing(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, pool: asyncpg.Pool
) -> None:
    only_confirmed = await hooks.create(org, events=["subscriber.confirmed"])
    off = await hooks.create(org)
    r = await client.patch(org.path(f"/webhooks/{off['id']}"), headers=org.auth("admin"), json={"enabled": False})
    assert r.status == 200
    r = await client.post(org.path("/contacts"), headers=org.auth("admin"), json={"email": unique_email()})
    contact = await r.json()
    r = await client.patch(
        org.path(f"/contacts/{contact['id']}"), headers=org.auth("admin"), json={"status": "unsubscribed"}
    )
    assert r.status == 200
    assert await hooks.deliveries(org, only_confirmed["id"]) == []
    assert await hooks.deliveries(org, off["id"]) == []
    assert await pool.fetchval("SELECT count(*) FROM webhook_events WHERE org_id = $1", org.id) == 0


async def test_redaction_erases_the_addresses_events_quote(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, pool: asyncpg.Pool
) -> None:
    from tests.transactionals_helpers import make_subscriber

    await hooks.create(org)  # no deliverer runs: the events wait in the outbox
    to = unique_email("gdpr")
    sub = await make_subscriber(client, org, email=to, first_name="Greta")
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    r = await client.post(
        "/api/v1/transactionals.json",
        headers=org.auth("write"),
        json={"to": to, "subject": "Later", "body": "b", "queue_at": later},
    )
    scheduled = await r.json()
    r = await client.patch(
        org.path(f"/contacts/{sub['id']}"), headers=org.auth("admin"), json={"status": "unsubscribed"}
    )
    assert r.status == 200

    async def quoting() -> list[str]:
        rows = await pool.fetch("SELECT type, data::text AS data FROM webhook_events WHERE org_id = $1", org.id)
        return sorted(r["type"] for r in rows if to.lower() in r["data"].lower())

    assert await quoting() == ["contact.unsubscribed"]
    r = await client.post(f"/api/v1/subscribers/{sub['id']}/redact.json", headers=org.auth("write"))
    assert r.status == 200
    types = {r["type"] for r in await pool.fetch("SELECT type FROM webhook_events WHERE org_id = $1", org.id)}
    # Redaction rejected the scheduled message: its event too was written, and erased.
    assert types == {"contact.unsubscribed", "message.rejected"}
    assert await quoting() == []
    rejected = await pool.fetchval(
        "SELECT data FROM webhook_events WHERE org_id = $1 AND type = 'message.rejected'", org.id
    )
    assert rejected["id"] == scheduled["id"] and rejected["to_address"] is None


async def test_a_stopping_worker_gives_back_what_it_did_not_finish(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings, pool: asyncpg.Pool
) -> None:
    made = await hooks.create(org, "slowpoke")
    release = asyncio.Event()
    hooks.receiver.plan("slowpoke", hold(release))
    event_id = await send_test(client, org, made["id"])
    async with deliverer(settings, webhook_timeout_s=30.0, webhook_lease_s=60.0):
        await hooks.receiver.wait("slowpoke", 1)
    # Stopped with the request unanswered (a 1 s drain): given back, due at once, not in 60 s.
    row = await pool.fetchrow(
        "SELECT status, attempts, lease_expires_at, next_attempt_at <= now() AS due FROM webhook_deliveries "
        "WHERE event_id = $1",
        event_id,
    )
    assert (row["status"], row["attempts"], row["lease_expires_at"], row["due"]) == ("pending", 1, None, True)
    release.set()
    async with deliverer(settings):
        hits = await hooks.receiver.wait("slowpoke", 2)
        await eventually(lambda: _status_is(hooks, org, made["id"], event_id, "succeeded"))
    assert {h.webhook_id for h in hits} == {event_id}


async def test_one_click_unsubscribe_fires_contact_unsubscribed(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, pool: asyncpg.Pool
) -> None:
    from shared import unsubscribes

    made = await hooks.create(org, events=["contact.unsubscribed"])
    email = unique_email("oneclick")
    r = await client.post(org.path("/contacts"), headers=org.auth("admin"), json={"email": email})
    contact = await r.json()
    token = unsubscribes.new_token()
    await unsubscribes.create_many(pool, [(org.id, uuid.UUID(contact["id"]), token, email)])
    r = await client.post(f"/unsubscribe/{token}", data="List-Unsubscribe=One-Click")
    assert r.status == 200, await r.text()
    # Twice: the contact was already unsubscribed, nothing more happens.
    r = await client.post(f"/unsubscribe/{token}", data="List-Unsubscribe=One-Click")
    (d,) = await hooks.deliveries(org, made["id"])
    assert d["event_type"] == "contact.unsubscribed" and d["status"] == "pending"
    data = await pool.fetchval("SELECT data FROM webhook_events WHERE id = $1", d["event_id"])
    assert data == {"contact_id": contact["id"], "email": email, "phone": None}


async def test_old_events_and_deliveries_are_pruned(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings, pool: asyncpg.Pool
) -> None:
    made = await hooks.create(org, "old")
    old_event = await send_test(client, org, made["id"])
    new_event = await send_test(client, org, made["id"])
    await pool.execute("UPDATE webhook_events SET created_at = now() - interval '31 days' WHERE id = $1", old_event)
    await pool.execute(
        "UPDATE webhook_deliveries SET created_at = now() - interval '31 days' WHERE event_id = $1", old_event
    )
    # The worker's task prunes as it starts, and every 15 s after.
    async with deliverer(settings):
        await eventually(
            lambda: pool.fetchval("SELECT count(*) = 0 FROM webhook_deliveries WHERE event_id = $1", old_event)
        )
        await hooks.receiver.wait("old", 1)
    assert await pool.fetchval("SELECT count(*) FROM webhook_events WHERE id = $1", old_event) == 0
    assert [d["event_id"] for d in await hooks.deliveries(org, made["id"])] == [new_event]


def test_settings_are_checked_at_start() -> None:
    assert Settings().webhook_retry_delays_s == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert Settings.from_env({"WEBHOOK_RETRY_SCHEDULE_S": "1, 2.5"}).webhook_retry_delays_s == (1, 2.5)
    for env, named in (
        ({"WEBHOOK_RETRY_SCHEDULE_S": "5,soon"}, "WEBHOOK_RETRY_SCHEDULE_S"),
        ({"WEBHOOK_RETRY_SCHEDULE_S": "5,-1"}, "WEBHOOK_RETRY_SCHEDULE_S"),
        ({"WEBHOOK_TIMEOUT_S": "0"}, "WEBHOOK_TIMEOUT_S"),
        ({"WEBHOOK_LEASE_S": "10", "WEBHOOK_TIMEOUT_S": "15"}, "WEBHOOK_LEASE_S"),
        ({"WEBHOOK_MAX_IN_FLIGHT": "-1"}, "WEBHOOK_MAX_IN_FLIGHT"),
        ({"WEBHOOK_ENDPOINT_CONCURRENCY": "0"}, "WEBHOOK_ENDPOINT_CONCURRENCY"),
        ({"WEBHOOK_SECRET_OVERLAP_S": "-5"}, "WEBHOOK_SECRET_OVERLAP_S"),
    ):
        with pytest.raises(ValueError, match=named):
            Settings.from_env(env)


async def test_a_test_keys_messages_fire_their_events_marked_test(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, settings: Settings, worker: Any
) -> None:
    """Test mode runs records, statuses, events and webhooks: a test key's bounce is a
    message.bounced like any other, its data saying `test: true`."""
    made = await hooks.create(org, "test-mode", events=["message.sent", "message.bounced"])
    r = await client.post(
        org.path("/keys"), headers=org.auth("admin"), json={"scopes": ["read", "write"], "mode": "test"}
    )
    assert r.status == 201, await r.text()
    test_key = {"Authorization": f"Bearer {(await r.json())['key']}"}
    b = await make_broadcast(client, org)
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=test_key,
        json={"email": f"bounce@t{uuid.uuid4().hex[:12]}.example.com", "variables": {"otp": "1"}},
    )
    assert r.status == 200, await r.text()
    (record,) = (await r.json())["recipients"]
    assert record["test"] is True and record["status"] == "bounced", record

    async with deliverer(settings):
        hits = await hooks.receiver.wait(made["name"], 2, timeout_s=20)
    got = _by_type(hits)
    assert sorted(got) == ["message.bounced", "message.sent"]
    for event_type in ("message.sent", "message.bounced"):
        (payload,) = got[event_type]
        assert payload["data"]["id"] == record["id"] and payload["data"]["test"] is True
    assert got["message.bounced"][0]["data"]["status"] == "bounced"
    assert got["message.bounced"][0]["data"]["bounce"]["type"] == "hard"


async def test_a_cancel_fires_no_event_and_breaks_nothing(
    client: TestClient[Any, Any], org: Any, hooks: Endpoints, pool: asyncpg.Pool
) -> None:
    """`canceled` has no event type: a cancel (which logs a message_events row) writes no
    event, even for an endpoint subscribed to everything, and still answers 200."""
    await hooks.create(org)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    r = await client.post(
        "/api/v1/transactionals.json",
        headers=org.auth("write"),
        json={"to": unique_email("later"), "subject": "S", "body": "B", "queue_at": later.isoformat()},
    )
    assert r.status in (200, 201), await r.text()
    message = await r.json()
    assert message["status"] == "scheduled"
    r = await client.post(org.path(f"/messages/{message['id']}/cancel"), headers=org.auth("write"))
    assert r.status == 200, await r.text()
    assert (await r.json())["status"] == "canceled"
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM webhook_events WHERE org_id = $1 AND subject_id = $2",
            org.id,
            uuid.UUID(message["id"]),
        )
        == 0
    )
