"""JSON out through orjson (RFC 3339 UTC timestamps with `Z`), and JSON in through msgspec."""

from __future__ import annotations

import re
from collections.abc import Mapping
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
#
# A NUL character (the JSON escape \u0000) is refused, never stripped: Postgres text cannot
# hold it, and quietly changing what a client sent would store and send something it did not
# ask for (and make the stored body disagree with the Idempotency-Key's). No email or WhatsApp
# text needs one. The six characters `\u0000` written as text (JSON `"\\u0000"`) are ordinary
# text and pass.
MAX_DEPTH = 32
_INT64 = range(-(2**63), 2**63)
_LONG_NUMBER = re.compile(rb"\d{19,}")
NOT_UTF8 = "the request body is not valid UTF-8"
NUL_PROBLEM = "must not contain the NUL character (\\u0000)"


def decode(body: bytes, type_: type[T]) -> T:
    """Decode and validate a request body; errors name the top-level field at fault."""
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    if not body.isascii():
        # JSON is UTF-8 (RFC 8259); msgspec checks only the strings it keeps, and raises a
        # UnicodeDecodeError (not a DecodeError) for those. One check of the whole body.
        try:
            body.decode()
        except UnicodeDecodeError:
            raise errors.InvalidJson(NOT_UTF8) from None
    try:
        value: T = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise errors.InvalidJson(f"the request body is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise errors.InvalidJson(NOT_UTF8) from exc
    except RecursionError as exc:
        raise _too_deep() from exc
    # The full walk only when the bytes suggest a NUL, a long number or deep nesting.
    if b"\\u0000" in body or _LONG_NUMBER.search(body) or body.count(b"{") + body.count(b"[") > MAX_DEPTH:
        _check_storable(msgspec.to_builtins(value, enc_hook=_skip_raw))
    return value


def decode_whole(body: bytes, type_: type[T]) -> T | None:
    """`body` decoded as `type_` in one call, when nothing in its bytes needs the storable
    check (`decode` does it per value: a NUL, a long number); None when it does or when it
    does not decode, for the caller to decode its parts one by one with `decode` (whose
    errors name the part at fault). For a batch whose items `decode` would each accept:
    one msgspec call for all of them instead of a call, a copy and these checks per item.
    Nesting is not bounded here: the caller checks what may nest (`nests`)."""
    if b"\\u0000" in body or _LONG_NUMBER.search(body):
        return None
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    try:
        value: T = decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # ValidationError is a DecodeError
        return None
    return value


def nests(value: Mapping[str, Any]) -> bool:
    """Whether a mapping holds a container (so that `decode` may have to bound its depth)."""
    return any(type(v) in _CONTAINERS for v in value.values())


_CONTAINERS = (dict, list)


def _skip_raw(value: Any) -> Any:
    # A batch's items stay raw JSON until each is decoded (and checked) on its own by
    # `decode`, so that a fault in one item is that item's refusal, not the whole batch's.
    if isinstance(value, msgspec.Raw):
        return None
    raise TypeError(f"cannot check a {type(value).__name__}")


def _too_deep(field: str = "body") -> errors.ValidationFailed:
    return errors.ValidationFailed(f"JSON nested deeper than {MAX_DEPTH} levels", fields={field: ["nested too deeply"]})


def _check_storable(value: Any) -> None:
    """Walk each top-level field on its own, so that an error names the field at fault."""
    if isinstance(value, dict):
        for key, item in value.items():
            field = str(key)
            if "\x00" in field:
                raise _nul("body")
            _check_value(item, 1, field)
    else:
        _check_value(value, 0, "body")


def _check_value(value: Any, depth: int, field: str) -> None:
    if depth > MAX_DEPTH:
        raise _too_deep(field)
    if isinstance(value, str):
        if "\x00" in value:
            raise _nul(field)
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                raise _nul(field)
            _check_value(item, depth + 1, field)
    elif isinstance(value, list):
        for item in value:
            if item is not None:  # a batch's raw items come here as None (`_skip_raw`)
                _check_value(item, depth + 1, field)
    elif isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        raise errors.ValidationFailed(
            f"{field}: integers must fit in 64 bits (send larger numbers as strings)",
            fields={field: ["integer out of range"]},
        )


def _nul(field: str) -> errors.ValidationFailed:
    return errors.ValidationFailed(f"{field} {NUL_PROBLEM}", fields={field: [NUL_PROBLEM]})


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
