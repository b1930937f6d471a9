"""Liquid rendering in a sandbox, with parsed templates cached.

Every text field of a template is Liquid. Variable values are passed as data, never
parsed as template code, so a value of `{{ secret }}` renders literally. HTML bodies
render with auto-escaping (a value `<b>` shows as text, not markup); subjects, text
bodies and WhatsApp parameters render raw, as they are not HTML.

Parsing is bounded. python-liquid's lexer is one regular expression whose scans can run
to the end of the source from every delimiter that is never closed, and backtrack over
whitespace-only markup: `"{{" * 8000` took 15 s, and 256 KiB about half an hour. Before a
source reaches it, `_precheck` refuses, in one linear pass, exactly what makes it
superlinear (see there); what is left lexes and parses in time linear in its length.
Large sources are then parsed in a checker process (`check_syntax_async`), so that a
request's check never holds the api's event loop.

Rendering is bounded by the environment (loop, output, namespace and range limits, below)
and, since a filter can still be handed work far beyond them, by the worker running it in
a child process with a CPU and memory limit (worker/render_sandbox.py).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import functools
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import liquid
from liquid.exceptions import LiquidError
from liquid.token import TOKEN_EXPRESSION, TOKEN_TAG

from shared import errors

# A range literal (or any sequence) handed to a filter is refused past this many items: the
# loop limit bounds `for`, this bounds `(1..400000000) | sum` and the like.
MAX_FILTER_ITEMS = 10_000
# A filter's result is refused past this many characters (or items): the output stream limit
# only counts what is written out, not what an `assign` or `capture` keeps.
MAX_FILTER_RESULT = 1_000_000
# Whitespace-only markup (`{{    }}`, `{% else      %}`) costs the lexer more than the square
# of its length; more than this much whitespace there is refused (a real template has a few;
# at 16, 200 KB of such markup lexes in about 0.1 s).
MAX_MARKUP_WHITESPACE = 16
# The lexer matches one markup in one regular-expression call, which holds the GIL (and so
# any event loop in the process) throughout: about 3 ms per 10,000 characters.
MAX_MARKUP_LENGTH = 10_000
# A run of blanks in a `{% liquid %}` tag costs its line splitter the square of its length.
MAX_LIQUID_TAG_BLANKS = 64
# Sources up to this long are parsed inline (well under a millisecond); longer ones in a
# checker process (`check_syntax_async`).
INLINE_PARSE_MAX = 4_000
# How often the checker process looks whether the api process that made it is still there.
PARENT_CHECK_S = 1.0


class TemplateTooLarge(LiquidError):
    """A filter was given, or would produce, more than the sandbox allows."""


def _bounded(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)  # keeps `with_context` / `with_environment` markers
    def call(*args: Any, **kwargs: Any) -> Any:
        for arg in args:
            if isinstance(arg, range | list | tuple | dict | str) and len(arg) > MAX_FILTER_RESULT:
                raise TemplateTooLarge(f"filter {name}: input too large ({len(arg)} items)", token=None)
            if isinstance(arg, range) and len(arg) > MAX_FILTER_ITEMS:
                raise TemplateTooLarge(
                    f"filter {name}: a range of {len(arg)} items (at most {MAX_FILTER_ITEMS})", token=None
                )
        result = func(*args, **kwargs)
        if isinstance(result, range | list | tuple | str) and len(result) > MAX_FILTER_RESULT:
            raise TemplateTooLarge(f"filter {name}: result too large ({len(result)} items)", token=None)
        return result

    return call


class _SandboxedEnvironment(liquid.Environment):
    # Bounds so that one template cannot spin a worker or fill its memory.
    loop_iteration_limit = 10_000
    output_stream_limit = 1_000_000
    context_depth_limit = 30
    local_namespace_limit = 100_000

    def setup_tags_and_filters(self, *, extra: bool = False) -> None:
        super().setup_tags_and_filters(extra=extra)
        self.filters = {name: _bounded(name, func) for name, func in self.filters.items()}


_PLAIN = _SandboxedEnvironment(autoescape=False)
_HTML = _SandboxedEnvironment(autoescape=True)

# What the lexer's expression tries at a `{%`: a raw or doc block's opening and closing tags.
_BLOCK_TAG = re.compile(r"\{%-?\s*+(raw|endraw|doc|enddoc)\s*+-?%\}")
# Markup with nothing but whitespace inside (group 1): `{{ }}`, `{%- else -%}`.
_BLANK_MARKUP = re.compile(r"\{\{-?(\s*+)-?\}\}|\{%-?\s*+(?:#|\w++)(\s*+)-?%\}")


def _line_of(source: str, index: int) -> int:
    return source.count("\n", 0, index) + 1


def _unclosed(source: str, opening: str, closing: str) -> int | None:
    """Where an `opening` with no `closing` anywhere after it starts, if there is one."""
    last_close = source.rfind(closing)
    at = source.find(opening) if last_close < 0 else source.find(opening, max(0, last_close - 1))
    return None if at < 0 else at


def _overlong(source: str, opening: str, closing: str) -> int | None:
    """Where an `opening` more than MAX_MARKUP_LENGTH from the next `closing` starts, if any."""
    if len(source) <= MAX_MARKUP_LENGTH:
        return None
    closes = [m.start() for m in re.finditer(re.escape(closing), source)]
    for m in re.finditer(re.escape(opening), source):
        after = bisect.bisect_left(closes, m.start() + len(opening))
        if after < len(closes) and closes[after] - m.start() > MAX_MARKUP_LENGTH:
            return m.start()
    return None


def _precheck(source: str) -> str | None:
    """Why the lexer could take more than linear time on `source` (None: it cannot).

    The lexer, at each token, tries: a raw/doc block (its opening tag, then a lazy scan for
    the closing one), an output `{{ ... }}` (a scan for the first `}}`), a tag `{% name ... %}`
    (a scan for the first `%}`), else text up to the next `{{` or `{%`. A scan that finds
    its closer consumes what it scanned; one that finds none scans to the end for nothing,
    and, when the text up to the next delimiter does not start with `{{` / `{%` (`{{{{...`,
    or anything inside a comment block), lexing carries on from the next character and
    repeats it. So every delimiter must have its closer somewhere after it: then every
    scan ends at a closer and consumes what it read. The one other superlinear case is
    markup that is only whitespace: the lexer backtracks its leading whitespace, rescanning
    the rest each time. Checked here in a few linear passes (no backtracking: possessive
    quantifiers). Liquid would refuse most of these anyway; it accepts a stray `{{` only
    inside raw or comment blocks, which are refused here too.
    """
    for opening, closing in (("{{", "}}"), ("{%", "%}")):
        at = _unclosed(source, opening, closing)
        if at is not None:
            return f"'{opening}' on line {_line_of(source, at)} is never closed by '{closing}'"
        at = _overlong(source, opening, closing)
        if at is not None:
            return f"markup on line {_line_of(source, at)} is longer than {MAX_MARKUP_LENGTH} characters"
    last_close: dict[str, int] = {}
    last_open: dict[str, re.Match[str]] = {}
    for m in _BLOCK_TAG.finditer(source):
        name = m.group(1)
        if name.startswith("end"):
            last_close[name[3:]] = m.start()
        else:
            last_open[name] = m
    for name, m in last_open.items():
        if last_close.get(name, -1) < m.end():
            return f"'{name}' on line {_line_of(source, m.start())} has no 'end{name}' after it"
    for m in _BLANK_MARKUP.finditer(source):
        blank = m.group(1) if m.group(1) is not None else m.group(2)
        if len(blank) > MAX_MARKUP_WHITESPACE:
            return (
                f"markup on line {_line_of(source, m.start())} holds only whitespace "
                f"({len(blank)} characters; at most {MAX_MARKUP_WHITESPACE})"
            )
    return None


# Inside an expression, the lexer looks ahead from every `(` for a `..` (a range literal)
# without consuming what it read, and from every `['` / `["` for its closing quote and `]`.
_RANGE_DOTS = re.compile(r"(?=\.\.)")
_QUOTED_INDEX = re.compile(r"\[\s*+([\"'])")
_QUOTED_INDEX_END = {"'": re.compile(r"'\s*+\]"), '"': re.compile(r'"\s*+\]')}
# Lines of a `{% liquid %}` tag are split by a lazy pattern that backtracks over blanks.
_LIQUID_TAG_BLANKS = re.compile(rf"[ \t\r]{{{MAX_LIQUID_TAG_BLANKS + 1},}}")
# Characters the expression lexer may scan in all, over a whole source (a few ms of work):
# a template spends a handful per `(` or `['`.
MAX_EXPRESSION_SCAN = 2_000_000


def _scan_cost(expression: str) -> int:
    """An upper bound of what the expression lexer's look-aheads read in `expression`."""
    cost = 0
    if "(" in expression:
        dots = [m.start() for m in _RANGE_DOTS.finditer(expression)]
        for m in re.finditer(r"\(", expression):
            after = bisect.bisect_left(dots, m.start() + 2)
            cost += (dots[after] if after < len(dots) else len(expression)) - m.start()
    if "[" in expression:
        ends = {q: [m.end() for m in pattern.finditer(expression)] for q, pattern in _QUOTED_INDEX_END.items()}
        for m in _QUOTED_INDEX.finditer(expression):
            found = ends[m.group(1)]
            after = bisect.bisect_left(found, m.end() + 2)
            cost += (found[after] if after < len(found) else len(expression)) - m.start()
    return cost


def _expression_problem(source: str) -> str | None:
    """Why parsing the expressions of `source` could take more than linear time (None: it cannot).

    Runs the lexer (linear once `_precheck` has passed) and bounds, over every expression,
    what the expression lexer's look-aheads will read."""
    cost = 0
    tag = ""
    try:
        for token in _PLAIN.tokenizer()(source):
            if token.kind == TOKEN_TAG:
                tag = token.value
            elif token.kind == TOKEN_EXPRESSION:
                cost += _scan_cost(token.value)
                if cost > MAX_EXPRESSION_SCAN:
                    return f"expressions too complex (line {_line_of(source, token.start_index)})"
                if tag == "liquid" and _LIQUID_TAG_BLANKS.search(token.value):
                    return (
                        f"'liquid' tag on line {_line_of(source, token.start_index)} has a run of more than "
                        f"{MAX_LIQUID_TAG_BLANKS} blanks"
                    )
    except LiquidError:
        return None  # the parse reports it
    return None


@functools.lru_cache(maxsize=4096)
def _parse(source: str, html: bool) -> liquid.BoundTemplate:
    problem = _precheck(source) or _expression_problem(source)
    if problem is not None:
        raise liquid.exceptions.LiquidSyntaxError(problem, token=None)
    return (_HTML if html else _PLAIN).from_string(source)


def parse(source: str, *, html: bool = False) -> liquid.BoundTemplate:
    """Parse (cached by source text); a syntax error becomes a validation error."""
    try:
        return _parse(source, html)
    except LiquidError as exc:
        raise errors.ValidationFailed(f"Liquid syntax error: {exc}") from exc


def check_syntax(fields: Mapping[str, str | None]) -> dict[str, list[str]]:
    """{field: [problem]} for every field whose Liquid does not parse."""
    problems: dict[str, list[str]] = {}
    for name, source in fields.items():
        if not source:
            continue
        try:
            _parse(source, False)
        except LiquidError as exc:
            problems[name] = [f"Liquid syntax error: {exc}"]
        else:
            _globals_of(source)  # warmed here, often off the loop, for the send path's `variables_used`
    return problems


_checker: concurrent.futures.ProcessPoolExecutor | None = None
# Variables of sources a checker process parsed, so that the send path's `variables_used`
# (on the event loop) finds them without parsing again. Bounded like the parse cache.
_KNOWN_GLOBALS: dict[str, frozenset[str]] = {}
_KNOWN_GLOBALS_MAX = 4096


def start_checker() -> None:
    """Start the process that checks large sources (a lifecycle hook of the api: once per
    process, before serving). Spawned, not forked: the api process has threads and a loop."""
    global _checker
    if _checker is None:
        _checker = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )
        _checker.submit(check_syntax, {}).result()  # imported and ready before the first request


def _exit_with_parent(parent_pid: int) -> None:
    """In the checker: end when the api process is gone (killed with no chance to stop us),
    instead of waiting forever on a queue nobody writes to."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def stop_checker() -> None:
    global _checker
    checker, _checker = _checker, None
    if checker is not None:
        checker.shutdown(wait=True, cancel_futures=True)


async def check_syntax_async(fields: Mapping[str, str | None]) -> dict[str, list[str]]:
    """`check_syntax` for a request handler: large sources are parsed in another process.

    Parsing 200 KB of tags holds a core for up to a second; on a thread of this process it
    would still take the GIL from the event loop for much of that (measured: /healthz waited
    50-215 ms). In a process of its own it takes nothing from the loop, and concurrent checks
    of large sources queue there instead of sharing the loop's core. Small sources, the
    common case, are parsed inline (well under a millisecond).
    """
    if sum(len(source) for source in fields.values() if source) <= INLINE_PARSE_MAX:
        return check_syntax(fields)
    if _checker is None:
        start_checker()  # outside the api (a CLI, a test): started on first use
    assert _checker is not None
    try:
        problems, known = await asyncio.get_running_loop().run_in_executor(_checker, _check_in_child, dict(fields))
    except concurrent.futures.process.BrokenProcessPool:
        # The checker died (killed, out of memory): a new one for the next request; this one
        # is answered as unparseable rather than parsed on the loop.
        stop_checker()
        return {name: ["Liquid syntax error: the template could not be checked"] for name, src in fields.items() if src}
    if len(_KNOWN_GLOBALS) + len(known) > _KNOWN_GLOBALS_MAX:
        _KNOWN_GLOBALS.clear()
    _KNOWN_GLOBALS.update(known)
    return problems


def _check_in_child(fields: Mapping[str, str | None]) -> tuple[dict[str, list[str]], dict[str, frozenset[str]]]:
    problems = check_syntax(fields)
    known = {source: _globals_of(source) for name, source in fields.items() if source and name not in problems}
    return problems, known


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
    # Static analysis walks the whole template; the send path asks on every trigger. A stored
    # source that does not parse (saved before a check refused it) reads no variables: it
    # fails at rendering, with the reason, rather than failing every read of its broadcast.
    known = _KNOWN_GLOBALS.get(source)
    if known is not None:
        return known
    try:
        return frozenset(_parse(source, False).global_variables())
    except LiquidError:
        return frozenset()


def render(source: str | None, data: Mapping[str, Any], *, html: bool = False) -> str:
    if not source:
        return ""
    if "{" not in source:
        # No markup: Liquid would give the text back as it is (a sender address, a name); its
        # per-render set-up is most of the cost of such a field.
        return source
    try:
        return parse(source, html=html).render(**data)
    except LiquidError as exc:
        raise errors.ValidationFailed(f"template failed to render: {exc}") from exc


# Joins the sources `render_all` renders together: a character no stored template holds in
# practice, and one a value holding would give away (its output would split in too many).
_JOIN = "\x00"


def render_all(sources: Sequence[str | None], data: Mapping[str, Any]) -> list[str] | None:
    """`[render(source, data) for source in sources]` (raw, not HTML) in one Liquid render, or
    None: then the caller renders them one by one, which also gives any error as it would.

    A render's set-up (its context, output buffer, globals) costs more than a short field:
    an email's subject, preheader and text part's tags are 3 or more renders of a few
    characters each. Sources of output tags only (no `{%` tag, whose `assign` or `capture`
    would carry from one source into the next, nor `{#` comment) render alone exactly as they
    do side by side, NUL between them: whitespace control stops at the NUL. A value holding
    a NUL makes the output split in too many parts, and the sources are rendered one by one.
    """
    marked = [source for source in sources if source and "{" in source]
    if len(marked) < 2 or any("{%" in s or "{#" in s or _JOIN in s for s in marked):
        return None
    try:
        parts = parse(_JOIN.join(marked)).render(**data).split(_JOIN)
    except (LiquidError, errors.ValidationFailed):
        return None
    if len(parts) != len(marked):
        return None
    rendered = iter(parts)
    return [(next(rendered) if "{" in source else source) if source else "" for source in sources]


# Filters whose output is at most a small multiple of their input, whatever their arguments:
# a template made only of output tags using these (no tags, no ranges, no indexes) renders in
# time and memory linear in its own size and its variables' (both bounded by the request body
# limit), so it cannot spin or fill memory. Everything else (append, replace, join, split,
# times, loops...) can amplify, and is rendered under the sandbox's limits.
_LINEAR_FILTERS = (
    "upcase|downcase|capitalize|strip|lstrip|rstrip|escape|escape_once|url_encode|strip_html"
    "|strip_newlines|truncate|truncatewords|size|date|default"
)
_LITERAL = r"(?:\"[^\"{}]*\"|'[^'{}]*'|-?\d+(?:\.\d+)?|true|false|nil)"
_LINEAR_OUTPUT = re.compile(
    r"\{\{-?\s*[A-Za-z_][\w.]*"
    rf"(?:\s*\|\s*(?:{_LINEAR_FILTERS})(?:\s*:\s*{_LITERAL}(?:\s*,\s*{_LITERAL})*)?)*"
    r"\s*-?\}\}"
)


@functools.lru_cache(maxsize=4096)
def is_linear(source: str | None) -> bool:
    """True when rendering `source` is bounded by construction (see `_LINEAR_FILTERS`)."""
    if not source:
        return True
    if "{%" in source:
        return False
    rest = _LINEAR_OUTPUT.sub("", source)
    return "{{" not in rest and "{%" not in rest
