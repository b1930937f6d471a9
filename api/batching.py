"""What the two batch routes share (`POST /orgs/.../send/batch` and
`POST /api/v1/transactionals/batch.json`): the request's context the accept service takes,
and the answer's entries, one per item in order, each refused item's error in its own
surface's shape (`api.errors.answer`), so the two batches stay alike where they should.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypedDict, TypeVar

from api import errors as http_errors
from api import idempotency
from api.middleware import REQUEST_ID
from api.routing import Call
from shared import errors

T = TypeVar("T")


class AcceptContext(TypedDict):
    """The keyword arguments `Acceptor.trigger_many` and `Acceptor.transactional_many` take
    from the request (passed as `**accept_context(call)`)."""

    request_id: str | None
    claim: idempotency.Claim | None
    test: bool


def accept_context(call: Call[Any]) -> AcceptContext:
    """The request's id, its Idempotency-Key claim (if it came with one), and whether its key is a test key."""
    return AcceptContext(
        request_id=call.request[REQUEST_ID],
        claim=idempotency.claim_of(call.request),
        test=call.key is not None and call.key.test,
    )


def entries(
    results: Sequence[T | errors.TidingsError],
    surface: http_errors.Surface,
    accepted: Callable[[T], dict[str, Any]],
) -> list[dict[str, Any]]:
    """One entry per item, in order: `index` (its place in the request) with `accepted(result)`'s
    fields, or with its error as `surface` answers errors (`error` or `errors`)."""
    data: list[dict[str, Any]] = []
    for index, result in enumerate(results):
        if isinstance(result, errors.TidingsError):
            _, answer = http_errors.answer(result, surface)
            data.append({"index": index, **answer})
        else:
            data.append({"index": index, **accepted(result)})
    return data
