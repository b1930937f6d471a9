"""The Broadcasts API's send: one trigger, accepted by the accept service (`shared.accept`)."""

from __future__ import annotations

from aiohttp import web

from api import idempotency
from api.broadcasts import schemas
from api.jsonio import json_response
from api.middleware import REQUEST_ID
from api.routing import Call, attachment_body_limit, route
from shared import sending

TAG = "send"


@route(
    "POST",
    "/orgs/{org_id}/broadcasts/{broadcast_id}/send",
    summary="Trigger one transactional send",
    scope="write",
    tag=TAG,
    body=schemas.SendRequest,
    response=schemas.SendResponse,
    idempotent=True,
    rate_limited=True,
    also=(202,),
    body_limit=attachment_body_limit,
)
async def send(call: Call[schemas.SendRequest]) -> web.Response:
    """200 when every message has its outcome; 202 when asked not to wait (`background`), or
    when some are still on their way after `SYNC_SEND_TIMEOUT_S`."""
    state = call.state
    background = call.body.background
    accepted, settled = await state.acceptor.trigger(
        call.org_id,
        call.path_uuid("broadcast_id"),
        call.body,
        source="api",
        request_id=call.request[REQUEST_ID],
        wait=not background,
        claim=idempotency.claim_of(call.request),
        test=call.key is not None and call.key.test,
    )
    status = 200 if settled and not background else 202
    return json_response(sending.send_json(state.settings.public_base, accepted), status=status)
