"""Sessions, CSRF, security headers and rendering: what every console page shares.

A session is a row (`shared.console`) named by a random token in an HttpOnly, SameSite=Lax
cookie. Every request re-checks the key it was opened with through the api's key cache, so a
revoked key ends its sessions within KEY_CACHE_TTL_S, as it ends the key's API calls.
"""

from __future__ import annotations

import dataclasses
import hmac
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from api import errors as http_errors
from api.auth import AuthKey
from api.state import STATE, State
from shared import console, errors, keys

COOKIE = "tidings_console"
# The sign-in form's CSRF token, before there is a session: a double-submit cookie.
LOGIN_COOKIE = "tidings_console_login"
PREFIX = "/console"
LOGIN_PATH = "/console/login"

# No inline script or style anywhere: scripts and styles come from /console/static only.
# Email previews are srcdoc iframes without scripts (sandbox) under this same policy.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Pages show an org's data: never kept by a browser or a proxy.
    "Cache-Control": "no-store",
}


@dataclasses.dataclass(slots=True)
class Page:
    """One signed-in request: the org it acts for, its form (POST) and how to answer."""

    request: web.Request
    state: State
    session: console.Session
    # The key the session was opened with: a test key's console sees and sends test messages
    # only, as the key does on the API.
    key: AuthKey
    form: MultiDictProxy[Any] | None

    @property
    def org_id(self) -> uuid.UUID:
        return self.session.org_id

    def path_uuid(self, name: str) -> uuid.UUID:
        try:
            return uuid.UUID(self.request.match_info[name])
        except ValueError:
            raise errors.NotFound() from None

    def field(self, name: str) -> str:
        """A form field's text, stripped ('' when absent)."""
        value = self.form.get(name, "") if self.form is not None else ""
        return value.strip() if isinstance(value, str) else ""

    @property
    def test(self) -> bool:
        return self.key.test

    def render(self, template: str, context: Mapping[str, Any], *, status: int = 200) -> web.Response:
        return render(
            self.request,
            template,
            {**context, "csrf_token": self.session.csrf_token, "test_mode": self.key.test},
            status=status,
        )


def render(request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200) -> web.Response:
    response = aiohttp_jinja2.render_template(template, request, dict(context), status=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(location: str) -> web.Response:
    # 303: the browser follows a POST's answer with a GET.
    response = web.Response(status=303, headers={"Location": location})
    response.headers.update(SECURITY_HEADERS)
    return response


def safe_next(raw: str | None) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if not raw or not raw.startswith(PREFIX + "/") or raw.startswith("//") or "\\" in raw or not raw.isprintable():
        return PREFIX + "/"
    return raw


def to_login(request: web.Request) -> web.Response:
    wanted = request.path_qs if request.method == "GET" else _referer_path(request)
    location = f"{LOGIN_PATH}?{urllib.parse.urlencode({'next': safe_next(wanted)})}"
    if request.headers.get("HX-Request"):
        # An htmx refresh cannot follow a redirect into its fragment: the whole page goes.
        response = web.Response(status=200, headers={"HX-Redirect": location})
        response.headers.update(SECURITY_HEADERS)
        return response
    return redirect(location)


def _referer_path(request: web.Request) -> str:
    referer = urllib.parse.urlsplit(request.headers.get("Referer", ""))
    if referer.netloc and referer.netloc != request.host:
        return PREFIX + "/"
    return referer.path + (f"?{referer.query}" if referer.query else "")


async def live_key(state: State, key_hash: bytes) -> AuthKey | None:
    """The key with this hash if it still works, through the api's key cache (the lookup
    `api.auth.authenticate` makes): a revoked key is refused within KEY_CACHE_TTL_S."""
    return await state.key_cache.lookup(state.pool, key_hash)


async def key_for_sign_in(state: State, api_key: str) -> AuthKey | None:
    """The admin key an operator typed, or None (unknown, revoked, or without `admin`)."""
    if not api_key or not api_key.isascii() or len(api_key) > 200:
        return None
    key = await live_key(state, keys.hash_key(api_key))
    return key if key is not None and "admin" in key.scopes else None


async def current_session(request: web.Request, state: State) -> tuple[console.Session, AuthKey] | None:
    """The request's session and the key it acts with, or None (signed out, expired, or the
    key revoked: then the session row goes too)."""
    token = request.cookies.get(COOKIE, "")
    if not token or not token.isascii() or len(token) > 100:
        return None
    session = await console.find_session(state.pool, token)
    if session is None:
        return None
    key = await live_key(state, session.key_hash)
    if key is None or key.key_id != session.key_id or "admin" not in key.scopes:
        await console.close_session(state.pool, token)
        return None
    return session, key


def same_token(given: object, expected: str) -> bool:
    return isinstance(given, str) and bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def forbidden(request: web.Request) -> web.Response:
    return render(
        request,
        "error.html",
        {
            "title": "Forbidden",
            "message": "This form has expired or did not come from the console. Nothing changed.",
            "signed_in": False,
        },
        status=403,
    )


def _holds_nul(request: web.Request, form: MultiDictProxy[Any] | None) -> bool:
    values = [*request.query.values(), *request.match_info.values()]
    if form is not None:
        values.extend(v for v in form.values() if isinstance(v, str))
    return any("\x00" in v for v in values)


PageHandler = Callable[[Page], Awaitable[web.StreamResponse]]


def page(fn: PageHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A signed-in page: signed out, the sign-in form (remembering the page); a POST without
    the session's CSRF token, 403 and nothing done; another org's object, 404."""

    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        signed_in = await current_session(request, state)
        if signed_in is None:
            return to_login(request)
        session, key = signed_in
        form = None
        if request.method == "POST":
            form = await request.post()
            if not same_token(form.get("csrf_token"), session.csrf_token):
                return forbidden(request)
        p = Page(request, state, session, key, form)
        if _holds_nul(request, form):
            # Postgres text cannot hold it; nothing typed in a browser contains it.
            return p.render(
                "error.html", {"title": "Refused", "message": "A field contains the NUL character."}, status=422
            )
        try:
            return await fn(p)
        except errors.TidingsError as exc:
            status, _ = http_errors.answer(exc, http_errors.Surface.broadcasts)
            if status >= 500:
                raise
            title = "Not found" if status == 404 else "Refused"
            message = "There is no such page in this org." if status == 404 else exc.message
            return p.render("error.html", {"title": title, "message": message}, status=status)

    return handler
