"""Named SQL statements, kept in `shared/sql/*.sql` and loaded once.

Each statement is headed `-- name: some_name` followed by a one-line purpose comment.
`Queries` exposes them as attributes; asking for a name that no file defines fails at
start-up (`Queries.load`), not on the first request that needs it.
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
    """Attribute access to every named statement; declared names are checked at load."""

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
