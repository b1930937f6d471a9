"""One rule for where SQL runs, read from the source: statements are named in shared/sql/*.sql
and run in shared/'s data-layer functions, never in an api handler.

- Every `Q.<name>` in the code names a statement that exists, so a typo fails here and not on
  the first request that reaches the line (tests/test_schema.py prepares every statement).
- Every named statement is used somewhere: no dead SQL.
- No module of api/ imports asyncpg or shared.sql, nor calls a pool or connection itself: a
  handler parses, calls shared/, and answers; the driver's errors never reach it untranslated.
"""

from __future__ import annotations

import ast
import pathlib
import re
import uuid

import asyncpg
import pytest

from shared import broadcasts, db, errors, orgs
from shared.config import Settings
from shared.sql import Q, Queries

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCANNED = ("api", "worker", "bounces", "shared", "tidings", "tests")

# test_schema.py asks for this name on purpose, to see it fail.
DELIBERATELY_MISSING = {"no_such_statement"}

# Modules of api/ that still run SQL themselves. They belong to the send path, which is being
# rebuilt around one accept service; its statements move into shared/ with it, and this list
# then empties.
STILL_RUNNING_SQL: set[str] = set()

DRIVER_MODULES = ("asyncpg", "shared.sql")
# Pool and connection methods that run a statement or open a transaction, called on something
# named like a pool or a connection (`execute` alone would also match a Redis pipeline's).
DB_METHODS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "acquire", "transaction", "prepare"}
DB_RECEIVER = re.compile(r"(pool|conn|connection)$")


def _modules(*packages: str) -> list[pathlib.Path]:
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def _tree(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _q_names_used() -> dict[str, list[str]]:
    """name -> where (`path:line`) for every `Q.<name>` in the scanned packages."""
    used: dict[str, list[str]] = {}
    for path in _modules(*SCANNED):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Q":
                used.setdefault(node.attr, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return used


def test_every_q_name_in_the_code_is_a_statement() -> None:
    methods = {name for name in vars(Queries) if not name.startswith("_")}
    defined = set(Q.names())
    unknown = {
        name: where
        for name, where in _q_names_used().items()
        if name not in defined and name not in methods and name not in DELIBERATELY_MISSING
    }
    assert unknown == {}, f"no statement of this name in shared/sql/: {unknown}"


def test_every_statement_is_used() -> None:
    assert set(Q.names()) - set(_q_names_used()) == set()


def test_the_scan_sees_the_uses() -> None:
    # Guards the two tests above against a scan that silently finds nothing.
    used = _q_names_used()
    assert "select_broadcast" in used and any(w.startswith("shared/broadcasts.py") for w in used["select_broadcast"])


def _imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _receiver(node: ast.expr) -> str:
    """The last name of a call's receiver: `call.state.pool.fetch` -> `pool`."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _sql_in_api() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in _modules("api"):
        tree = _tree(path)
        problems = [
            f"imports {m}"
            for m in sorted(_imports(tree))
            if any(m == d or m.startswith(d + ".") for d in DRIVER_MODULES)
        ]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                method, receiver = node.func.attr, _receiver(node.func.value)
                if method in DB_METHODS and DB_RECEIVER.search(receiver):
                    problems.append(f"line {node.lineno}: {receiver}.{method}()")
        if problems:
            found[str(path.relative_to(ROOT))] = problems
    return found


def test_api_modules_run_no_sql_themselves() -> None:
    found = _sql_in_api()
    assert {path: why for path, why in found.items() if path not in STILL_RUNNING_SQL} == {}


def test_the_exceptions_are_still_needed() -> None:
    # An exception that no longer runs SQL leaves the list, so the list only ever shrinks.
    assert STILL_RUNNING_SQL - set(_sql_in_api()) == set()


# What the data layer turns the driver's errors into.


async def test_a_unique_key_is_a_conflict_and_a_missing_reference_not_found(pool: asyncpg.Pool) -> None:
    org_id = await orgs.create_org(pool, "data-layer")
    with pytest.raises(errors.Conflict), db.translate_errors():
        await pool.execute("INSERT INTO orgs (id, name) VALUES ($1, 'again')", org_id)
    with pytest.raises(errors.NotFound), db.translate_errors():
        await pool.execute(
            "INSERT INTO api_keys (id, org_id, key_hash, prefix, scopes) VALUES ($1, $2, 'x', 'x', '{}')",
            uuid.uuid4(),
            uuid.uuid4(),
        )


async def test_an_unreachable_database_is_a_retryable_503(settings: Settings) -> None:
    closed = await db.create_pool(settings.database_url, min_size=1, max_size=1)
    await closed.close()
    with pytest.raises(errors.DatabaseUnavailable) as caught:
        await broadcasts.get(closed, uuid.uuid4(), uuid.uuid4())
    assert isinstance(caught.value.__cause__, asyncpg.InterfaceError)
    # The body and header the api gave an untranslated outage, and still an outage to the code
    # that retries on one (the send path's lost-commit check).
    assert caught.value.headers == {"Retry-After": "1"} and "Postgres" in caught.value.message
    assert isinstance(caught.value, db.UNREACHABLE)


async def test_domain_errors_pass_through_untouched(pool: asyncpg.Pool) -> None:
    with pytest.raises(errors.NotFound, match="no such broadcast"):
        await broadcasts.get(pool, uuid.uuid4(), uuid.uuid4())


# shared/ modules whose statements are not yet behind `db.translated`: the send path, being
# rebuilt around one accept service (its callers catch db.UNREACHABLE themselves meanwhile).
NOT_YET_TRANSLATED: set[str] = set()


def _untranslated_functions() -> dict[str, list[str]]:
    """Public async functions of shared/ that name a statement (`Q.<name>`) and lack `db.translated`."""
    found: dict[str, list[str]] = {}
    for path in _modules("shared"):
        tree = _tree(path)
        bare = [
            node.name
            for node in tree.body
            if isinstance(node, ast.AsyncFunctionDef)
            and not node.name.startswith("_")
            and _names_a_statement(node)
            and not any(ast.unparse(d) in ("db.translated", "translated") for d in node.decorator_list)
            and not _uses_passing_or_refused(node)
        ]
        if bare:
            found[str(path.relative_to(ROOT))] = bare
    return found


def _uses_passing_or_refused(node: ast.AST) -> bool:
    # The worker's statements (shared/delivery.py) translate into TryAgain / Refused instead:
    # the pump retries what passes and gives up on what Postgres refuses.
    return any(
        isinstance(n, ast.withitem) and ast.unparse(n.context_expr) == "db.passing_or_refused()" for n in ast.walk(node)
    )


def _names_a_statement(node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "Q" for n in ast.walk(node)
    )


def test_data_layer_functions_translate_driver_errors() -> None:
    found = _untranslated_functions()
    assert {path: names for path, names in found.items() if path not in NOT_YET_TRANSLATED} == {}
    assert NOT_YET_TRANSLATED - set(found) == set()
