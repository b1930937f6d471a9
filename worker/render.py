"""Turn a stored template and a send's variables into a message a channel can deliver."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Mapping
from typing import Any

from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig

from shared import addresses, templating
from worker.channels.base import RenderedEmail, RenderedWhatsApp

# Links kept in the text part ("confirm [https://...]"): a text-only reader must still act.
_TEXT_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_links=True, display_anchors=False)
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_DOCUMENT = re.compile(r"<html\b|<body\b", re.IGNORECASE)


def html_to_text(markup: str) -> str:
    text: str = get_text(markup, _TEXT_CONFIG)
    return text.strip() + "\n"


def preheader_html(text: str) -> str:
    """Preview text shown by mail clients beside the subject, hidden in the message itself."""
    return (
        '<div style="display:none;font-size:1px;color:#ffffff;line-height:1px;max-height:0px;'
        'max-width:0px;opacity:0;overflow:hidden;mso-hide:all;">' + html.escape(text) + "</div>"
    )


def with_preheader(markup: str, preheader: str) -> str:
    """Put the hidden preheader first inside <body> (or first in a fragment)."""
    if not preheader:
        return markup
    m = _BODY_OPEN.search(markup)
    if m:
        return markup[: m.end()] + preheader_html(preheader) + markup[m.end() :]
    return preheader_html(preheader) + markup


def as_document(markup: str) -> str:
    """Wrap a fragment in html/body tags; leave a full document alone."""
    if _DOCUMENT.search(markup):
        return markup
    return f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>{markup}</body></html>'


def message_id_for(message_id: uuid.UUID, from_email: str, fallback_domain: str) -> str:
    domain = from_email.rpartition("@")[2].strip().lower() or fallback_domain
    return f"<{message_id}@{domain}>"


def render_email(
    message_id: uuid.UUID,
    body: Mapping[str, Any],
    data: Mapping[str, Any],
    *,
    to: str,
    fallback_domain: str,
    headers: Mapping[str, str] | None = None,
) -> RenderedEmail:
    def header(field: str) -> str:
        # A rendered value with a line break is folded to a space: no header injection.
        return addresses.fold_header(templating.render(body.get(field), data)).strip()

    from_email = header("from_email")
    from_name = header("from_name") or None
    reply_to = header("reply_to") or None
    subject = header("subject")
    preheader = header("preheader")
    html_src = body.get("html_body")
    text_src = body.get("text_body")
    html_part = None
    if html_src:
        html_part = as_document(with_preheader(templating.render(html_src, data, html=True), preheader))
    text_part = templating.render(text_src, data) if text_src else html_to_text(html_part or "")
    return RenderedEmail(
        message_id=message_id_for(message_id, from_email, fallback_domain),
        from_email=from_email,
        from_name=from_name,
        to=to,
        to_name=(str(data.get("name") or "") or None),
        reply_to=reply_to,
        subject=subject,
        html=html_part,
        text=text_part,
        # Fixed extra headers (e.g. List-Unsubscribe) stored with the content; folded like the rest.
        headers={k: addresses.fold_header(v) for k, v in {**(body.get("headers") or {}), **(headers or {})}.items()},
    )


def render_whatsapp(body: Mapping[str, Any], data: Mapping[str, Any], *, to: str) -> RenderedWhatsApp:
    return RenderedWhatsApp(
        to=to,
        template_name=body["template_name"],
        language=body["language"],
        body_parameters=[templating.render(p, data) for p in body.get("body_parameters") or []],
        button_parameters=[templating.render(p, data) for p in body.get("button_parameters") or []],
    )
