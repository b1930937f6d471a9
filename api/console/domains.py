"""The console's Domains room: the org's sending domains, the DNS records each needs, adding
and deleting one. Every action is the call the `/orgs/{org_id}/domains` routes make
(`shared.sending_domains`): the same checks, the same messages, the same key handling."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from api import errors as http_errors
from api.console.web import Page, page, redirect
from shared import errors, sending_domains
from shared.secret_box import SecretKeyMissing

NOTICES = {
    "deleted": "The domain and its DKIM key are deleted: its mail is signed with the global key, or not at all.",
}


def _records(p: Page, row: Any) -> dict[str, Any]:
    """What the domain's page shows: the DKIM record (as the API answers it) and the hints for
    SPF, DMARC and the bounce MX, which depend on this installation's BOUNCE_DOMAIN."""
    out = sending_domains.domain_json(row)
    dkim = out["dkim"]
    bounce_domain = p.state.settings.bounce_domain
    return {
        **out,
        "txt_strings": sending_domains.txt_strings(dkim["dns_value"]),
        "zone_line": f'{dkim["dns_name"]}.  3600  IN  TXT  "{dkim["dns_value"]}"',
        "bounce_domain": bounce_domain,
        # Without a bounce domain the envelope sender is the From address: SPF is the domain's own.
        "spf_name": bounce_domain or out["domain"],
        "dmarc_name": f"_dmarc.{out['domain']}",
        "dmarc_value": f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{out['domain']}",
    }


async def _domain_list(p: Page, *, problem: str | None = None, typed: str = "", status: int = 200) -> web.Response:
    rows = await sending_domains.list_for(p.state.pool, p.org_id)
    return p.render(
        "domains.html",
        {
            "nav": "domains",
            "domains": [sending_domains.domain_json(row) for row in rows],
            "problem": problem,
            "typed": typed,
            "notice": NOTICES.get(p.request.query.get("notice", "")),
        },
        status=status,
    )


@page
async def domain_list(p: Page) -> web.StreamResponse:
    return await _domain_list(p)


@page
async def domain_add(p: Page) -> web.StreamResponse:
    typed = p.field("domain")
    try:
        row = await sending_domains.create(p.state.pool, p.state.settings.secret_key, p.org_id, typed)
    except (errors.ValidationFailed, errors.Conflict, SecretKeyMissing) as exc:
        # The API's own status and message (its 422, 409 or secret_key_missing 503), beside the field.
        status, _ = http_errors.answer(exc, http_errors.Surface.broadcasts)
        return await _domain_list(p, problem=exc.message, typed=typed, status=status)
    return redirect(f"/console/domains/{row['id']}?notice=added")


@page
async def domain_show(p: Page) -> web.StreamResponse:
    row = await sending_domains.get(p.state.pool, p.org_id, p.path_uuid("domain_id"))
    added = p.request.query.get("notice") == "added"
    return p.render("domain.html", {"nav": "domains", "d": _records(p, row), "added": added})


@page
async def domain_delete_confirm(p: Page) -> web.StreamResponse:
    row = await sending_domains.get(p.state.pool, p.org_id, p.path_uuid("domain_id"))
    return p.render("domain_delete.html", {"nav": "domains", "d": sending_domains.domain_json(row)})


@page
async def domain_delete(p: Page) -> web.StreamResponse:
    await sending_domains.delete(p.state.pool, p.org_id, p.path_uuid("domain_id"))
    return redirect("/console/domains?notice=deleted")


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console/domains", domain_list)
    router.add_post("/console/domains", domain_add)
    router.add_get("/console/domains/{domain_id}", domain_show)
    router.add_get("/console/domains/{domain_id}/delete", domain_delete_confirm)
    router.add_post("/console/domains/{domain_id}/delete", domain_delete)
