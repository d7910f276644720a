"""Retention: the inbox and published outbox rows are bookkeeping, kept ``RETENTION_DAYS``.

The inbox only has to outlive redeliveries and replays of an event (``paylane.log`` keeps
7 days), a published outbox row only its relay. Each round deletes at most ``batch_size``
rows per table, oldest first, by primary key after an indexed range read (deterministic,
safe under statement-based replication, short locks). ``payment_logs`` are the audit
trail and ``entitlement_grants`` the ledger: never pruned here.

The records kept for the operators' console's timeline (:data:`RECORD_TABLES`: rejected
notifications, WeChat Pay queries, the notifier's pushes; migrations 0016, 0017) are
pruned the same way by the order service alone, under a lease of its own
(:data:`RECORDS_LOCK_NAME`): entitlement, which takes retention's, may not touch them.

Every consumer service runs it; replicas take turns through a lease (leases.py, not
waited for) on the ``paylane_retention_lock`` row, and a replica that skips loses nothing:
the deletes are idempotent.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiomysql
import structlog

from paylane_common.runtime import metrics
from paylane_common.runtime.background import BackgroundLoop
from paylane_common.storage.db import placeholders, transaction
from paylane_common.storage.leases import Lease

log = structlog.get_logger(__name__)

LOCK_NAME = "paylane.retention"
#: Retention's lease has a table of its own (migration 0006): the consumer services may
#: take it, not the reconciler's in paylane_locks.
LOCK_TABLE = "paylane_retention_lock"


@dataclass(frozen=True)
class _Table:
    name: str
    key: tuple[str, ...]
    #: Indexed column; NULL (an outbox row not yet published) is never older than anything.
    age_column: str


TABLES = (
    _Table("inbox", ("consumer", "event_id"), "processed_at"),
    _Table("outbox", ("id",), "published_at"),
)
RECORDS_LOCK_NAME = "paylane.records"
RECORD_TABLES = (
    _Table("notifications_rejected", ("id",), "received_at"),
    _Table("wechatpay_queries", ("id",), "asked_at"),
    _Table("notifier_pushes", ("id",), "pushed_at"),
)


class RetentionPruner(BackgroundLoop):
    """Every ``interval_s``, deletes what is older than ``retention_days`` in rounds of
    ``batch_size`` rows per table, at most ``max_rounds`` rounds per run: the inbox and
    outbox under retention's lease, or ``tables`` under ``lock_name``."""

    task_name = "retention"

    def __init__(
        self,
        pool: aiomysql.Pool,
        *,
        retention_days: float,
        interval_s: float,
        batch_size: int = 1000,
        max_rounds: int = 100,
        tables: tuple[_Table, ...] = TABLES,
        lock_name: str = LOCK_NAME,
    ) -> None:
        if retention_days <= 0 or batch_size < 1 or max_rounds < 1:
            raise ValueError("retention_days, batch_size and max_rounds must be positive")
        self._pool = pool
        self._retention_s = retention_days * 86400
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._max_rounds = max_rounds
        self._tables = tables
        self._lock_name = lock_name

    async def _run(self) -> None:
        while True:
            try:
                pruned = await self.prune_once()
                if any(pruned.values()):
                    log.info("retention_pruned", **pruned)
            except Exception as exc:  # DB down: try again next interval
                log.warning("retention_failed", error=repr(exc))
            await asyncio.sleep(self._interval_s)

    async def prune_once(self) -> dict[str, int]:
        """One run: rows deleted per table (all zero when another replica holds the lock)."""
        pruned = {table.name: 0 for table in self._tables}
        async with Lease(self._pool, self._lock_name, table=LOCK_TABLE).held() as held:
            if not held:
                return pruned
            for table in self._tables:
                for _ in range(self._max_rounds):
                    deleted = await self._prune_round(table)
                    pruned[table.name] += deleted
                    metrics.RETENTION_PRUNED.labels(table.name).inc(deleted)
                    if deleted < self._batch_size:
                        break
        return pruned

    async def _prune_round(self, table: _Table) -> int:
        key = ", ".join(table.key)
        # READ COMMITTED: no gap locks, so consumers inserting fresh rows never wait.
        async with transaction(self._pool, isolation="READ COMMITTED") as cur:
            await cur.execute(
                f"SELECT {key} FROM {table.name}"
                f" WHERE {table.age_column} < NOW(6) - INTERVAL %s SECOND"
                f" ORDER BY {table.age_column} LIMIT %s",
                (self._retention_s, self._batch_size),
            )
            rows = await cur.fetchall()
            if not rows:
                return 0
            mark = f"({placeholders(len(table.key))})" if len(table.key) > 1 else "%s"
            args = [row[column] for row in rows for column in table.key]
            await cur.execute(
                f"DELETE FROM {table.name} WHERE ({key}) IN ({placeholders(len(rows), mark)})",
                args,
            )
            return int(cur.rowcount)
