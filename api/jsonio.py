"""JSON out through orjson (RFC 3339 UTC timestamps with `Z`), and JSON in through msgspec."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from shared import errors
from shared.jsonutil import dumps

T = TypeVar("T")


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(value), status=status, content_type="application/json", headers=headers)


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}
_PATH = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)")
_UNKNOWN = re.compile(r"unknown field `([^`]+)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")


# What Postgres and the jsonb codec can store: no NUL in text, integers within 64 bits, and
# nesting well inside orjson's recursion limit. Checked here, per request, because a value
# that fails later would fail a whole batch of other clients' sends with it.
MAX_DEPTH = 32
_INT64 = range(-(2**63), 2**63)
_LONG_NUMBER = re.compile(rb"\d{19,}")


def decode(body: bytes, type_: type[T]) -> T:
    """Decode and validate a request body; errors name the top-level field at fault."""
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    if b"\\u0000" in body:
        raise errors.ValidationFailed("strings must not contain NUL (\\u0000)", fields={"body": ["contains NUL"]})
    try:
        value: T = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise errors.InvalidJson(f"the request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise _too_deep() from exc
    # The full walk only when the bytes suggest a long number or deep nesting.
    if _LONG_NUMBER.search(body) or body.count(b"{") + body.count(b"[") > MAX_DEPTH:
        _check_storable(msgspec.to_builtins(value), 0)
    return value


def _too_deep() -> errors.ValidationFailed:
    return errors.ValidationFailed(
        f"JSON nested deeper than {MAX_DEPTH} levels", fields={"body": ["nested too deeply"]}
    )


def _check_storable(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _too_deep()
    if isinstance(value, dict):
        for item in value.values():
            _check_storable(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_storable(item, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        raise errors.ValidationFailed(
            "integers must fit in 64 bits (send larger numbers as strings)", fields={"body": ["integer out of range"]}
        )


def validation_error(text: str) -> errors.ValidationFailed:
    """Map msgspec's one-line message to `{"field": ["problem"]}` keyed by top-level field."""
    problem = text.split(" - at `")[0]
    at_path = _PATH.search(text)
    if at_path:
        field = at_path.group(1)
    else:
        named = _UNKNOWN.search(text) or _MISSING.search(text)
        field = named.group(1) if named else "body"
    return errors.ValidationFailed(f"{field}: {problem}", fields={field: [problem]})
