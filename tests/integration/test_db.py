"""``paylane_common.storage.db.transaction`` on real MariaDB: all or nothing, and the isolation
level asked for, whether or not the pool's connections run with autocommit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiomysql
import pytest

from paylane_common.storage import db
from tests.support.infra import unique_name

pytestmark = pytest.mark.integration


@pytest.fixture
async def table(db_pool: aiomysql.Pool) -> AsyncIterator[str]:
    name = unique_name("tx_probe")
    async with db.transaction(db_pool) as cur:
        await cur.execute(f"CREATE TABLE `{name}` (id INT PRIMARY KEY) ENGINE=InnoDB")
    yield name
    async with db.transaction(db_pool) as cur:
        await cur.execute(f"DROP TABLE `{name}`")


async def _ids(pool: aiomysql.Pool, table: str) -> list[int]:
    async with db.transaction(pool) as cur:
        await cur.execute(f"SELECT id FROM `{table}` ORDER BY id")
        return [row["id"] for row in await cur.fetchall()]


@pytest.fixture(params=[False, True], ids=["pool", "autocommit-pool"])
async def pool(request: pytest.FixtureRequest, mysql_url: str) -> AsyncIterator[aiomysql.Pool]:
    """Our own pool (autocommit off), and one whose connections autocommit."""
    async with db.create_pool(mysql_url, maxsize=3) as pool:
        if request.param:
            for conn in [await pool.acquire() for _ in range(3)]:
                await conn.autocommit(True)
                pool.release(conn)
        yield pool


async def test_an_error_undoes_every_statement(pool: aiomysql.Pool, table: str) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction(pool) as cur:
            await cur.execute(f"INSERT INTO `{table}` VALUES (1)")
            await cur.execute(f"INSERT INTO `{table}` VALUES (2)")
            raise RuntimeError("effect failed")
    assert await _ids(pool, table) == []
    async with db.transaction(pool) as cur:
        await cur.execute(f"INSERT INTO `{table}` VALUES (3)")
    assert await _ids(pool, table) == [3]


@pytest.mark.parametrize(
    ("isolation", "second_read_sees_commit"),
    [(None, False), ("REPEATABLE READ", False), ("READ COMMITTED", True)],
)
async def test_isolation_applies_to_the_transaction(
    pool: aiomysql.Pool, table: str, isolation: str | None, second_read_sees_commit: bool
) -> None:
    async with db.transaction(pool, isolation=isolation) as cur:
        await cur.execute(f"SELECT COUNT(*) AS n FROM `{table}`")
        assert (await cur.fetchone())["n"] == 0
        async with db.transaction(pool) as other:  # another connection commits meanwhile
            await other.execute(f"INSERT INTO `{table}` VALUES (7)")
        await cur.execute(f"SELECT COUNT(*) AS n FROM `{table}`")
        assert (await cur.fetchone())["n"] == (1 if second_read_sees_commit else 0)
    # The level was for that transaction only: the connection's next one is the default.
    async with db.transaction(pool) as cur:
        await cur.execute("SELECT @@tx_isolation AS level")
        assert (await cur.fetchone())["level"] == "REPEATABLE-READ"


async def test_unknown_isolation_is_refused(pool: aiomysql.Pool) -> None:
    with pytest.raises(ValueError, match="unknown isolation"):
        async with db.transaction(pool, isolation="READ SOMETHING"):
            pass
