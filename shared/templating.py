"""Liquid rendering in a sandbox, with parsed templates cached.

Every text field of a template is Liquid. Variable values are passed as data, never
parsed as template code, so a value of `{{ secret }}` renders literally. HTML bodies
render with auto-escaping (a value `<b>` shows as text, not markup); subjects, text
bodies and WhatsApp parameters render raw, as they are not HTML.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import liquid

from shared import errors


class _SandboxedEnvironment(liquid.Environment):
    # Bounds so that one template cannot spin a worker or fill its memory.
    loop_iteration_limit = 10_000
    output_stream_limit = 1_000_000
    context_depth_limit = 30
    local_namespace_limit = 100_000


_PLAIN = _SandboxedEnvironment(autoescape=False)
_HTML = _SandboxedEnvironment(autoescape=True)


@functools.lru_cache(maxsize=4096)
def _parse(source: str, html: bool) -> liquid.BoundTemplate:
    return (_HTML if html else _PLAIN).from_string(source)


def parse(source: str, *, html: bool = False) -> liquid.BoundTemplate:
    """Parse (cached by source text); a syntax error becomes a validation error."""
    try:
        return _parse(source, html)
    except liquid.exceptions.LiquidError as exc:
        raise errors.ValidationFailed(f"Liquid syntax error: {exc}") from exc


def check_syntax(fields: Mapping[str, str | None]) -> dict[str, list[str]]:
    """{field: [problem]} for every field whose Liquid does not parse."""
    problems: dict[str, list[str]] = {}
    for name, source in fields.items():
        if not source:
            continue
        try:
            _parse(source, False)
        except liquid.exceptions.LiquidError as exc:
            problems[name] = [f"Liquid syntax error: {exc}"]
    return problems


def variables_used(sources: Iterable[str | None]) -> frozenset[str]:
    """Top-level names the templates read from outside (not ones they assign themselves)."""
    return _globals_of_all(tuple(source for source in sources if source))


@functools.lru_cache(maxsize=4096)
def _globals_of_all(sources: tuple[str, ...]) -> frozenset[str]:
    # Asked on every trigger for each template: one cache lookup (the strings' hashes are
    # cached by Python) instead of one per field and a new set.
    return frozenset().union(*(_globals_of(source) for source in sources))


@functools.lru_cache(maxsize=4096)
def _globals_of(source: str) -> frozenset[str]:
    # Static analysis walks the whole template; the send path asks on every trigger.
    return frozenset(parse(source).global_variables())


def render(source: str | None, data: Mapping[str, Any], *, html: bool = False) -> str:
    if not source:
        return ""
    try:
        return parse(source, html=html).render(**data)
    except liquid.exceptions.LiquidError as exc:
        raise errors.ValidationFailed(f"template failed to render: {exc}") from exc
