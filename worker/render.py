"""Turn a stored template and a send's variables into a message a channel can deliver.

One renderer per kind of channel (`RENDERERS`). The worker runs them in sandboxed child
processes (worker/render_sandbox.py), except for templates that are bounded by construction
(`bounded_by_construction`): those render in the worker itself, in well under a millisecond.
"""

from __future__ import annotations

import functools
import html
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig

from shared import addresses, broadcasts, errors, templating, unsubscribes
from shared.domain import Channel
from worker.channels.base import Draft, Rendered, RenderedEmail, RenderedWhatsApp

# Links kept in the text part ("confirm [https://...]"): a text-only reader must still act.
_TEXT_CONFIG = ParserConfig(css=CSS_PROFILES["strict"], display_links=True, display_anchors=False)
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_DOCUMENT = re.compile(r"<html\b|<body\b", re.IGNORECASE)


def html_to_text(markup: str) -> str:
    text: str = get_text(markup, _TEXT_CONFIG)
    return text.strip() + "\n"


# An output tag `{{ x }}`, `{{ user.name }}` or `{{ x | default: "there" }}` (also upcase,
# downcase, capitalize, strip): what renders the same in HTML (escaped, then unescaped by the
# text conversion) as in plain text.
_SIMPLE_OUTPUT = re.compile(
    r"\{\{\s*[A-Za-z_][\w.]*"
    r"(?:\s*\|\s*(?:upcase|downcase|capitalize|strip|default:\s*(?:\"[^\"{}]*\"|'[^'{}]*'|\d+)))*\s*\}\}"
)
_MARKER = "TDGVAR{}X"
_MARKED = re.compile(r"TDGVAR(\d+)X")
_WHITESPACE = re.compile(r"\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff\ud800-\udfff]")


@functools.lru_cache(maxsize=1024)
def _text_plan(html_src: str, preheader_src: str) -> tuple[str, tuple[str, ...]] | None:
    """The derived text part as a template of its own, converted once per template.

    `html_to_text` (inscriptis: an lxml parse and a layout) is a tenth of a worker's time per
    message when run on every rendered body. When the template's only Liquid is simple output
    tags, the conversion runs once on the source with each tag replaced by a marker, and each
    message substitutes its rendered values (whitespace collapsed, as the conversion would).
    Returns the converted text and the output tags by marker number; None when the template
    has anything else (tags, whitespace control, preformatted text): then every message is
    converted whole.
    """
    sources = html_src + preheader_src
    if "{%" in sources or "<pre" in sources.lower() or "TDGVAR" in sources:
        return None
    outputs: list[str] = []

    def mark(m: re.Match[str]) -> str:
        outputs.append(m.group(0))
        return _MARKER.format(len(outputs) - 1)

    html_marked = _SIMPLE_OUTPUT.sub(mark, html_src)
    preheader_marked = _SIMPLE_OUTPUT.sub(mark, preheader_src)
    if "{{" in html_marked + preheader_marked or "}}" in html_marked + preheader_marked:
        return None
    text = html_to_text(as_document(with_preheader(html_marked, preheader_marked)))
    return text, tuple(outputs)


def _derived_text(
    html_src: str, preheader_src: str, data: Mapping[str, Any], rendered: Sequence[str] | None = None
) -> str | None:
    """The text part from the plan, its tags' values `rendered` already or rendered here."""
    plan = _text_plan(html_src, preheader_src)
    if plan is None:
        return None
    text, outputs = plan
    if rendered is None:
        rendered = templating.render_all(outputs, data) or [templating.render(output, data) for output in outputs]
    values = [_WHITESPACE.sub(" ", value) for value in rendered]
    if any(_CONTROL.search(value) for value in values):
        return None  # control characters: the HTML parser replaces or drops them; convert whole
    return _MARKED.sub(lambda m: values[int(m.group(1))], text)


# Hidden by layout only. No colour: text coloured like its background is what SpamAssassin's
# HTML_FONT_LOW_CONTRAST scores (+0.7); no font-size either: a 1px font counts as invisible
# text too. display:none hides it in most clients, mso-hide:all in Outlook's Word engine, and
# zero height, zero width, overflow hidden and opacity 0 in clients that drop display:none.
PREHEADER_STYLE = "display:none;max-height:0;max-width:0;overflow:hidden;opacity:0;mso-hide:all"


def preheader_html(text: str) -> str:
    """Preview text shown by mail clients beside the subject, hidden in the message itself."""
    return f'<div style="{PREHEADER_STYLE}">{html.escape(text)}</div>'


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
    if reply_to is not None:
        # A variable can render to several mailboxes ("a@x.com, b@y.com"): exactly one is
        # allowed, or the message fails saying so (replies must not go to unvetted extras).
        try:
            addresses.single_mailbox(reply_to)
        except addresses.InvalidAddress as exc:
            raise errors.ValidationFailed(f"reply_to rendered to {reply_to!r}, not exactly one mailbox: {exc}") from exc
    html_src = body.get("html_body")
    text_src = body.get("text_body")
    preheader_src = body.get("preheader") or ""
    # The subject, the preheader and the derived text part's tags in one render when they
    # allow it (`templating.render_all`); else one by one, as before.
    plan = _text_plan(html_src, preheader_src) if html_src and not text_src else None
    outputs = plan[1] if plan is not None else ()
    joint = templating.render_all([body.get("subject"), preheader_src, *outputs], data)
    if joint is not None:
        subject, preheader = (addresses.fold_header(value).strip() for value in joint[:2])
    else:
        subject = header("subject")
        preheader = header("preheader")
    html_part = None
    if html_src:
        html_part = as_document(with_preheader(templating.render(html_src, data, html=True), preheader))
    if text_src:
        text_part = templating.render(text_src, data)
    else:
        rendered = joint[2:] if joint is not None and plan is not None else None
        derived = _derived_text(html_src, preheader_src, data, rendered) if html_src else None
        text_part = derived if derived is not None else html_to_text(html_part or "")
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
        # Fixed extra headers (e.g. List-Unsubscribe) stored with the content, or the RFC 8058
        # ones of a template that uses `{{ unsubscribe_url }}`; folded like the rest.
        headers={
            k: addresses.fold_header(v)
            for k, v in {
                **(body.get("headers") or {}),
                **unsubscribes.headers_for_template(broadcasts.template_variables(Channel.email, body), data),
                **(headers or {}),
            }.items()
        },
    )


# Meta refuses a text parameter with a line break, a tab or more than four spaces in a row
# (error 132018) whatever the template: such whitespace is folded to one space, as a reader
# of the message would see it anyway.
_PARAM_WHITESPACE = re.compile(r"\s*[\r\n\t\v\f]\s*| {5,}")


def whatsapp_parameter(field: str, value: str) -> str:
    """A rendered parameter as Meta accepts it; an empty one fails the message (Meta refuses
    it too, error 131008), naming the parameter, instead of a call that cannot succeed."""
    text = _PARAM_WHITESPACE.sub(" ", value).strip()
    if not text:
        raise errors.ValidationFailed(f"{field} rendered empty; WhatsApp refuses an empty parameter")
    return text


def render_whatsapp(body: Mapping[str, Any], data: Mapping[str, Any], *, to: str) -> RenderedWhatsApp:
    slots = broadcasts.button_slots(body.get("button_parameters"))
    return RenderedWhatsApp(
        to=to,
        template_name=body["template_name"],
        language=body["language"],
        body_parameters=[
            whatsapp_parameter(f"body_parameters[{i}]", templating.render(p, data))
            for i, p in enumerate(body.get("body_parameters") or [])
        ],
        button_parameters=[
            whatsapp_parameter(f"button_parameters[{i}]", templating.render(src, data))
            for i, (_, src) in enumerate(slots)
        ],
        button_indexes=[index for index, _ in slots],
    )


# What a draft becomes, by kind: the only place that knows which renderer each channel needs.
RENDERERS: dict[Channel, Callable[[Draft, str], Rendered]] = {
    Channel.email: lambda draft, fallback_domain: render_email(
        draft.message_id, draft.body, draft.variables, to=draft.to, fallback_domain=fallback_domain
    ),
    Channel.whatsapp: lambda draft, _fallback_domain: render_whatsapp(draft.body, draft.variables, to=draft.to),
}


def bounded_by_construction(kind: Channel, body: Mapping[str, Any]) -> bool:
    """True when every Liquid source of the message is made only of output tags with filters
    that cannot amplify (`templating.is_linear`): such a message renders in time and memory
    linear in its template and variables, and needs no sandbox. The usual one-time passcode,
    receipt or reset email is such a template."""
    return all(templating.is_linear(source) for source in broadcasts.template_sources(kind, body))


def render(kind: Channel, draft: Draft, *, fallback_domain: str) -> Rendered:
    """The message `kind`'s channel sends; `fallback_domain` names an email's Message-ID when
    its sender has no domain. Raises `errors.ValidationFailed` when it cannot be rendered."""
    return RENDERERS[kind](draft, fallback_domain)
