"""Mail a receiver would not frown at: a preheader hidden without low-contrast colour, exactly
one Reply-To mailbox, a working unsubscribe URL (with RFC 8058 headers) on the Broadcasts
API, and a warning when PUBLIC_BASE_URL is not https. Real api, worker and SMTP server."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from shared import addresses, errors
from shared.config import Settings
from tests.helpers import EMAIL_TEMPLATE, make_broadcast, unique_email
from tests.transactionals_helpers import PUBLIC_BASE, path_of
from worker.render import render_email

ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}


def _declarations(style: str) -> dict[str, str]:
    out = {}
    for part in style.split(";"):
        if part.strip():
            name, _, value = part.partition(":")
            out[name.strip().lower()] = value.strip().lower()
    return out


# -- the preheader -----------------------------------------------------------------------


def test_the_preheader_is_hidden_without_colour_or_tiny_text() -> None:
    """SpamAssassin's HTML_FONT_LOW_CONTRAST scores text coloured like its background (+0.7 on
    every email with a preheader when it was white); a 1px font counts as hidden text too."""
    body = {**EMAIL_TEMPLATE, "preheader": "Code {{ otp }}"}
    html = render_email(uuid.uuid4(), body, {"otp": "123456"}, to="a@b.test", fallback_domain="t.test").html
    assert html is not None
    (style,) = re.findall(r'<div style="([^"]*)">Code 123456</div>', html)
    declared = _declarations(style)
    assert not any("color" in name for name in declared), style  # color, background-color, ...
    assert "font-size" not in declared and "line-height" not in declared, style
    assert declared["display"] == "none" and declared["mso-hide"] == "all"
    assert declared["max-height"] in ("0", "0px") and declared["overflow"] == "hidden" and declared["opacity"] == "0"
    assert "color" not in html.lower()  # nothing else in this template sets a colour either


# -- Reply-To: exactly one mailbox --------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("help@acme.test", ("", "help@acme.test")),
        ("Help Desk <help@Acme.TEST>", ("Help Desk", "help@acme.test")),
        ('"Zoë, support" <z@acme.test>', ("Zoë, support", "z@acme.test")),
        ("Acme Inc. <a@acme.test>", ("Acme Inc.", "a@acme.test")),
        ("<a@acme.test>", ("", "a@acme.test")),
    ],
)
def test_one_mailbox_is_read_with_its_name(raw: str, expected: tuple[str, str]) -> None:
    assert addresses.single_mailbox(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "a@acme.test, b@evil.test",
        "a@acme.test b@evil.test",
        "A <a@acme.test>, b@evil.test",
        'a@acme.test, "B" <b@evil.test>',
        "A, B <a@acme.test>",
        "A <a@acme.test> <b@evil.test>",
        '"a" "b" <a@acme.test>',
        "team: a@acme.test, b@evil.test;",
        "not an address",
        "",
    ],
)
def test_anything_but_one_mailbox_is_refused(raw: str) -> None:
    with pytest.raises(addresses.InvalidAddress):
        addresses.single_mailbox(raw)


def test_a_reply_to_rendering_to_two_mailboxes_fails_the_render() -> None:
    body = {**EMAIL_TEMPLATE, "reply_to": "{{ support }}"}
    with pytest.raises(errors.ValidationFailed, match=r"reply_to rendered to .* not exactly one mailbox"):
        render_email(uuid.uuid4(), body, {"support": "a@acme.test, b@evil.test"}, to="x@y.test", fallback_domain="t")


async def test_a_send_whose_reply_to_renders_two_mailboxes_fails_and_sends_nothing(
    client: Any, org: Any, worker: Any, smtp_server: Any
) -> None:
    template = {**EMAIL_TEMPLATE, "reply_to": "{{ support }}"}
    b = await make_broadcast(
        client, org, templates=[template], variables=[{"name": "otp"}, {"name": "support", "default": None}]
    )
    path = org.path(f"/broadcasts/{b['id']}/send")

    two, one = unique_email("two"), unique_email("one")
    r = await client.post(
        path, headers=org.auth("write"), json={"email": two, "variables": {"otp": "1", "support": "a@x.test, b@y.test"}}
    )
    assert r.status == 200, await r.text()
    (rec,) = (await r.json())["recipients"]
    assert rec["status"] == "failed" and "not exactly one mailbox" in rec["error"], rec
    assert "reply_to" in rec["error"]

    r = await client.post(
        path,
        headers=org.auth("write"),
        json={"email": one, "variables": {"otp": "2", "support": "Help Desk <help@tidings.test>"}},
    )
    assert (await r.json())["recipients"][0]["status"] == "sent"
    (mail,) = await smtp_server.wait_for(1, rcpt=one)
    assert mail.header("Reply-To") == "Help Desk <help@tidings.test>"
    assert not [m for m in smtp_server.messages if two in m.rcpt_tos]


async def test_a_literal_reply_to_is_checked_by_the_same_rule_when_saved(client: Any, org: Any) -> None:
    b = await make_broadcast(client, org, activate=False)
    path = org.path(f"/broadcasts/{b['id']}/templates")
    headers = org.auth("admin")
    r = await client.post(path, headers=headers, json={**EMAIL_TEMPLATE, "reply_to": "Help <help@tidings.test>"})
    assert r.status == 201, await r.text()
    r = await client.post(path, headers=headers, json={**EMAIL_TEMPLATE, "reply_to": "a@tidings.test, b@evil.test"})
    assert r.status == 422, await r.text()
    assert "reply_to" in (await r.json())["error"]["fields"]


# -- Broadcasts API: {{ unsubscribe_url }} and RFC 8058 -----------------------------------


async def test_broadcast_unsubscribe_url_one_click_and_the_next_trigger(
    client: Any, org: Any, worker: Any, smtp_server: Any
) -> None:
    html = '<p>Code {{ otp }}. <a href="{{ unsubscribe_url }}">Unsubscribe</a> [{{ unsubscribe_url }}]</p>'
    b = await make_broadcast(client, org, templates=[{**EMAIL_TEMPLATE, "html_body": html}])
    path = org.path(f"/broadcasts/{b['id']}/send")
    to = unique_email("bcast-unsub")
    # A caller's own value never stands in for the link tidings makes.
    r = await client.post(
        path,
        headers=org.auth("write"),
        json={"email": to, "variables": {"otp": "111111", "unsubscribe_url": "https://evil.test/x"}},
    )
    assert r.status == 200, await r.text()
    (rec,) = (await r.json())["recipients"]
    assert rec["status"] == "sent", rec

    (mail,) = await smtp_server.wait_for(1, rcpt=to)
    url = mail.header("List-Unsubscribe").strip().removeprefix("<").removesuffix(">")
    assert url.startswith(f"{PUBLIC_BASE}/unsubscribe/") and len(url.rsplit("/", 1)[1]) >= 22
    assert mail.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert url in mail.links() and f"[{url}]" in mail.html
    assert "evil.test" not in mail.raw.decode()

    # RFC 8058 one-click: the mail client POSTs the body below to the URL, nothing else.
    r = await client.post(path_of(url), data="List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert r.status == 200, await r.text()
    r = await client.get(org.path(f"/contacts/{rec['contact_id']}"), headers=org.auth())
    assert (await r.json())["status"] == "unsubscribed"

    # The next trigger to them is refused, as the Broadcasts API refuses unsubscribed contacts.
    for recipient in ({"email": to}, {"contact_id": rec["contact_id"]}):
        r = await client.post(path, headers=org.auth("write"), json={**recipient, "variables": {"otp": "222222"}})
        assert r.status == 422, await r.text()
        assert (await r.json())["error"]["code"] == "recipient_unsubscribed"
    assert len([m for m in smtp_server.messages if to in m.rcpt_tos]) == 1


async def test_a_template_without_the_variable_gets_no_link_and_no_headers(
    client: Any, org: Any, pool: Any, worker: Any, smtp_server: Any
) -> None:
    b = await make_broadcast(client, org)  # EMAIL_TEMPLATE does not use {{ unsubscribe_url }}
    to = unique_email("bcast-nolink")
    r = await client.post(
        org.path(f"/broadcasts/{b['id']}/send"),
        headers=org.auth("write"),
        json={"email": to, "variables": {"otp": "1", "unsubscribe_url": "https://evil.test/x"}},
    )
    assert (await r.json())["recipients"][0]["status"] == "sent"
    (mail,) = await smtp_server.wait_for(1, rcpt=to)
    assert mail.header("List-Unsubscribe") is None and mail.header("List-Unsubscribe-Post") is None
    assert not await pool.fetchval("SELECT count(*) FROM unsubscribe_tokens WHERE email = $1", to)


# -- PUBLIC_BASE_URL -----------------------------------------------------------------------


def test_the_https_warning_names_the_setting() -> None:
    warning = Settings(public_base_url="http://mail.example.com").public_base_warning()
    assert warning is not None and "PUBLIC_BASE_URL" in warning and "https" in warning and "RFC 8058" in warning
    assert Settings(public_base_url="https://mail.example.com").public_base_warning() is None
    assert Settings(public_base_url="http://127.0.0.1:8080", tidings_dev=True).public_base_warning() is None
    assert Settings.from_env({"TIDINGS_DEV": "1"}).tidings_dev


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _api_start_log(database_url: str, redis_url: str, **env: str) -> str:
    """Start a real `tidings api`, wait until it listens, stop it; its log output."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "PUBLIC_", "TIDINGS_"))}
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
        env={**base, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "LOG_FORMAT": "json", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the api exited"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    return out


@pytest.mark.parametrize(
    ("env", "warned"),
    [
        ({"PUBLIC_BASE_URL": "http://mail.example.com"}, True),
        ({"PUBLIC_BASE_URL": "https://mail.example.com"}, False),
        ({"PUBLIC_BASE_URL": "http://127.0.0.1:8080", "TIDINGS_DEV": "1"}, False),
    ],
    ids=["http", "https", "tidings-dev"],
)
def test_the_api_warns_once_at_start_when_public_base_url_is_not_https(
    database_url: str, redis_url: str, env: dict[str, str], warned: bool
) -> None:
    out = _api_start_log(database_url, redis_url, **env)
    lines = [line for line in out.splitlines() if "public_base_url_not_https" in line]
    assert len(lines) == (1 if warned else 0), out
    if warned:
        assert (
            '"level":"warning"' in lines[0].replace(" ", "")
            and "PUBLIC_BASE_URL is http://mail.example.com" in lines[0]
        )
