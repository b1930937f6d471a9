"""Named SQL statements, kept in `shared/sql/*.sql` and loaded once.

Each statement is headed `-- name: some_name` followed by a one-line purpose comment.
`Queries` exposes them as attributes (`Q.some_name`). A malformed file, an empty statement or
a name defined twice stops the process at import. A `Q.<name>` that no file defines is found
by tests/test_data_layer.py, which reads every module for them (and finds statements no code
uses), and tests/test_schema.py prepares every statement against the schema: neither waits for
the first request that reaches the line.

Statements run in shared/'s data-layer functions (`shared.db.translated`), not in handlers.
"""

from __future__ import annotations

import re
from importlib import resources

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split one file's text into {name: statement}."""
    out: dict[str, str] = {}
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        statement = "\n".join(lines).strip().rstrip(";")
        if not statement:
            raise ValueError(f"SQL statement {name!r} is empty")
        if name in out:
            raise ValueError(f"SQL statement {name!r} is defined twice")
        out[name] = statement
    return out


def load_all() -> dict[str, str]:
    statements: dict[str, str] = {}
    folder = resources.files("shared") / "sql"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, statement in parse(entry.read_text(encoding="utf-8")).items():
            if name in statements:
                raise ValueError(f"SQL statement {name!r} is defined in two files")
            statements[name] = statement
    return statements


class Queries:
    """Attribute access to every named statement; an unknown name is an AttributeError."""

    def __init__(self, statements: dict[str, str]) -> None:
        self._by_name = statements

    @classmethod
    def load(cls) -> Queries:
        return cls(load_all())

    def __getattr__(self, name: str) -> str:
        try:
            return self._by_name[name]
        except KeyError:
            raise AttributeError(f"no SQL statement named {name!r} in shared/sql/") from None

    def names(self) -> list[str]:
        return sorted(self._by_name)


# Loaded at import: a malformed or duplicated statement stops the process at start-up.
Q = Queries.load()
