import pytest

from paylane_common.db import transaction


@pytest.mark.integration
async def test_database_is_migrated(db_pool):
    async with transaction(db_pool) as cur:
        await cur.execute("SHOW TABLES")
        tables = {next(iter(row.values())) for row in await cur.fetchall()}
    assert {"users", "payment_orders", "refunds", "payment_logs", "inbox", "outbox"} <= tables


@pytest.mark.integration
async def test_vhost_is_reachable(amqp_connection):
    channel = await amqp_connection.channel()
    assert not channel.is_closed
    await channel.close()
