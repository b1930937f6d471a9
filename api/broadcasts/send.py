"""The send endpoint: rate limit, validate, commit, enqueue, and (optionally) wait."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from api import idempotency
from api.broadcasts import schemas
from api.jsonio import json_response
from api.middleware import REQUEST_ID
from api.routing import Call, route
from api.state import State
from shared import sending
from shared.domain import SETTLED

TAG = "send"


def record_json(base: str, send: sending.PreparedSend, r: sending.Record) -> dict[str, Any]:
    return {
        "id": r.id,
        "template_id": r.template_id,
        "channel": r.channel,
        "contact_id": send.contact_id,
        "contact_channel_id": r.contact_channel_id,
        "to": r.to,
        "status": r.status,
        "external_message_id": r.external_message_id,
        "error": r.error,
        "status_url": sending.status_url(base, send.org_id, r.id),
    }


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
)
async def send(call: Call[schemas.SendRequest]) -> web.Response:
    body = call.body
    state = call.state
    trigger = sending.Trigger(
        contact_channel_id=body.contact_channel_id,
        contact_id=body.contact_id,
        phone=body.phone,
        email=body.email,
        name=body.name,
        variables=body.variables,
        template_ids=body.template_ids,
        source="api",
        request_id=call.request[REQUEST_ID],
    )
    claim = idempotency.claim_of(call.request)
    if claim is not None and claim.committed_send_id is not None:
        # This key's first request committed a send and died before answering: that send is
        # the answer (as it stands now), never a second one.
        committed = await sending.load_committed(state.pool, call.org_id, claim.committed_send_id)
        if committed is not None:
            settled = all(r.status in SETTLED or r.error for r in committed.records)
            return _answer(state, committed, 200 if settled and not body.background else 202)
    prepared = await sending.prepare(
        state.pool,
        call.org_id,
        call.path_uuid("broadcast_id"),
        trigger,
        cache=state.broadcast_cache,
        contact_cache=state.contact_cache,
        public_base=state.settings.public_base,
    )
    if claim is not None:
        prepared.fence = claim.fence

    status = 202 if body.background else 200
    send_key = str(prepared.send_id)
    # Registered before the send is committed, so the worker's "done" cannot be missed.
    queued = prepared.queued
    waiter = state.waiter.register(send_key, (str(r.id) for r in queued)) if queued and not body.background else None
    try:
        accepted = await state.send_pipeline.accept(prepared, notify=waiter is not None)
        if waiter is not None and len(prepared.queued) < len(queued):
            state.waiter.expect(send_key, (str(r.id) for r in prepared.queued))
        if waiter is not None and not prepared.queued:
            pass  # everything was rejected at commit (suppressed or redacted): nothing to wait for
        elif waiter is not None and not await accepted.rung():
            status = 202  # kept, and delivered, but Redis is unreachable: no outcome will be published
        elif waiter is not None:
            try:
                outcome = await asyncio.wait_for(waiter, timeout=state.settings.sync_send_timeout_s)
            except TimeoutError:
                # Not all settled in time: 202, with those that were reported.
                _apply_outcome(prepared, state.waiter.reported(send_key))
                status = 202
            else:
                _apply_outcome(prepared, outcome)
                if any(r.status not in SETTLED and not r.error for r in prepared.records):
                    status = 202
    finally:
        if waiter is not None:
            state.waiter.forget(send_key)

    return _answer(state, prepared, status)


def _answer(state: State, send: sending.PreparedSend, status: int) -> web.Response:
    base = state.settings.public_base
    return json_response(
        {"send_id": send.send_id, "recipients": [record_json(base, send, r) for r in send.records]},
        status=status,
    )


def _apply_outcome(prepared: sending.PreparedSend, outcome: dict[str, Any]) -> None:
    """Fold the worker's published results into the records (keyed by message id)."""
    for r in prepared.records:
        result = outcome.get(str(r.id))
        if result is not None:
            r.status = result["status"]
            r.external_message_id = result.get("external_message_id")
            r.error = result.get("error")
