import os

import pytest

from paylane_common.storage.db import transaction
from tests.support.infra import describe


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


@pytest.mark.integration
def test_infra_is_containers_when_required(infra):
    """CI's containers tier sets PAYLANE_TEST_REQUIRE_CONTAINERS=1: without a Docker engine
    the session would quietly fall back to the local services and prove nothing."""
    required = os.environ.get("PAYLANE_TEST_REQUIRE_CONTAINERS") == "1"
    assert infra.kind == "containers" or not required, describe()
