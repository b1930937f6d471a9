"""The one database boundary: pool creation, codecs, and asyncpg errors -> domain errors.

Every statement runs in a data-layer function of an aggregate's module (`shared/broadcasts.py`,
`shared/contacts.py`, `shared/messages.py`, ...), decorated with `translated`: callers above
(the api's handlers) see only `shared.errors`, never a driver exception.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import asyncpg
import orjson
import structlog

from shared import errors
from shared.sql import Q

CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 30.0

log = structlog.get_logger("tidings.db")
P = ParamSpec("P")
T = TypeVar("T")

# The driver's failures that mean "Postgres cannot be reached now", not "this request is wrong".
DRIVER_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)
# The same, raw or already translated: what code that retries on an outage catches.
UNREACHABLE: tuple[type[BaseException], ...] = (*DRIVER_UNREACHABLE, errors.DatabaseUnavailable)

Pool = asyncpg.Pool
Connection = asyncpg.Connection
Record = asyncpg.Record


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python objects, through orjson (several times faster than json).
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 20, server_settings: dict[str, str] | None = None
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        # Statements are prepared once per connection and reused (asyncpg's statement cache).
        statement_cache_size=256,
        # asyncpg's default reset on release (UNLISTEN, RESET ALL, CLOSE ALL, unlock advisory
        # locks) is a round trip per release; our connections keep no session state, so skip it.
        reset=_no_reset,
        # Never wait forever on a server that stopped answering: connect and per-statement bounds.
        timeout=CONNECT_TIMEOUT_S,
        command_timeout=COMMAND_TIMEOUT_S,
        server_settings=server_settings,
    )
    assert pool is not None
    return pool


# Unique constraints whose violation means "this already exists" to a client.
_CONFLICTS = {
    "contact_channels_org_address": "a contact with this address already exists in this org",
}


# The driver's errors that have a domain meaning (`_domain_error`); anything else is a bug and
# stays what it is (the api answers 500 and logs it).
_TRANSLATED: tuple[type[BaseException], ...] = (
    asyncpg.UniqueViolationError,
    asyncpg.ForeignKeyViolationError,
    *DRIVER_UNREACHABLE,
)


def _domain_error(exc: BaseException) -> errors.TidingsError:
    if isinstance(exc, asyncpg.UniqueViolationError):
        constraint = getattr(exc, "constraint_name", None) or ""
        return errors.Conflict(_CONFLICTS.get(constraint, "this already exists"))
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return errors.NotFound("a referenced object does not exist")
    log.warning("backing_service_unavailable", error=repr(exc))
    return errors.DatabaseUnavailable()


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn asyncpg's errors into the domain's: a unique key -> Conflict, a missing referenced
    row -> NotFound, an unreachable Postgres -> DatabaseUnavailable (503, retry). Anything else
    is a bug and stays what it is (the api answers 500 and logs it)."""
    try:
        yield
    except _TRANSLATED as exc:
        raise _domain_error(exc) from exc


def translated(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """A data-layer function whose driver errors arrive as domain errors (as `translate_errors`).
    A plain try, not the context manager: this wraps every data-layer call on the hot path (a
    batch's items each go through several), and a generator context manager per call cost
    ≈ 2-3 % of the api's CPU under load (py-spy)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except _TRANSLATED as exc:
            raise _domain_error(exc) from exc

    return wrapper


@translated
async def ping(pool: asyncpg.Pool) -> None:
    """Readiness: one statement on a pooled connection."""
    await pool.fetchval(Q.ping)


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as conn, conn.transaction():
        yield conn


@translated
async def fetch_custom_planned(pool: asyncpg.Pool, statement: str, *args: Any) -> list[asyncpg.Record]:
    """Run a read planned for these values, never by a generic plan (plan_cache_mode, for this
    transaction only). For the searches over partitioned messages (0017): a generic plan is
    made for every partition at once, and with the made-ahead partitions empty, reading them
    all and sorting can look cheaper than walking each partition's index in order, which
    for a big org would read its whole history per page. Planned for the values, the time
    bounds prune partitions and the planner sees each one's real size. Costs a planning per
    call: right for a search, not for the hot path."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(Q.plan_for_these_values)
        rows: list[asyncpg.Record] = await conn.fetch(statement, *args)
        return rows


# ---- The worker's failures, sorted (its statements run through shared/delivery.py) ----

# Failures that pass: Postgres unreachable, restarting or failing over, or a conflict with a
# concurrent transaction. The same statement may well succeed when tried again.
PASSING: tuple[type[BaseException], ...] = (
    *UNREACHABLE,
    asyncpg.OperatorInterventionError,  # class 57: shutting down, starting up, statement cancelled
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
    asyncpg.ReadOnlySQLTransactionError,  # a failover under way: the old primary turned standby
)


class TryAgain(errors.Unavailable):
    """Postgres could not run the statement now (a `PASSING` failure): try it again later."""

    default_message = "the database cannot run this now; try again"


class Refused(errors.TidingsError):
    """Postgres refused the statement itself (a bug or a broken invariant, not an outage):
    trying it again cannot help."""

    default_message = "the database refused the statement"


@contextlib.contextmanager
def passing_or_refused() -> Any:
    """Turn asyncpg's errors into `TryAgain` or `Refused`: the worker handles only these."""
    try:
        yield
    except PASSING as exc:
        raise TryAgain(f"{type(exc).__name__}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise Refused(f"{type(exc).__name__}: {exc}") from exc
