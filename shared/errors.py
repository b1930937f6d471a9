"""One exception root for the whole service.

The domain raises these; `api.errors` maps them to HTTP statuses in one place. Nothing
below the api knows a status code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class TidingsError(Exception):
    code = "error"
    default_message = "something went wrong"

    def __init__(
        self,
        message: str | None = None,
        *,
        fields: Mapping[str, Sequence[str]] | None = None,
        extra: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        # Metadata for the client beside the body (e.g. Retry-After); the api decides how to carry it.
        self.headers = dict(headers) if headers else None
        self.fields = {k: list(v) for k, v in fields.items()} if fields else None
        self.extra = dict(extra) if extra else None
        super().__init__(self.message)


class Unauthorized(TidingsError):
    code = "unauthorized"
    default_message = "a valid API key is required (Authorization: Bearer <key>)"


class Forbidden(TidingsError):
    code = "forbidden"
    default_message = "this API key lacks the scope this route needs"


class NotFound(TidingsError):
    code = "not_found"
    default_message = "not found"


class ContactNotFound(NotFound):
    code = "contact_not_found"
    default_message = "no such contact or contact channel in this org"


class InvalidJson(TidingsError):
    code = "invalid_json"
    default_message = "the request body is not valid JSON"


class BodyTooLarge(TidingsError):
    code = "body_too_large"
    default_message = "the request body is larger than 256 KiB"


class RequestTimeout(TidingsError):
    code = "request_timeout"
    default_message = "the request did not arrive in time"


class ValidationFailed(TidingsError):
    code = "validation_error"
    default_message = "the request is not valid"


class TypeImmutable(ValidationFailed):
    code = "type_immutable"
    default_message = "a broadcast's type cannot change after creation"


class NotReady(ValidationFailed):
    code = "not_ready"
    default_message = "the broadcast is not ready to activate"


class RecipientRequired(ValidationFailed):
    code = "recipient_required"
    default_message = "name one recipient: contact_channel_id, contact_id, phone or email"


class RecipientUnsubscribed(ValidationFailed):
    code = "recipient_unsubscribed"
    default_message = "the recipient has unsubscribed; nothing was sent"


class RecipientBlocked(ValidationFailed):
    code = "recipient_blocked"
    default_message = "the recipient is blocked; nothing was sent"


class MissingVariables(ValidationFailed):
    code = "missing_variables"
    default_message = "variables used by the templates have no value and no default"


class IdempotencyKeyReused(ValidationFailed):
    code = "idempotency_key_reused"
    default_message = "this Idempotency-Key was used with a different request body"


class Conflict(TidingsError):
    code = "conflict"
    default_message = "this already exists"


class BroadcastNotActive(Conflict):
    code = "broadcast_not_active"
    default_message = "the broadcast is not active; activate or resume it first"


class NotTransactional(Conflict):
    code = "not_transactional"
    default_message = "marketing broadcasts cannot be triggered one message at a time"


class NotCancelable(Conflict):
    code = "not_cancelable"
    default_message = "only a scheduled message can be canceled"


class IdempotencyKeyInFlight(Conflict):
    code = "idempotency_key_in_flight"
    default_message = "a request with this Idempotency-Key is still being processed"


class RateLimited(TidingsError):
    code = "rate_limited"
    default_message = "too many send requests for this org; retry after the given delay"


class Unavailable(TidingsError):
    code = "unavailable"
    default_message = "a backing service is unavailable"


class DatabaseUnavailable(Unavailable):
    """Postgres could not be reached or stopped answering: nothing was acknowledged, so the
    client may retry. The data layer (`shared.db.translate_errors`) raises it in place of the
    driver's connection errors, and it counts as one of them (`shared.db.UNREACHABLE`) for code
    that retries on those."""

    default_message = "a backing service (Postgres or Redis) is unreachable; retry later"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "1"})
