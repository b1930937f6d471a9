"""The Transactionals API's batch: up to 500 emails in one request.

Each item is the create body of `POST /api/v1/transactionals.json`, decoded and validated
on its own (its problems answered in its place, in this API's `errors` shape); the
recipients of the valid ones are looked up together and all accepted ones committed in
one transaction by the accept service (`Acceptor.transactional_many`). The batch is one
request against the rate limit, and an Idempotency-Key covers it whole.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import Meta

from api import batching, jsonio
from api import errors as http_errors
from api.jsonio import json_response
from api.routing import Call, batch_body_limit, route
from api.transactionals import schemas
from shared import errors, transactionals
from shared.accept import MAX_BATCH_ITEMS

TAG = "transactionals"

# Kept raw until each is decoded on its own; documented as the single create's body.
RawItem = Annotated[msgspec.Raw, Meta(extra_json_schema={"$ref": "#/components/schemas/TransactionalCreate"})]


class TransactionalBatch(schemas.Lenient):
    transactionals: Annotated[list[RawItem], Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


# One answer entry: `index` with the transactional object's fields (as the single create
# answers it) when accepted, or with `errors` when refused.
Entry = Annotated[
    dict[str, Any],
    Meta(
        extra_json_schema={
            "description": "`index` (the item's place in the request) and either the transactional "
            "object's fields (see TransactionalOut: accepted) or `errors` by field (refused)",
            "properties": {
                "index": {"type": "integer"},
                "errors": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
            },
            "required": ["index"],
        }
    ),
]


class TransactionalBatchOut(msgspec.Struct, forbid_unknown_fields=True):
    data: list[Entry]


def decode_item(raw: msgspec.Raw) -> transactionals.Submission | errors.TidingsError:
    try:
        return jsonio.decode(bytes(raw), schemas.TransactionalCreate)
    except errors.TidingsError as exc:
        return exc


@route(
    "POST",
    "/api/v1/transactionals/batch.json",
    summary="Send up to 500 transactional emails at once",
    scope="write",
    tag=TAG,
    body=TransactionalBatch,
    response=TransactionalBatchOut,
    idempotent=True,
    rate_limited=True,
    body_limit=batch_body_limit,
)
async def create_batch(call: Call[TransactionalBatch]) -> web.Response:
    """200 with one entry per item, in order: the transactional as accepted, or its errors."""
    state = call.state
    results = await state.acceptor.transactional_many(
        call.org_id,
        [decode_item(raw) for raw in call.body.transactionals],
        **batching.accept_context(call),
    )
    base = state.settings.public_base
    data = batching.entries(
        results, http_errors.Surface.transactionals, lambda row: transactionals.transactional_json(row, base)
    )
    return json_response({"data": data})
