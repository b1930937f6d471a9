"""The Broadcasts API's batch send: up to 500 triggers of one broadcast in one request.

Each item is a send body (`schemas.SendRequest`, without `background`: a batch is always
answered at once) decoded, validated and resolved on its own, so that one bad item is
answered in its place and never sinks the others. The accepted ones are committed
together by the accept service (`Acceptor.trigger_many`): one statement for all of them.
The batch is one request against the rate limit, and an Idempotency-Key covers it whole.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web
from msgspec import Meta

from api import batching, jsonio
from api import errors as http_errors
from api.broadcasts import schemas
from api.jsonio import json_response
from api.routing import Call, batch_body_limit, route
from shared import errors, sending
from shared.accept import MAX_BATCH_ITEMS

TAG = "send"
BACKGROUND_PROBLEM = "batch items are always sent in the background; omit background"

# Kept raw until each is decoded on its own; documented as the single send's body.
RawItem = Annotated[msgspec.Raw, Meta(extra_json_schema={"$ref": "#/components/schemas/SendRequest"})]


class BatchSendRequest(schemas.Strict):
    items: Annotated[list[RawItem], Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


class BatchItemOut(msgspec.Struct, forbid_unknown_fields=True):
    """An accepted item (`send_id`, `recipients`) or a refused one (`error`)."""

    index: int
    send_id: str | None = None
    recipients: list[schemas.SendRecord] | None = None
    error: schemas.ErrorBody | None = None


class BatchSendResponse(msgspec.Struct, forbid_unknown_fields=True):
    data: list[BatchItemOut]


class _DecodedBatch(schemas.Strict):
    """The batch with its items decoded as the single send's body in one call (`decode_items`)."""

    items: list[schemas.SendRequest]


def decode_items(body: bytes, raw_items: list[msgspec.Raw]) -> list[sending.Trigger | errors.TidingsError]:
    """Every item as `decode_item` would answer it. A batch whose items all decode, carry no
    `background` and nothing `jsonio.decode` checks per value is decoded in one msgspec call
    (≈ a tenth of the api's CPU per item, measured under P1b); any other goes item by item,
    so that each fault is its own item's answer."""
    if b'"background"' not in body:
        whole = jsonio.decode_whole(body, _DecodedBatch)
        if (
            whole is not None
            and len(whole.items) == len(raw_items)
            and not any(jsonio.nests(item.variables) for item in whole.items)
        ):
            return list(whole.items)
    return [decode_item(raw) for raw in raw_items]


def decode_item(raw: msgspec.Raw) -> sending.Trigger | errors.TidingsError:
    """One item as the single send's body (whatever fields that gains), or why not."""
    body = bytes(raw)
    try:
        item = jsonio.decode(body, schemas.SendRequest)
    except errors.TidingsError as exc:
        return exc
    if b'"background"' in body and "background" in msgspec.json.decode(body):
        return errors.ValidationFailed(f"background: {BACKGROUND_PROBLEM}", fields={"background": [BACKGROUND_PROBLEM]})
    return item


@route(
    "POST",
    "/orgs/{org_id}/broadcasts/{broadcast_id}/send/batch",
    summary="Trigger up to 500 sends of one broadcast at once (always in the background)",
    scope="write",
    tag=TAG,
    body=BatchSendRequest,
    response=BatchSendResponse,
    status=202,
    idempotent=True,
    rate_limited=True,
    body_limit=batch_body_limit,
)
async def send_batch(call: Call[BatchSendRequest]) -> web.Response:
    """202 with one entry per item, in order: its send (messages `queued`) or its error."""
    state = call.state
    results = await state.acceptor.trigger_many(
        call.org_id,
        call.path_uuid("broadcast_id"),
        decode_items(call.raw_body, call.body.items),
        source="api",
        **batching.accept_context(call),
    )
    base = state.settings.public_base
    data = batching.entries(results, http_errors.Surface.broadcasts, lambda sent: sending.send_json(base, sent))
    return json_response({"data": data}, status=202)
