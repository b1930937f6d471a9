"""Broadcast lifecycle: create, list, read, update, templates, readiness, activate/pause/resume."""

from __future__ import annotations

import msgspec

from api.broadcasts import schemas
from tests.helpers import EMAIL_TEMPLATE, WHATSAPP_TEMPLATE, make_broadcast, unique_email


async def test_create_is_draft_and_not_ready(client, org) -> None:
    r = await client.post(
        org.path("/broadcasts"),
        headers=org.auth("admin"),
        json={"name": "Receipt", "type": "transactional", "variables": [{"name": "order_id"}]},
    )
    assert r.status == 201
    b = await r.json()
    msgspec.convert(b, schemas.BroadcastOut)
    assert b["status"] == "draft" and b["activated_at"] is None
    assert b["variables"] == [{"name": "order_id", "default": None}]
    assert b["readiness"] == {"ready": False, "missing": ["at least one complete template"]}
    assert b["summary"]["messages_sent"] == 0


async def test_type_is_fixed_forever(client, org) -> None:
    b = await make_broadcast(client, org, activate=False)
    r = await client.patch(org.path(f"/broadcasts/{b['id']}"), headers=org.auth("admin"), json={"type": "marketing"})
    assert r.status == 422
    assert (await r.json())["error"]["code"] == "type_immutable"
    r = await client.get(org.path(f"/broadcasts/{b['id']}"), headers=org.auth("read"))
    assert (await r.json())["type"] == "transactional"


async def test_patch_name_and_variables(client, org) -> None:
    b = await make_broadcast(client, org, activate=False)
    r = await client.patch(
        org.path(f"/broadcasts/{b['id']}"),
        headers=org.auth("admin"),
        json={"name": "OTP v2", "variables": [{"name": "otp", "default": "000000"}]},
    )
    assert r.status == 200
    body = await r.json()
    assert body["name"] == "OTP v2" and body["variables"] == [{"name": "otp", "default": "000000"}]


async def test_unknown_fields_are_refused(client, org) -> None:
    r = await client.post(
        org.path("/broadcasts"), headers=org.auth("admin"), json={"name": "x", "type": "transactional", "nmae": "typo"}
    )
    assert r.status == 422
    err = (await r.json())["error"]
    assert err["code"] == "validation_error" and "nmae" in err["fields"]


async def test_readiness_lists_incomplete_templates_and_undeclared_variables(client, org) -> None:
    b = await make_broadcast(client, org, activate=False, templates=[], variables=[])
    h = org.auth("admin")
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/templates"), headers=h, json={**EMAIL_TEMPLATE, "subject": ""}
    )
    assert r.status == 201
    t = await r.json()
    r = await client.post(org.path(f"/broadcasts/{b['id']}/activate"), headers=h)
    assert r.status == 422
    err = (await r.json())["error"]
    assert err["code"] == "not_ready"
    assert "at least one complete template" in err["missing"]
    assert f"email template {t['id']}: subject is empty" in err["missing"]
    assert f"variable otp used in template {t['id']} is not declared" in err["missing"]

    r = await client.patch(
        org.path(f"/broadcasts/{b['id']}/templates/{t['id']}"), headers=h, json={"subject": "Code {{ otp }}"}
    )
    assert r.status == 200
    r = await client.patch(org.path(f"/broadcasts/{b['id']}"), headers=h, json={"variables": [{"name": "otp"}]})
    r = await client.get(org.path(f"/broadcasts/{b['id']}"), headers=org.auth("read"))
    assert (await r.json())["readiness"] == {"ready": True, "missing": []}
    r = await client.post(org.path(f"/broadcasts/{b['id']}/activate"), headers=h)
    assert r.status == 200
    body = await r.json()
    assert body["status"] == "active" and body["activated_at"]
    assert body["summary"]["active_since"] == body["activated_at"]


async def test_pause_keeps_configuration_and_resume_restores(client, org) -> None:
    b = await make_broadcast(client, org, templates=[EMAIL_TEMPLATE, WHATSAPP_TEMPLATE])
    h = org.auth("admin")
    r = await client.post(org.path(f"/broadcasts/{b['id']}/pause"), headers=h)
    assert r.status == 200
    paused = await r.json()
    assert paused["status"] == "paused"
    assert paused["templates"] == b["templates"] and paused["variables"] == b["variables"]
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": unique_email(), "variables": {"otp": "1"}},
    )
    assert r.status == 409 and (await r.json())["error"]["code"] == "broadcast_not_active"
    r = await client.post(org.path(f"/broadcasts/{b['id']}/resume"), headers=h)
    assert r.status == 200
    resumed = await r.json()
    assert resumed["status"] == "active" and resumed["templates"] == b["templates"]


async def test_templates_edit_and_delete(client, org) -> None:
    b = await make_broadcast(client, org, activate=False, templates=[EMAIL_TEMPLATE, WHATSAPP_TEMPLATE])
    h = org.auth("admin")
    email_t, wa_t = b["templates"]
    assert email_t["channel"] == "email" and wa_t["channel"] == "whatsapp"
    assert wa_t["body_parameters"] == ["{{ otp }}"]
    r = await client.patch(
        org.path(f"/broadcasts/{b['id']}/templates/{wa_t['id']}"),
        headers=h,
        json={"subject": "whatsapp templates have no subject"},
    )
    assert r.status == 422
    r = await client.delete(org.path(f"/broadcasts/{b['id']}/templates/{wa_t['id']}"), headers=h)
    assert r.status == 204
    r = await client.get(org.path(f"/broadcasts/{b['id']}"), headers=org.auth("read"))
    assert [t["id"] for t in (await r.json())["templates"]] == [email_t["id"]]
    r = await client.delete(org.path(f"/broadcasts/{b['id']}/templates/{wa_t['id']}"), headers=h)
    assert r.status == 404


async def test_template_validation(client, org) -> None:
    b = await make_broadcast(client, org, activate=False, templates=[])
    h = org.auth("admin")
    path = org.path(f"/broadcasts/{b['id']}/templates")
    r = await client.post(path, headers=h, json={**EMAIL_TEMPLATE, "subject": "Hi\r\nBcc: victim@example.com"})
    assert r.status == 422 and "subject" in (await r.json())["error"]["fields"]
    r = await client.post(path, headers=h, json={**EMAIL_TEMPLATE, "html_body": "{% if %}"})
    assert r.status == 422 and "html_body" in (await r.json())["error"]["fields"]
    r = await client.post(path, headers=h, json={"channel": "sms", "body": "x"})
    assert r.status == 422
    r = await client.post(path, headers=h, json={**WHATSAPP_TEMPLATE, "category": "promo"})
    assert r.status == 422 and "category" in (await r.json())["error"]["fields"]


async def test_list_is_cursor_paginated_newest_first(client, org) -> None:
    ids = []
    for i in range(5):
        r = await client.post(
            org.path("/broadcasts"), headers=org.auth("admin"), json={"name": f"b{i}", "type": "marketing"}
        )
        ids.append((await r.json())["id"])
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        r = await client.get(org.path("/broadcasts"), headers=org.auth("read"), params=params)
        assert r.status == 200
        page = await r.json()
        msgspec.convert(page, schemas.BroadcastList)
        seen += [b["id"] for b in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    r = await client.get(org.path("/broadcasts"), headers=org.auth("read"), params={"cursor": "garbage!"})
    assert r.status == 422


async def test_openapi_describes_every_route(client) -> None:
    from api.routing import ROUTES

    r = await client.get("/openapi.json")
    assert r.status == 200
    doc = await r.json()
    assert doc["openapi"].startswith("3.1")
    for spec in ROUTES:
        op = doc["paths"][spec.path][spec.method.lower()]
        if spec.body is not None:
            assert "requestBody" in op, spec.path
        assert str(spec.status) in op["responses"]
    send = doc["paths"]["/orgs/{org_id}/broadcasts/{broadcast_id}/send"]["post"]
    assert send["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("SendRequest")
