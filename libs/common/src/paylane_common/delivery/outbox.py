"""Transactional outbox: events written in the same transaction as the state change,
published later by a relay (with confirms) and only then marked published.

A crash between commit and publish leaves the rows for the next relay run; a crash
between publish and mark re-publishes them, which consumers absorb (same event_id).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import aiomysql
import pymysql
import structlog

from paylane_common.broker.publisher import Publisher
from paylane_common.contract.events import Envelope
from paylane_common.runtime import metrics, tracing
from paylane_common.runtime.background import BackgroundLoop
from paylane_common.runtime.exceptions import PublishError
from paylane_common.runtime.outages import Dependency
from paylane_common.storage.db import placeholders, transaction

log = structlog.get_logger(__name__)


_ER_LOCK_DEADLOCK = 1213
#: The longest pause between tries while publishing fails (the broker away).
MAX_FAILURE_WAIT_S = 8.0
#: One batch (claim, publish with confirms, mark) takes far less.
RELAY_TIMEOUT_S = 30.0
_DEADLOCK_ATTEMPTS = 3

_INSERT = (
    "INSERT INTO outbox (producer, event_id, routing_key, payload, headers)"
    " VALUES (%s, %s, %s, %s, %s)"
)


class Staged:
    """An event staged for the outbox, with the trace current when it was staged."""

    def __init__(self, envelope: Envelope, headers: dict[str, Any] | None = None):
        self.envelope = envelope
        self.headers = {**tracing.outgoing_headers(envelope.event_id), **(headers or {})}

    def row(self, producer: str) -> tuple[str, str, str, str, str]:
        return (
            producer,
            self.envelope.event_id,
            self.envelope.type,
            self.envelope.model_dump_json(),
            json.dumps(self.headers),
        )


async def add(
    cur: aiomysql.Cursor,
    producer: str,
    envelope: Envelope,
    headers: dict[str, Any] | None = None,
) -> None:
    """Stage ``envelope`` for publishing; call inside the effect's transaction. The
    current trace (the message being handled) goes with it."""
    await cur.execute(_INSERT, Staged(envelope, headers).row(producer))


async def add_many(cur: aiomysql.Cursor, producer: str, staged: list[Staged]) -> None:
    """Stage several events in one statement (a batch's), each with its own trace."""
    if staged:
        await cur.executemany(_INSERT, [s.row(producer) for s in staged])


class OutboxRelay(BackgroundLoop):
    """Publishes one producer's pending rows; woken after each commit, polls as a backstop."""

    #: The backlog gauges cost a query: refreshed at most this often, not per wake-up.
    backlog_interval_s = 1.0

    def __init__(
        self,
        pool: aiomysql.Pool,
        publisher: Publisher,
        producer: str,
        *,
        database: Dependency,
        batch_size: int = 200,
        poll_interval_s: float = 1.0,
    ):
        self._pool = pool
        self._database = database
        self._publisher = publisher
        self.producer = producer
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._wakeup = asyncio.Event()
        self._backlog_updated = -math.inf
        self.task_name = f"outbox-relay-{producer}"

    def wake(self) -> None:
        self._wakeup.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                # A stalled database would hold the relay forever: cut off, it is probed.
                async with asyncio.timeout(RELAY_TIMEOUT_S):
                    published = await self.relay_once()
                    now = time.monotonic()
                    if now - self._backlog_updated >= self.backlog_interval_s:
                        await self._update_backlog()
                        self._backlog_updated = now
                failures = 0
            except Exception as exc:
                published = 0
                if await self._database.confirm_down(exc):
                    await self._database.wait_up()  # its prober logs the outage
                    continue
                # The broker away (its connection comes back by itself) or a bug: again
                # after a backoff, so that an outage is a line every few seconds at most.
                failures += 1
                log.warning(
                    "outbox_relay_failed",
                    producer=self.producer,
                    failures=failures,
                    error=repr(exc)[:300],
                )
            if published >= self._batch_size:
                continue
            # (The exponent capped: an outage of hours counts thousands of failures.)
            wait_s = min(self._poll_interval_s * 2 ** min(failures, 16), MAX_FAILURE_WAIT_S)
            try:
                await asyncio.wait_for(self._wakeup.wait(), wait_s)
            except TimeoutError:
                pass
            self._wakeup.clear()

    async def relay_once(self) -> int:
        """Publish up to one batch of pending rows; return how many were marked published.

        Two relays of one producer (replicas) can still deadlock in InnoDB's locks on the
        claim's index: the loser's transaction is rolled back whole (nothing of it was
        marked; what it published goes out again, at least once as ever) and the batch is
        claimed anew."""
        for attempt in range(1, _DEADLOCK_ATTEMPTS + 1):
            try:
                return await self._relay_batch()
            except pymysql.err.OperationalError as exc:
                if exc.args[0] != _ER_LOCK_DEADLOCK or attempt == _DEADLOCK_ATTEMPTS:
                    raise
                log.info("outbox_claim_deadlock_retried", attempt=attempt)
        raise AssertionError("unreachable")

    async def _relay_batch(self) -> int:
        # READ COMMITTED: the claim takes record locks only. Under REPEATABLE READ its gap
        # locks would block every consumer inserting an outbox row for as long as the
        # publishes take, and deadlock with them when the rows are marked.
        async with transaction(self._pool, isolation="READ COMMITTED") as cur:
            await cur.execute(
                # FORCE INDEX: by ix_outbox_published (retention's) or an index merge, the
                # claim would lock entries that a marking UPDATE needs, and deadlock with it.
                "SELECT id, payload, routing_key, headers FROM outbox"
                " FORCE INDEX (ix_outbox_pending)"
                " WHERE producer = %s AND published_at IS NULL"
                " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
                (self.producer, self._batch_size),
            )
            rows = await cur.fetchall()
            if not rows:
                return 0
            results = await asyncio.gather(
                *(self._publish(row) for row in rows), return_exceptions=True
            )
            done = [row["id"] for row, result in zip(rows, results, strict=True) if result is None]
            failed = [r for r in results if isinstance(r, BaseException)]
            if done:
                await cur.execute(
                    "UPDATE outbox SET published_at = NOW(6)"
                    f" WHERE id IN ({placeholders(len(done))})",
                    done,
                )
        metrics.OUTBOX_PUBLISHED.labels(self.producer).inc(len(done))
        if failed:
            log.warning("outbox_publish_failed", count=len(failed), error=repr(failed[0]))
            if not done:
                raise (
                    failed[0]
                    if isinstance(failed[0], PublishError)
                    else PublishError(repr(failed[0]))
                )
        return len(done)

    async def _publish(self, row: dict[str, Any]) -> None:
        envelope = Envelope.model_validate_json(row["payload"])
        headers = json.loads(row["headers"]) if row["headers"] else None
        await self._publisher.publish(envelope, row["routing_key"], headers)

    async def _update_backlog(self) -> None:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT COUNT(*) AS n, TIMESTAMPDIFF(MICROSECOND, MIN(created_at), NOW(6)) AS age"
                " FROM outbox WHERE producer = %s AND published_at IS NULL",
                (self.producer,),
            )
            row = await cur.fetchone()
        metrics.OUTBOX_BACKLOG.labels(self.producer).set(row["n"] or 0)
        metrics.OUTBOX_OLDEST_AGE.labels(self.producer).set((row["age"] or 0) / 1e6)


__all__ = ["OutboxRelay", "Staged", "add", "add_many"]
