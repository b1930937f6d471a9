"""Contacts: create, read, change, add channels."""

from __future__ import annotations

import msgspec
from aiohttp import web

from api.broadcasts import schemas
from api.jsonio import json_response
from api.routing import Call, route
from shared import contacts
from shared.domain import Channel

TAG = "contacts"


@route(
    "POST",
    "/orgs/{org_id}/contacts",
    summary="Create a contact with its channels",
    scope="admin",
    tag=TAG,
    body=schemas.ContactCreate,
    response=schemas.ContactOut,
    status=201,
    error_statuses=(409,),
)
async def create_contact(call: Call[schemas.ContactCreate]) -> web.Response:
    body = call.body
    email = contacts.normalize(Channel.email, body.email) if body.email else None
    phone = contacts.normalize(Channel.whatsapp, body.phone) if body.phone else None
    out = await contacts.create(
        call.state.pool,
        call.org_id,
        name=body.name,
        email=email,
        phone=phone,
        status=body.status,
        properties=body.properties,
    )
    return json_response(out, status=201)


@route(
    "GET",
    "/orgs/{org_id}/contacts/{contact_id}",
    summary="One contact",
    scope="read",
    tag=TAG,
    response=schemas.ContactOut,
)
async def get_contact(call: Call[None]) -> web.Response:
    return json_response(await contacts.get(call.state.pool, call.org_id, call.path_uuid("contact_id")))


@route(
    "PATCH",
    "/orgs/{org_id}/contacts/{contact_id}",
    summary="Change name, status or properties",
    scope="admin",
    tag=TAG,
    body=schemas.ContactUpdate,
    response=schemas.ContactOut,
)
async def update_contact(call: Call[schemas.ContactUpdate]) -> web.Response:
    body = call.body
    name_given = body.name is not msgspec.UNSET
    out = await contacts.update(
        call.state.pool,
        call.org_id,
        call.path_uuid("contact_id"),
        name=None if body.name is msgspec.UNSET else body.name,
        name_given=name_given,
        status=None if body.status is msgspec.UNSET else body.status,
        properties=None if body.properties is msgspec.UNSET else body.properties,
    )
    return json_response(out)


@route(
    "POST",
    "/orgs/{org_id}/contacts/{contact_id}/channels",
    summary="Add an email or WhatsApp channel",
    scope="admin",
    tag=TAG,
    body=schemas.ChannelCreate,
    response=schemas.ChannelOut,
    status=201,
    error_statuses=(409,),
)
async def add_channel(call: Call[schemas.ChannelCreate]) -> web.Response:
    address = contacts.normalize(call.body.type, call.body.address, field="address")
    out = await contacts.add_channel(
        call.state.pool, call.org_id, call.path_uuid("contact_id"), call.body.type, address
    )
    return json_response(out, status=201)
