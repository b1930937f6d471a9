"""The Transactionals API (Broadcast's model): send one email, and read it back."""

from __future__ import annotations

from aiohttp import web

from api import errors as http_errors
from api import idempotency
from api.jsonio import json_response
from api.middleware import REQUEST_ID
from api.routing import Call, route
from api.transactionals import schemas
from shared import errors, transactionals

TAG = "transactionals"


@route(
    "POST",
    "/api/v1/transactionals.json",
    summary="Send a transactional email (inline content or a template; double opt-in; scheduled)",
    scope="write",
    tag=TAG,
    body=schemas.TransactionalCreate,
    response=schemas.TransactionalOut,
    status=201,
    idempotent=True,
    rate_limited=True,
)
async def create_transactional(call: Call[schemas.TransactionalCreate]) -> web.Response:
    try:
        return await _create(call)
    except errors.TidingsError as exc:
        # Answered here rather than raised, so that an Idempotency-Key replay of a refusal
        # (stored from this response) carries this API's error shape too.
        return json_response(
            http_errors.body_for(exc, http_errors.V1_PREFIX), status=http_errors.status_for(exc), headers=exc.headers
        )


async def _create(call: Call[schemas.TransactionalCreate]) -> web.Response:
    body = call.body
    state = call.state
    claim = idempotency.claim_of(call.request)
    if claim is not None and claim.committed_send_id is not None:
        # This key's first request committed the email and died before answering: that
        # email is the answer, never a second one.
        committed = await transactionals.get_by_send(state.pool, call.org_id, claim.committed_send_id)
        if committed is not None:
            return json_response(transactionals.transactional_json(committed, state.settings.public_base), status=201)
    subscriber = body.subscriber or schemas.SubscriberAttributes()
    submission = transactionals.Submission(
        to=body.to,
        subject=body.subject,
        body=body.body,
        preheader=body.preheader,
        reply_to=body.reply_to,
        template_id=body.template_id,
        include_unsubscribe_link=body.include_unsubscribe_link,
        queue_at=body.queue_at,
        double_opt_in=body.double_opt_in,
        confirmation_template_id=body.confirmation_template_id,
        first_name=subscriber.first_name,
        last_name=subscriber.last_name,
    )
    request = await transactionals.validate(state.pool, call.org_id, submission)
    row = await transactionals.send(
        state.pool,
        state.redis,
        state.settings,
        call.org_id,
        request,
        request_id=call.request[REQUEST_ID],
        fence=claim.fence if claim is not None else None,
    )
    return json_response(transactionals.transactional_json(row, state.settings.public_base), status=201)


@route(
    "GET",
    "/api/v1/transactionals/{id}.json",
    summary="One transactional email: what was sent, its status and its timestamps",
    scope="read",
    tag=TAG,
    response=schemas.TransactionalOut,
)
async def get_transactional(call: Call[None]) -> web.Response:
    row = await transactionals.get(call.state.pool, call.org_id, call.path_uuid("id"))
    if row is None:
        raise errors.NotFound("no such transactional email")
    return json_response(transactionals.transactional_json(row, call.state.settings.public_base))
