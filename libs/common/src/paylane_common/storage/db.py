"""aiomysql pool and a transaction context manager."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aiomysql
import pymysql

from paylane_common.runtime.settings import MySQLParams
from paylane_common.storage.mysql_tls import (
    DIAGNOSIS,
    MySQLTls,
    check_encrypted,
    may_need_tls,
    tls_errors,
    tls_only,
)

DUPLICATE_KEY = 1062
#: ER_OPTION_PREVENTS_STATEMENT: what a read-only server answers a write.
READ_ONLY = 1290
#: What a read-only server answers a write (--read-only, a read-only transaction, mode).
READ_ONLY_CODES = frozenset({READ_ONLY, 1792, 1836})
#: A rollback taking longer means the connection is not worth keeping.
ROLLBACK_TIMEOUT_S = 5.0
_ISOLATION_LEVELS = frozenset(
    {"READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"}
)


@asynccontextmanager
async def create_pool(
    url: str, *, minsize: int = 1, maxsize: int = 10
) -> AsyncIterator[aiomysql.Pool]:
    """aiomysql's pool, over TLS as ``url``'s ``ssl-mode`` says: opened on entering, and
    on leaving closed, its connections waited for (``async with create_pool(url) as
    pool:``; in an aiohttp app, inside a cleanup context). A TLS failure while opening
    it is a ConfigError naming ``MYSQL_URL`` (mysql_tls.py)."""
    dsn = MySQLParams.from_url(url)
    pool = aiomysql.create_pool(
        host=dsn.host,
        port=dsn.port,
        user=dsn.user,
        password=dsn.password,
        db=dsn.database,
        minsize=minsize,
        maxsize=maxsize,
        autocommit=False,
        charset="utf8mb4",
        pool_recycle=3600,
        connect_timeout=5,
        # DATETIME columns hold UTC, whatever the server's own time zone is.
        init_command="SET time_zone = '+00:00'",
        **dsn.tls.aiomysql_args(),
    )
    with tls_errors(dsn.tls):
        opened = await pool.__aenter__()
    if dsn.tls.required:
        _TLS_REQUIRED[opened] = dsn.tls
    try:
        yield opened
    finally:
        await pool.__aexit__(None, None, None)


#: Pools whose every connection must be encrypted (:func:`acquire` checks).
_TLS_REQUIRED: weakref.WeakKeyDictionary[aiomysql.Pool, MySQLTls] = weakref.WeakKeyDictionary()


def _encrypted(conn: aiomysql.Connection) -> bool:
    # aiomysql's own flag: set once the TLS handshake is done (or on a unix socket).
    return bool(getattr(conn, "_secure", False))


@asynccontextmanager
async def transaction(
    pool: aiomysql.Pool, *, isolation: str | None = None
) -> AsyncIterator[aiomysql.DictCursor]:
    """One transaction on a pooled connection: commit on success, rollback on error.

    ``isolation`` (e.g. ``"READ COMMITTED"``) applies to this transaction only. A
    connection that failed mid-transaction is closed rather than returned to the pool.
    """
    conn = await acquire(pool)
    try:
        if isolation is not None:
            if isolation not in _ISOLATION_LEVELS:
                raise ValueError(f"unknown isolation level {isolation!r}")
            async with conn.cursor() as cur:
                await cur.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        if conn.get_autocommit():
            # Our pools run with autocommit off, where the first statement opens the
            # transaction: an explicit BEGIN would cost a round trip per transaction.
            await conn.begin()
        async with conn.cursor(aiomysql.DictCursor) as cur:
            yield cur
        await conn.commit()
    except BaseException as exc:
        await _abandon(conn, exc)
        raise
    finally:
        await pool.release(conn)


async def acquire(pool: aiomysql.Pool) -> aiomysql.Connection:
    """``pool.acquire()`` that answers cancellation (a handler's timeout) at once.

    aiomysql can swallow a cancellation while it opens a connection: seen with a server
    that accepts the connection and never answers (a blackholed network), where the
    acquire then waits for ever and the timeout meant to bound it has already fired. So
    the acquire runs as a task of its own; a caller that gives up leaves it cancelled,
    and a connection it still returns later is closed, never handed out."""
    task = asyncio.ensure_future(pool.acquire())
    try:
        conn = await asyncio.shield(task)
    except BaseException:
        task.cancel()
        # Held until it ends: the loop keeps only a weak reference, and a task collected
        # while still opening its connection leaves that socket unclosed.
        _ABANDONED.add(task)
        task.add_done_callback(partial(_discard_late, pool))
        raise
    tls = _TLS_REQUIRED.get(pool)
    if tls is not None and not _encrypted(conn):
        # aiomysql goes on in plain text when the server's greeting offers no TLS (a
        # server without it, or someone in between who took the offer out).
        conn.close()
        await pool.release(conn)
        check_encrypted(tls, encrypted=False)
    return conn


#: Acquires whose caller gave up, until they end (:func:`acquire`).
_ABANDONED: set[asyncio.Future[aiomysql.Connection]] = set()


def _discard_late(pool: aiomysql.Pool, task: asyncio.Future[aiomysql.Connection]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled() and task.exception() is None:
        conn = task.result()
        conn.close()
        pool.release(conn)


async def _abandon(conn: aiomysql.Connection, exc: BaseException) -> None:
    """Roll back; or, where the connection cannot be trusted to answer (cancelled mid-
    statement, e.g. by a handler's timeout against a stalled server), close it: the
    server rolls back a transaction whose connection is gone. A rollback that does not
    come back within ``ROLLBACK_TIMEOUT_S`` closes it too."""
    code = exc.args[0] if isinstance(exc, pymysql.err.MySQLError) and exc.args else None
    cut_off = isinstance(exc, asyncio.CancelledError | TimeoutError)
    if cut_off or conn.closed or code in READ_ONLY_CODES:
        # (A read-only answer: this connection reached a demoted primary; a new one may
        # reach the new primary.)
        conn.close()
        return
    try:
        async with asyncio.timeout(ROLLBACK_TIMEOUT_S):
            await conn.rollback()
    except Exception:
        conn.close()


async def ping(pool: aiomysql.Pool, timeout: float = 2.0, *, writable: bool = False) -> None:
    """Raises unless the database answers within ``timeout`` on a pooled connection (and,
    with ``writable``, accepts writes: a failed-over primary turned read-only does not)."""
    async with asyncio.timeout(timeout):
        conn = await acquire(pool)
    try:
        await _check(conn, timeout, writable)
    except BaseException:
        conn.close()  # stuck mid-statement, or on a read-only server: never handed out again
        raise
    finally:
        await pool.release(conn)


async def probe(
    url: str, timeout: float = 2.0, *, writable: bool = False, database: bool = True
) -> None:
    """As :func:`ping`, on a connection of its own: a pool busy with work (every
    connection taken) must not look like a database that is down. Without ``database``
    only the server is asked for (``paylane migrate`` creates the database)."""
    params = MySQLParams.from_url(url)
    try:
        with tls_errors(params.tls):
            conn = await _connect(params, params.tls, timeout, database)
    except pymysql.err.OperationalError as exc:
        if may_need_tls(exc, params.tls):
            try:
                (await _connect(params, DIAGNOSIS, timeout, database)).close()
            except Exception:
                raise exc from None  # a wrong password, or not there: as it was
            raise tls_only(params.tls) from exc
        raise
    try:
        check_encrypted(params.tls, _encrypted(conn))
        await _check(conn, timeout, writable)
    finally:
        conn.close()


async def _connect(
    params: MySQLParams, tls: MySQLTls, timeout: float, database: bool
) -> aiomysql.Connection:
    async with asyncio.timeout(timeout):
        return await aiomysql.connect(
            host=params.host,
            port=params.port,
            user=params.user,
            password=params.password,
            db=params.database if database else None,
            connect_timeout=timeout,
            **tls.aiomysql_args(),
        )


async def _check(conn: aiomysql.Connection, timeout: float, writable: bool) -> None:
    async with asyncio.timeout(timeout):
        async with conn.cursor() as cur:
            await cur.execute("SELECT @@global.read_only")
            (read_only,) = await cur.fetchone()
        await conn.rollback()
    if writable and read_only:
        # As the server answers a write: a replica, or a primary being failed over.
        raise pymysql.err.OperationalError(READ_ONLY, "the server is read-only (read_only=ON)")


def placeholders(n: int, mark: str = "%s") -> str:
    """``%s, %s, …`` for an ``IN (…)`` of ``n`` values (``mark`` for each: ``(%s, %s)``
    for an ``IN`` of ``n`` pairs)."""
    return ", ".join([mark] * n)


def rows_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
    """``rows`` as a derived table (``SELECT %s AS a, … UNION ALL …``) and its parameters:
    many rows, each with its own values, updated by one ``UPDATE … JOIN``."""
    select = "SELECT " + ", ".join(f"%s AS {column}" for column in columns)
    return " UNION ALL ".join([select] * len(rows)), [value for row in rows for value in row]


def is_duplicate_key(exc: BaseException) -> bool:
    return isinstance(exc, pymysql.err.IntegrityError) and exc.args[0] == DUPLICATE_KEY
