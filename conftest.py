"""Session fixtures shared by every test directory: real RabbitMQ and MySQL (DESIGN §1)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection

from paylane_common import amqp, db
from paylane_common.migrate import migrate
from tests.support.hygiene import configure_session_logging
from tests.support.infra import Infra, provide_infra, unique_name

# Every log line of the session also goes to one file, scanned for secrets at the end
# (tests/test_zz_log_hygiene.py).
configure_session_logging()


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    with provide_infra() as infra:
        yield infra


@pytest.fixture(scope="session")
def amqp_url(infra: Infra) -> Iterator[str]:
    """A fresh vhost for this session, deleted at the end."""
    vhost = unique_name("paylane_test")
    infra.broker.add_vhost(vhost, infra.amqp_user)
    yield infra.amqp_url(vhost)
    try:
        infra.broker.delete_vhost(vhost)
    except RuntimeError:
        pass


@pytest.fixture(scope="session")
def mysql_url(infra: Infra) -> Iterator[str]:
    """A fresh, migrated database for this session, dropped at the end."""
    name = unique_name("paylane_test")
    url = infra.mysql_url(name)
    migrate(url)
    yield url
    with infra.mysql_admin() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(scope="session")
async def db_pool(mysql_url: str) -> AsyncIterator[aiomysql.Pool]:
    pool = await db.create_pool(mysql_url, maxsize=20)
    yield pool
    pool.close()
    await pool.wait_closed()


@pytest.fixture(scope="session")
async def amqp_connection(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await amqp.connect(amqp_url, "tests")
    yield connection
    await connection.close()
