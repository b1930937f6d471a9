"""JSON out through orjson: RFC 3339 UTC timestamps with `Z`, UUIDs as strings."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import orjson

_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=_OPTIONS)


def _default(value: Any) -> Any:
    # asyncpg returns its own UUID subclass, which orjson does not take natively.
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")
