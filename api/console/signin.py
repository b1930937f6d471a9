"""Sign in with an admin API key, sign out."""

from __future__ import annotations

import secrets
import time
import urllib.parse

from aiohttp import web

from api.console import web as cw
from api.state import STATE, State
from shared import console, keys

# Failed sign-ins per client address per window: enough for typos, too few to guess keys
# (which carry 256 random bits anyway); past them every attempt is refused until the window
# ends. The counter lives in Redis, shared by every replica.
SIGN_IN_ATTEMPTS = 10
SIGN_IN_WINDOW_S = 60
WRONG_KEY = "That API key is not valid, or it does not have the admin scope."


def _form(request: web.Request, *, error: str | None, status: int, next_path: str) -> web.Response:
    token = secrets.token_urlsafe(24)
    response = cw.render(
        request,
        "login.html",
        {"error": error, "next": next_path, "csrf_token": token, "signed_in": False},
        status=status,
    )
    # The form's CSRF token is also in a cookie only this path sees: a POST must carry both.
    response.set_cookie(
        cw.LOGIN_COOKIE,
        token,
        path=cw.LOGIN_PATH,
        httponly=True,
        samesite="Strict",
        secure=_https(request.app[STATE]),
        max_age=3600,
    )
    return response


def _https(state: State) -> bool:
    return urllib.parse.urlsplit(state.settings.public_base_url).scheme == "https"


async def login_form(request: web.Request) -> web.Response:
    state = request.app[STATE]
    next_path = cw.safe_next(request.query.get("next"))
    if await cw.current_session(request, state) is not None:
        return cw.redirect(next_path)
    return _form(request, error=None, status=200, next_path=next_path)


def _counter(state: State, client: str) -> str:
    window = int(time.time()) // SIGN_IN_WINDOW_S * SIGN_IN_WINDOW_S
    return state.keys.console_sign_in(client, window)


async def _too_many(state: State, client: str) -> bool:
    count = await state.redis.get(_counter(state, client))
    return count is not None and int(count) >= SIGN_IN_ATTEMPTS


async def _failed(state: State, client: str) -> None:
    async with state.redis.pipeline(transaction=True) as pipe:
        pipe.incr(_counter(state, client))
        pipe.expire(_counter(state, client), SIGN_IN_WINDOW_S * 2)
        await pipe.execute()


async def login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    form = await request.post()
    wanted = form.get("next")
    next_path = cw.safe_next(wanted if isinstance(wanted, str) else None)
    if not cw.same_token(form.get("csrf_token"), request.cookies.get(cw.LOGIN_COOKIE, "")):
        return cw.forbidden(request)
    client = request.remote or "unknown"
    if await _too_many(state, client):
        return _form(
            request,
            error="Too many sign-in attempts from this address; wait a minute and try again.",
            status=429,
            next_path=next_path,
        )
    raw = form.get("api_key")
    api_key = raw.strip() if isinstance(raw, str) else ""
    key = await cw.key_for_sign_in(state, api_key)
    if key is None:
        await _failed(state, client)
        return _form(request, error=WRONG_KEY, status=401, next_path=next_path)
    previous = request.cookies.get(cw.COOKIE, "")
    if previous and previous.isascii() and len(previous) <= 100:
        # A sign-in over another session replaces it (never two sessions in one browser).
        await console.close_session(state.pool, previous)
    token = await console.open_session(
        state.pool, key.org_id, key.key_id, keys.hash_key(api_key), state.settings.console_session_s
    )
    response = cw.redirect(next_path)
    response.set_cookie(
        cw.COOKIE,
        token,
        path=cw.PREFIX,
        httponly=True,
        samesite="Lax",
        secure=_https(state),
        max_age=int(state.settings.console_session_s),
    )
    response.del_cookie(cw.LOGIN_COOKIE, path=cw.LOGIN_PATH)
    return response


@cw.page
async def logout(p: cw.Page) -> web.StreamResponse:
    await console.close_session(p.state.pool, p.request.cookies[cw.COOKIE])
    response = cw.redirect(cw.LOGIN_PATH)
    response.del_cookie(cw.COOKIE, path=cw.PREFIX)
    return response
