"""The stack's state read back while the database and the broker may just have been
restarted (every read retried for a while), and quiescence: the pipeline quiet for a
set of orders."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aio_pika
import aiomysql
import pymysql
from aio_pika.abc import AbstractRobustConnection

from paylane_common.broker.topology import QUEUES
from paylane_common.storage import db
from tests.chaos.harness.env import ChaosEnv
from tests.support.polling import eventually, retrying

WORK_QUEUES = ("order.payments", "entitlement.orders")
#: Queues that must be empty for the pipeline to be quiet (delayed retries included).
QUIET_QUEUES = (*WORK_QUEUES, *(name for spec in QUEUES for name in spec.retry_queues))

DB_ERRORS = (pymysql.err.OperationalError, pymysql.err.InterfaceError, ConnectionError, OSError)
BROKER_ERRORS = (aio_pika.exceptions.AMQPError, ConnectionError, TimeoutError, RuntimeError)


async def query(pool: aiomysql.Pool, sql: str, *args: Any, timeout: float = 60) -> list[Any]:
    """Rows of ``sql``; retried while the database is unreachable or a pooled connection
    turns out dead (killed, server restarted)."""

    async def attempt() -> list[Any]:
        async with db.transaction(pool) as cur:
            await cur.execute(sql, args)
            rows: list[Any] = await cur.fetchall()
            return rows

    # Idle connections may be dead too: dropped before each retry.
    return await retrying(attempt, DB_ERRORS, timeout, recover=pool.clear)


async def queue_state(
    connection: AbstractRobustConnection, names: tuple[str, ...], timeout: float = 30
) -> dict[str, tuple[int, int]]:
    """``{queue: (ready messages, consumers)}`` as the broker counts them now."""

    async def attempt() -> dict[str, tuple[int, int]]:
        async with asyncio.timeout(10):
            await connection.ready()
            channel = await connection.channel(publisher_confirms=False)
            try:
                underlay = await channel.get_underlay_channel()
                state = {}
                for name in names:
                    ok = await underlay.queue_declare(name, passive=True)
                    state[name] = (ok.message_count or 0, ok.consumer_count or 0)
                return state
            finally:
                with contextlib.suppress(Exception):
                    await channel.close()

    return await retrying(attempt, BROKER_ERRORS, timeout)


class QueueDepth:
    """Ready messages of queues, probed on a channel of its own (about a millisecond a
    probe), for decisions that must be taken while a consumer works through a backlog."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._channel: aio_pika.abc.AbstractChannel | None = None

    async def __aenter__(self) -> QueueDepth:
        self._channel = await self._connection.channel(publisher_confirms=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close()

    async def ready(self, queue: str) -> int:
        assert self._channel is not None
        underlay = await self._channel.get_underlay_channel()
        declared = await underlay.queue_declare(queue, passive=True)
        return declared.message_count or 0


def in_clause(column: str, values: list[str]) -> str:
    """``column IN (%s, …)``, one placeholder a value."""
    return f"{column} IN ({', '.join(['%s'] * len(values))})"


async def outbox_counts(env: ChaosEnv, nos: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
    """``{(out_trade_no, routing_key): (rows, unpublished)}`` for order.paid and
    entitlement.granted of these orders."""
    key = "JSON_UNQUOTE(JSON_EXTRACT(payload, '$.data.out_trade_no'))"
    rows = await query(
        env.pool,
        f"SELECT {key} AS no, routing_key AS rk, COUNT(*) AS n,"
        " SUM(published_at IS NULL) AS unpublished FROM outbox"
        " WHERE routing_key IN ('order.paid', 'entitlement.granted')"
        f" AND {in_clause(key, nos)} GROUP BY no, rk",
        *nos,
    )
    return {(r["no"], r["rk"]): (int(r["n"]), int(r["unpublished"])) for r in rows}


async def unacked(env: ChaosEnv) -> int:
    """What the stack's consumers hold unsettled now (the broker's channels' count)."""

    async def attempt() -> int:
        async with asyncio.timeout(15):
            return await asyncio.to_thread(env.infra.broker.unacked, env.vhost)

    return await retrying(attempt, (RuntimeError, TimeoutError), 30)


async def wait_quiescent(env: ChaosEnv, nos: list[str], timeout: float = 90) -> float:
    """Until the pipeline is quiet for these orders: work and retry queues empty, both
    consumers attached, every outbox row published, and nothing changing for ~1 s."""
    started = time.monotonic()
    last: object = None
    stable_since = 0.0

    async def quiet() -> bool:
        nonlocal last, stable_since
        queues = await queue_state(env.connection, QUIET_QUEUES)
        outbox = await outbox_counts(env, nos)
        progress = await query(
            env.pool,
            "SELECT SUM(status = 'paid') AS paid,"
            " (SELECT COUNT(*) FROM entitlement_grants WHERE "
            + in_clause("out_trade_no", nos)
            + ") AS granted FROM payment_orders WHERE "
            + in_clause("out_trade_no", nos),
            *nos,
            *nos,
        )
        snapshot = (queues, outbox, progress)
        now = time.monotonic()
        if snapshot != last:
            last, stable_since = snapshot, now
        idle = all(ready == 0 for ready, _ in queues.values())
        attached = all(queues[q][1] >= 1 for q in WORK_QUEUES)
        published = all(unpublished == 0 for _, unpublished in outbox.values())
        if not (idle and attached and published and now - stable_since >= 1.0):
            return False
        # Nothing ready is not nothing under way: a consumer may hold a batch waiting for
        # the database to come back, longer than the second of stillness. Asked last, as
        # rabbitmqctl takes a while; a batch still held starts the second again.
        if await unacked(env):
            last = None
            return False
        return True

    try:
        await eventually(quiet, timeout=timeout, what="quiescence")
    except TimeoutError:
        raise AssertionError(f"not quiescent within {timeout}s; last state: {last}") from None
    return time.monotonic() - started
