"""Sending domains (per-org DKIM): register a domain and get the DNS record to publish; list,
read and remove them. Answers carry the public half of the key only."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

import msgspec
from aiohttp import web

from api.jsonio import json_response
from api.routing import Call, route
from shared import sending_domains

TAG = "domains"


class DomainCreate(msgspec.Struct, forbid_unknown_fields=True):
    domain: str  # checked by shared.sending_domains.normalize_domain (422 naming `domain`)


class Dkim(msgspec.Struct, forbid_unknown_fields=True):
    selector: str
    algorithm: Literal["rsa-sha256"]
    dns_name: str
    dns_value: str


class DomainOut(msgspec.Struct, forbid_unknown_fields=True):
    id: uuid.UUID
    domain: str
    dkim: Dkim
    created_at: dt.datetime


class DomainList(msgspec.Struct, forbid_unknown_fields=True):
    data: list[DomainOut]


@route(
    "POST",
    "/orgs/{org_id}/domains",
    summary="Register a sending domain: tidings makes its RSA-2048 DKIM key and gives the TXT record to publish",
    scope="admin",
    tag=TAG,
    body=DomainCreate,
    response=DomainOut,
    status=201,
    error_statuses=(409,),
)
async def create_domain(call: Call[DomainCreate]) -> web.Response:
    # 422 naming `domain`; SecretKeyMissing (503, saying so) when the operator has not set
    # SECRET_KEY; 409 when any org has the domain. The console's form makes the same call.
    row = await sending_domains.create(call.state.pool, call.state.settings.secret_key, call.org_id, call.body.domain)
    return json_response(sending_domains.domain_json(row), status=201)


@route(
    "GET",
    "/orgs/{org_id}/domains",
    summary="The org's sending domains with their DNS records",
    scope="read",
    tag=TAG,
    response=DomainList,
)
async def list_domains(call: Call[None]) -> web.Response:
    rows = await sending_domains.list_for(call.state.pool, call.org_id)
    return json_response({"data": [sending_domains.domain_json(row) for row in rows]})


@route(
    "GET",
    "/orgs/{org_id}/domains/{domain_id}",
    summary="One sending domain with its DNS record",
    scope="read",
    tag=TAG,
    response=DomainOut,
)
async def get_domain(call: Call[None]) -> web.Response:
    row = await sending_domains.get(call.state.pool, call.org_id, call.path_uuid("domain_id"))
    return json_response(sending_domains.domain_json(row))


@route(
    "DELETE",
    "/orgs/{org_id}/domains/{domain_id}",
    summary="Remove a sending domain and its key (its mail is then signed with the global key, or not at all)",
    scope="admin",
    tag=TAG,
    status=204,
)
async def delete_domain(call: Call[None]) -> web.Response:
    await sending_domains.delete(call.state.pool, call.org_id, call.path_uuid("domain_id"))
    return web.Response(status=204)
