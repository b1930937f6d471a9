"""Public pages opened from emails: the double opt-in confirmation and the unsubscribe page.

No key: the token in the path is the credential. An unknown or expired token gets a
plain page (404), never an error trace, and no page says anything about a subscriber
beyond the org that sent the email.
"""

from __future__ import annotations

import re

from aiohttp import web

from api.routing import Call, route
from api.transactionals.page_html import page_response
from shared import confirmations, unsubscribes

TAG = "pages"

UNSUBSCRIBE_INVALID = (
    "This link is not valid",
    "This unsubscribe link is invalid. If you keep receiving emails you did not ask for, "
    "reply to one of them to reach the sender.",
)


# Tokens are URL-safe base64 (`secrets.token_urlsafe`). Anything else, a NUL or stray bytes
# included, cannot be one: answered as an unknown token without asking Postgres.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,100}")


def _token(call: Call[None]) -> str | None:
    token = call.request.match_info["token"]
    return token if _TOKEN.fullmatch(token) else None


def _unsubscribed_page(org_name: str) -> web.Response:
    return page_response(
        "You are unsubscribed",
        f"You will no longer receive mailing list emails from {org_name}. "
        "Emails about your account or your orders may still be sent.",
    )


@route(
    "GET",
    "/confirm/{token}",
    summary="Double opt-in confirmation page (confirms)",
    scope=None,
    tag=TAG,
    content_type="text/html",
)
async def confirm_page(call: Call[None]) -> web.Response:
    token = _token(call)
    invalid = confirmations.PageState.invalid
    page = confirmations.page_copy(invalid) if token is None else await confirmations.follow(call.state.pool, token)
    status = 404 if page.state == invalid else 200
    return page_response(page.heading, page.body, status=status)


@route(
    "GET",
    "/unsubscribe/{token}",
    summary="Unsubscribe page with its confirm button",
    scope=None,
    tag=TAG,
    content_type="text/html",
)
async def unsubscribe_page(call: Call[None]) -> web.Response:
    # A GET never unsubscribes: mail scanners and link previews open links nobody clicked.
    token = _token(call)
    link = None if token is None else await unsubscribes.look_up(call.state.pool, token)
    if link is None:
        return page_response(*UNSUBSCRIBE_INVALID, status=404)
    if link.already_unsubscribed:
        return _unsubscribed_page(link.org_name)
    return page_response(
        "Unsubscribe",
        f"Do you want to stop receiving mailing list emails from {link.org_name}?",
        button="Unsubscribe",
    )


@route(
    "POST",
    "/unsubscribe/{token}",
    summary="Unsubscribe (the page's button, or RFC 8058 one-click: body List-Unsubscribe=One-Click)",
    scope=None,
    tag=TAG,
    content_type="text/html",
)
async def unsubscribe(call: Call[None]) -> web.Response:
    # Both the page's form and a mail client's one-click POST land here; the token alone
    # decides, so the body (`List-Unsubscribe=One-Click` or the empty form) is not needed.
    token = _token(call)
    link = None if token is None else await unsubscribes.follow(call.state.pool, token)
    if link is None:
        return page_response(*UNSUBSCRIBE_INVALID, status=404)
    return _unsubscribed_page(link.org_name)
