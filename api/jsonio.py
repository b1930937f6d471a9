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


def decode(body: bytes, type_: type[T]) -> T:
    """Decode and validate a request body; errors name the top-level field at fault."""
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        value: T = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise errors.InvalidJson(f"the request body is not valid JSON: {exc}") from exc
    return value


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
