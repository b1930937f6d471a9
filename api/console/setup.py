"""Wiring: the templates' environment, the static files, the routes under /console/."""

from __future__ import annotations

import datetime as dt
import hashlib
import mimetypes
import pathlib
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from api.console import domains, pages, signin
from api.console import webhooks as webhook_pages
from api.console.web import SECURITY_HEADERS

HERE = pathlib.Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
# Static URLs carry their content's hash (`?v=`), so browsers may keep them for a year.
STATIC_CACHE = "public, max-age=31536000, immutable"


def _load_static() -> dict[str, tuple[bytes, str, str]]:
    """name -> (content, content type, short hash), read once at start-up."""
    files: dict[str, tuple[bytes, str, str]] = {}
    for path in sorted(STATIC.iterdir()):
        if not path.is_file():
            continue
        content = path.read_bytes()
        kind = mimetypes.guess_type(path.name)[0] or "text/plain"
        if path.name.endswith(".js"):
            kind = "text/javascript"
        files[path.name] = (content, kind, hashlib.sha256(content).hexdigest()[:12])
    return files


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "" if value is None else str(value)


def setup(app: web.Application) -> None:
    files = _load_static()
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        # Every value is escaped unless a template says otherwise (none does).
        autoescape=True,
    )
    env.globals["static"] = lambda name: f"/console/static/{name}?v={files[name][2]}"
    env.filters["when"] = _when

    async def static(request: web.Request) -> web.Response:
        found = files.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        content, kind, digest = found
        etag = f'"{digest}"'
        headers = {**SECURITY_HEADERS, "Cache-Control": STATIC_CACHE, "ETag": etag}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=content, content_type=kind, headers=headers)

    r = app.router
    r.add_get("/console", _to_root)
    r.add_get("/console/", pages.overview)
    r.add_get("/console/static/{name}", static)
    r.add_get("/console/login", signin.login_form)
    r.add_post("/console/login", signin.login)
    r.add_post("/console/logout", signin.logout)
    r.add_get("/console/broadcasts", pages.broadcast_list)
    r.add_post("/console/broadcasts", pages.broadcast_create)
    r.add_get("/console/broadcasts/{broadcast_id}", pages.broadcast_show)
    r.add_get("/console/broadcasts/{broadcast_id}/live", pages.broadcast_live)
    r.add_post("/console/broadcasts/{broadcast_id}/templates", pages.template_add)
    r.add_post("/console/broadcasts/{broadcast_id}/preview", pages.template_preview)
    r.add_get("/console/broadcasts/{broadcast_id}/templates/{template_id}", pages.template_show)
    r.add_post("/console/broadcasts/{broadcast_id}/templates/{template_id}", pages.template_save)
    r.add_post("/console/broadcasts/{broadcast_id}/templates/{template_id}/remove", pages.template_remove)
    r.add_post("/console/broadcasts/{broadcast_id}/variables", pages.variables_save)
    for action in ("activate", "pause", "resume"):
        r.add_post(f"/console/broadcasts/{{broadcast_id}}/{action}", pages.status_action(action))
    r.add_post("/console/broadcasts/{broadcast_id}/send", pages.manual_send)
    r.add_get("/console/messages", pages.message_search)
    r.add_get("/console/messages/{message_id}", pages.message_show)
    r.add_post("/console/messages/{message_id}/cancel", pages.message_cancel)
    r.add_get("/console/contacts", pages.contact_list)
    r.add_get("/console/suppressions", pages.suppression_list)
    r.add_post("/console/suppressions", pages.suppression_add)
    r.add_post("/console/suppressions/remove", pages.suppression_remove)
    r.add_get("/console/keys", pages.key_list)
    r.add_post("/console/keys", pages.key_create)
    r.add_post("/console/keys/{key_id}/revoke", pages.key_revoke)
    # The Webhooks room (api/console/webhooks.py).
    webhook_pages.add_routes(r)
    # Sending domains (api/console/domains.py).
    domains.add_routes(r)


async def _to_root(request: web.Request) -> web.Response:
    return web.Response(status=308, headers={"Location": "/console/"})
