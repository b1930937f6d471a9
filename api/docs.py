"""`/docs`: this API's OpenAPI document as a browsable reference (Swagger UI), no auth.

The page and its assets come from this process: Swagger UI's files ship inside the
openapi-ui-bundles package and are read from it, so a browser opening /docs loads nothing
from another host (no CDN, works offline and behind a firewall). The page points Swagger UI
at `openapi.json` beside it, the document `/openapi.json` serves.

Each asset is a route of its own, declared like every other (so /openapi.json documents it
with its real content type). The page names them with `?v=<digest of their bytes>`: a new
package version changes the URLs, so the assets can be cached for a year, while the page
itself is revalidated on every visit.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import urllib.parse

import openapi_ui_bundles.swagger_ui
from aiohttp import web

from api.routing import Call, Handler, route

PAGE_PATH = "/docs"
# Swagger UI's files this page uses: name -> content type. The standalone preset (a top bar
# whose URL field loads any document) and the validator badge (which calls an outside
# validator) are left out on purpose.
VENDOR_ASSETS: dict[str, str] = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
# Ours: start Swagger UI on the document. A file rather than an inline script, so that the
# page's Content-Security-Policy can forbid inline scripts.
INIT_ASSET = "init.js"
INIT_JS = """\
// Swagger UI over this API's own OpenAPI document, which sits beside /docs.
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: "none",
  layout: "BaseLayout",
});
"""
ASSET_TYPES: dict[str, str] = {**VENDOR_ASSETS, INIT_ASSET: "text/javascript"}
ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"
_COMPRESSIBLE = ("text/css", "text/javascript")


@dataclasses.dataclass(frozen=True, slots=True)
class Asset:
    content_type: str
    body: bytes
    gzipped: bytes | None


@functools.cache
def assets() -> dict[str, Asset]:
    """Every asset, read (and gzipped once) on first use rather than at import."""
    raw = {name: (openapi_ui_bundles.swagger_ui.static_path / name).read_bytes() for name in VENDOR_ASSETS}
    raw[INIT_ASSET] = INIT_JS.encode()
    return {
        name: Asset(
            ASSET_TYPES[name], body, gzip.compress(body, mtime=0) if ASSET_TYPES[name] in _COMPRESSIBLE else None
        )
        for name, body in raw.items()
    }


@functools.cache
def version() -> str:
    return digest_of({name: asset.body for name, asset in assets().items()})


def digest_of(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name, body in sorted(files.items()):
        digest.update(name.encode() + b"\0" + body + b"\0")
    return digest.hexdigest()[:16]


def page_html() -> str:
    # Relative URLs: from /docs, "docs/x" is /docs/x and "openapi.json" is /openapi.json, and
    # both still hold when a proxy serves the api under a path prefix.
    v = version()
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tidings API reference</title>
<link rel="stylesheet" href="docs/swagger-ui.css?v={v}">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png?v={v}">
</head>
<body>
<noscript>This reference needs JavaScript; the document itself is <a href="openapi.json">openapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js?v={v}"></script>
<script src="docs/{INIT_ASSET}?v={v}"></script>
</body>
</html>
"""


def content_security_policy(public_base: str) -> str:
    """Everything from this origin; "Try it out" may also call the document's server URL
    (PUBLIC_BASE_URL), which can be another origin than the one the page was opened on."""
    parts = urllib.parse.urlsplit(public_base)
    connect = f"'self' {parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "'self'"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        f"connect-src {connect}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


@route(
    "GET",
    PAGE_PATH,
    summary="This API's reference, browsable (Swagger UI over /openapi.json)",
    scope=None,
    tag="service",
    services=False,
    content_type="text/html",
)
async def docs_page(call: Call[None]) -> web.Response:
    return web.Response(
        text=page_html(),
        content_type="text/html",
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": content_security_policy(call.state.settings.public_base),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def _asset_handler(name: str) -> Handler:
    async def serve(call: Call[None]) -> web.Response:
        asset = assets()[name]
        headers = {"Cache-Control": ASSET_CACHE_CONTROL, "X-Content-Type-Options": "nosniff"}
        body = asset.body
        if asset.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
            if "gzip" in call.request.headers.get("Accept-Encoding", ""):
                body = asset.gzipped
                headers["Content-Encoding"] = "gzip"
        charset = "utf-8" if asset.content_type.startswith("text/") else None
        return web.Response(body=body, content_type=asset.content_type, charset=charset, headers=headers)

    return serve


for _name, _content_type in ASSET_TYPES.items():
    route(
        "GET",
        f"{PAGE_PATH}/{_name}",
        summary=f"A file of the /docs page ({_name})",
        scope=None,
        tag="service",
        services=False,
        content_type=_content_type,
    )(_asset_handler(_name))
