"""`/docs`: the browsable reference over /openapi.json, served with its assets by the api itself."""

from __future__ import annotations

import gzip
import urllib.parse
from html.parser import HTMLParser
from typing import Any

from api import docs


class _Links(HTMLParser):
    """Every URL the page makes a browser load or follow: src and href attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def _urls(page: str) -> list[str]:
    parser = _Links()
    parser.feed(page)
    return parser.urls


async def test_docs_page_loads_only_its_own_assets_and_the_document(client: Any) -> None:
    r = await client.get("/docs")
    assert r.status == 200
    assert r.content_type == "text/html"
    assert r.headers["Cache-Control"] == "no-cache"
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    page = await r.text()
    assert 'id="swagger-ui"' in page

    urls = _urls(page)
    # No CDN: nothing absolute, nothing protocol-relative; everything resolves on this api.
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
    resolved = {urllib.parse.urlsplit(urllib.parse.urljoin("http://api.test/docs", u)).path for u in urls}
    assert resolved == {"/openapi.json"} | {f"/docs/{name}" for name in docs.ASSET_TYPES}
    # The script that starts Swagger UI points it at the document beside the page, and at nothing else.
    init = await (await client.get(f"/docs/{docs.INIT_ASSET}")).text()
    assert 'url: "openapi.json"' in init and "http" not in init
    assert (await client.get(urllib.parse.urljoin("/docs", "openapi.json"))).status == 200


async def test_each_asset_is_served_with_its_type_and_long_cache_headers(client: Any) -> None:
    for name, content_type in docs.ASSET_TYPES.items():
        r = await client.get(f"/docs/{name}", headers={"Accept-Encoding": "identity"})
        assert r.status == 200, name
        assert r.content_type == content_type, name
        assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        body = await r.read()
        assert body == docs.assets()[name].body and body
    bundle = await (await client.get("/docs/swagger-ui-bundle.js")).read()
    assert b"SwaggerUIBundle" in bundle


async def test_text_assets_are_sent_gzipped_to_clients_that_take_it(client: Any) -> None:
    r = await client.get("/docs/swagger-ui-bundle.js", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert r.status == 200 and r.headers["Content-Encoding"] == "gzip" and r.headers["Vary"] == "Accept-Encoding"
    raw = await r.read()
    assert gzip.decompress(raw) == docs.assets()["swagger-ui-bundle.js"].body
    assert len(raw) < len(docs.assets()["swagger-ui-bundle.js"].body) / 2
    png = await client.get("/docs/favicon-32x32.png", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
    assert "Content-Encoding" not in png.headers


def test_the_asset_urls_change_with_their_bytes() -> None:
    assert f"?v={docs.version()}" in docs.page_html()
    files = {name: asset.body for name, asset in docs.assets().items()}
    assert docs.digest_of(files) == docs.version()
    assert docs.digest_of({**files, docs.INIT_ASSET: files[docs.INIT_ASSET] + b" "}) != docs.version()


async def test_the_document_lists_the_page_and_its_assets_with_their_types(client: Any) -> None:
    doc = await (await client.get("/openapi.json")).json()
    page = doc["paths"]["/docs"]["get"]
    assert "security" not in page and list(page["responses"]["200"]["content"]) == ["text/html"]
    for name, content_type in docs.ASSET_TYPES.items():
        op = doc["paths"][f"/docs/{name}"]["get"]
        assert "security" not in op and list(op["responses"]["200"]["content"]) == [content_type]
