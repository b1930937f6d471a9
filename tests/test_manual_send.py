"""`tidings send`: the manual trigger, through the same rules, marked `source: manual`."""

from __future__ import annotations

import orjson

from tests.helpers import make_broadcast, unique_email
from tidings.send import manual_send


async def test_manual_send_is_delivered_and_marked_manual(client, org, settings, worker, smtp_server, capsys) -> None:
    b = await make_broadcast(client, org)
    email = unique_email("manual")
    code = await manual_send(
        settings,
        org=str(org.id),
        broadcast=b["id"],
        email=email,
        phone=None,
        contact_id=None,
        contact_channel_id=None,
        name="Op",
        variables={"otp": "424242"},
        template_ids=None,
        wait=True,
    )
    assert code == 0
    out = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (rec,) = out["recipients"]
    assert rec["status"] == "sent" and rec["source"] == "manual"
    assert any(email in m.rcpt_tos for m in smtp_server.messages)
    r = await client.get(org.path(f"/broadcasts/{b['id']}/recipients"), headers=org.auth("read"))
    assert (await r.json())["data"][0]["source"] == "manual"


async def test_manual_send_refusal_prints_the_error(client, org, settings, capsys) -> None:
    b = await make_broadcast(client, org)
    code = await manual_send(
        settings,
        org=str(org.id),
        broadcast=b["id"],
        email=unique_email(),
        phone=None,
        contact_id=None,
        contact_channel_id=None,
        name=None,
        variables={},
        template_ids=None,
        wait=True,
    )
    assert code == 1
    out = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["error"]["code"] == "missing_variables"
