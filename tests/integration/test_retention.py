"""Retention against a real MariaDB: old inbox rows and old published outbox rows go, a
bounded batch at a time; fresh rows, unpublished outbox rows and payment_logs stay."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiomysql
import pytest
from prometheus_client import REGISTRY

from paylane_common.contract.ids import new_row_id
from paylane_common.delivery.retention import LOCK_NAME, LOCK_TABLE, RetentionPruner
from paylane_common.storage.db import transaction
from paylane_common.storage.leases import Lease

pytestmark = pytest.mark.integration

OLD = "NOW(6) - INTERVAL 40 DAY"
FRESH = "NOW(6) - INTERVAL 1 DAY"
#: What the counts call old and fresh (rows move only by days, never across it).
BOUNDARY = "NOW(6) - INTERVAL 10 DAY"


def pruned_metric(table: str) -> float:
    return REGISTRY.get_sample_value("paylane_retention_pruned_total", {"table": table}) or 0.0


class Rows:
    """Rows this test wrote, all tagged with one unique marker, deleted afterwards."""

    def __init__(self, pool: aiomysql.Pool):
        self.pool = pool
        self.tag = f"ret-{uuid.uuid4().hex[:12]}"

    async def inbox(self, n: int, when: str) -> None:
        async with transaction(self.pool) as cur:
            for _ in range(n):
                await cur.execute(
                    f"INSERT INTO inbox (consumer, event_id, processed_at) VALUES (%s, %s, {when})",
                    (self.tag, uuid.uuid4().hex),
                )

    async def outbox(self, n: int, published: str | None) -> None:
        async with transaction(self.pool) as cur:
            for _ in range(n):
                await cur.execute(
                    "INSERT INTO outbox (producer, event_id, routing_key, payload, created_at,"
                    f" published_at) VALUES ('retention-test', %s, %s, '{{}}', {OLD},"
                    f" {published or 'NULL'})",
                    (uuid.uuid4().hex, self.tag),
                )

    async def log(self) -> None:
        async with transaction(self.pool) as cur:
            await cur.execute(
                "INSERT INTO payment_logs (id, out_trade_no, event_id, type, created_at)"
                f" VALUES (%s, 'RETENTION', %s, 'paid', {OLD})",
                (new_row_id("log"), self.tag),
            )

    async def counts(self) -> dict[str, int]:
        queries = {
            "inbox_old": "SELECT COUNT(*) FROM inbox WHERE consumer=%s"
            f" AND processed_at < {BOUNDARY}",
            "inbox_fresh": "SELECT COUNT(*) FROM inbox WHERE consumer=%s"
            f" AND processed_at >= {BOUNDARY}",
            "outbox_old": "SELECT COUNT(*) FROM outbox WHERE routing_key=%s"
            f" AND published_at < {BOUNDARY}",
            "outbox_fresh": "SELECT COUNT(*) FROM outbox WHERE routing_key=%s"
            f" AND published_at >= {BOUNDARY}",
            "outbox_unpublished": "SELECT COUNT(*) FROM outbox WHERE routing_key=%s"
            " AND published_at IS NULL",
            "payment_logs": "SELECT COUNT(*) FROM payment_logs WHERE event_id=%s",
        }
        counts = {}
        async with transaction(self.pool) as cur:
            for name, sql in queries.items():
                await cur.execute(sql.replace("COUNT(*)", "COUNT(*) AS n"), (self.tag,))
                counts[name] = (await cur.fetchone())["n"]
        return counts

    async def delete(self) -> None:
        async with transaction(self.pool) as cur:
            await cur.execute("DELETE FROM inbox WHERE consumer=%s", (self.tag,))
            await cur.execute("DELETE FROM outbox WHERE routing_key=%s", (self.tag,))
            await cur.execute("DELETE FROM payment_logs WHERE event_id=%s", (self.tag,))


@pytest.fixture
async def rows(db_pool: aiomysql.Pool) -> AsyncIterator[Rows]:
    rows = Rows(db_pool)
    yield rows
    await rows.delete()


async def test_old_bookkeeping_goes_and_everything_else_stays(db_pool, rows):
    await rows.inbox(3, OLD)
    await rows.inbox(2, FRESH)
    await rows.outbox(3, published=OLD)
    await rows.outbox(2, published=FRESH)
    await rows.outbox(2, published=None)  # created 40 days ago, never published
    await rows.log()
    before = {t: pruned_metric(t) for t in ("inbox", "outbox")}

    pruned = await RetentionPruner(db_pool, retention_days=30, interval_s=0).prune_once()

    assert await rows.counts() == {
        "inbox_old": 0,
        "inbox_fresh": 2,
        "outbox_old": 0,
        "outbox_fresh": 2,
        "outbox_unpublished": 2,
        "payment_logs": 1,
    }
    assert pruned["inbox"] >= 3 and pruned["outbox"] >= 3
    for table in ("inbox", "outbox"):
        assert pruned_metric(table) == before[table] + pruned[table]


async def test_a_run_deletes_a_bounded_number_of_rows(db_pool, rows):
    await rows.inbox(7, OLD)
    pruner = RetentionPruner(db_pool, retention_days=30, interval_s=0, batch_size=2, max_rounds=2)
    first = await pruner.prune_once()
    assert first["inbox"] == 4  # two rounds of two
    assert (await rows.counts())["inbox_old"] == 3
    await pruner.prune_once()
    await pruner.prune_once()
    assert (await rows.counts())["inbox_old"] == 0


async def test_a_replica_skips_while_another_holds_the_lock(db_pool, rows):
    await rows.inbox(1, OLD)
    pruner = RetentionPruner(db_pool, retention_days=30, interval_s=0)
    async with Lease(db_pool, LOCK_NAME, table=LOCK_TABLE).held() as held:
        assert held
        assert await pruner.prune_once() == {"inbox": 0, "outbox": 0}
    assert (await pruner.prune_once())["inbox"] >= 1
    assert (await rows.counts())["inbox_old"] == 0


@pytest.mark.parametrize(
    ("table", "column", "index"),
    [
        ("inbox", "processed_at", "ix_inbox_processed"),
        ("outbox", "published_at", "ix_outbox_published"),
    ],
)
async def test_the_range_read_can_use_an_index(db_pool, table, column, index):
    async with transaction(db_pool) as cur:
        await cur.execute(
            f"EXPLAIN SELECT * FROM {table} WHERE {column} < NOW(6) - INTERVAL 30 DAY"
            f" ORDER BY {column} LIMIT 1000"
        )
        [plan] = await cur.fetchall()
    assert index in (plan["possible_keys"] or "").split(",")


async def test_the_background_loop_prunes_and_stops(db_pool, rows):
    await rows.inbox(2, OLD)
    ran = asyncio.Event()

    class Observed(RetentionPruner):
        async def prune_once(self) -> dict[str, int]:
            pruned = await super().prune_once()
            ran.set()
            return pruned

    pruner = Observed(db_pool, retention_days=30, interval_s=3600)
    pruner.start()
    try:
        async with asyncio.timeout(10):
            await ran.wait()
    finally:
        await pruner.stop()
    assert (await rows.counts())["inbox_old"] == 0
