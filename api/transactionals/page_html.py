"""The small HTML pages a recipient opens from an email: confirmation and unsubscribe.

Everything shown is escaped (page copy and org names are data, never markup). The
pages load nothing, cannot be framed (the unsubscribe button must not be clickjacked),
are not cached, and do not leak their URL, which holds the token, as a Referer.
"""

from __future__ import annotations

import html

from aiohttp import web

_STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;background:#f6f7f9;color:#1f2328;"
    "margin:0;padding:48px 16px}main{max-width:520px;margin:0 auto;background:#fff;border-radius:8px;"
    "padding:32px;box-shadow:0 1px 3px rgba(0,0,0,.08)}h1{font-size:1.5rem;margin:0 0 16px}"
    "p{line-height:1.5;margin:0 0 12px}button{font:inherit;padding:10px 20px;border:0;border-radius:6px;"
    "background:#1f2328;color:#fff;cursor:pointer}"
)
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


def paragraphs(text: str) -> str:
    """Plain text as HTML: blank lines separate paragraphs, single line breaks are kept."""
    blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
    return "".join(f"<p>{html.escape(b).replace(chr(10), '<br>')}</p>" for b in blocks if b)


def render(heading: str, body: str, *, button: str | None = None) -> str:
    """A page with a heading and text; with `button`, a form that POSTs back to this URL."""
    form = f'<form method="post"><button type="submit">{html.escape(button)}</button></form>' if button else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{html.escape(heading)}</title><style>{_STYLE}</style></head>"
        f"<body><main><h1>{html.escape(heading)}</h1>{paragraphs(body)}{form}</main></body></html>\n"
    )


def page_response(heading: str, body: str, *, status: int = 200, button: str | None = None) -> web.Response:
    return web.Response(
        text=render(heading, body, button=button), status=status, content_type="text/html", headers=_HEADERS
    )
