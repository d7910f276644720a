"""Session fixtures shared by every test directory: real RabbitMQ and MySQL (docs/testing.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection

from paylane_common import amqp, db
from paylane_common.migrate import cutover, migrate
from paylane_common.outages import Dependency
from tests.support import hygiene
from tests.support.infra import Infra, describe, provide_infra, unique_name
from tests.support.seed_db import create_seed_database, layout, snapshot

# tests/integration/test_log_hygiene.py runs a session of its own to see a leak fail it.
pytest_plugins = ("pytester",)

# Every log line of the session also goes to one file, scanned for secrets at the end.
hygiene.configure_session_logging()


def pytest_report_header(config: pytest.Config) -> str:
    """Which infrastructure the session's integration tests get, in every run's output
    (CI shows "containers" or "local", never a silently taken branch)."""
    return describe()


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_any_log() -> Iterator[None]:
    """When the session ends (every service it started stopped before, their logs
    complete): no log line of it, in process or in a service's log file, holds a
    registered secret, a private key, a client token or a payer's openid. A leak fails
    the session, reported as an error at the teardown of its last test."""
    # The shared test vectors' APIv3 key and payer openid.
    hygiene.register("0123456789abcdefABCDEF0123456789", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
    yield
    hygiene.check_session_logs()


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


@dataclass(frozen=True)
class AdoptedDatabase:
    """The session's database: built as the adopting team has it (tests/support/seed_db.py),
        then migrated twice. ``before`` and ``after`` are what the seed tables (and the unrelated
    ``generations``) held before and right after the migrations, in their original columns."""

    name: str
    url: str
    columns: dict[str, list[str]]
    before: dict[str, list[tuple[Any, ...]]]
    after: dict[str, list[tuple[Any, ...]]]
    migrated: tuple[list[str], list[str]]


@pytest.fixture(scope="session")
def adopted_database(infra: Infra) -> Iterator[AdoptedDatabase]:
    name = unique_name("paylane_test")
    url = infra.mysql_url(name)
    with infra.mysql_admin() as conn:
        create_seed_database(conn, name)
        columns = layout(conn, name)
        before = snapshot(conn, name, columns)
    first, second = migrate(url), migrate(url)
    with infra.mysql_admin() as conn:
        after = snapshot(conn, name, columns)
    # The team switched its cloud function to paylane as the session began: paylane
    # grants what another writer settles from now on (nothing before: the seed's 2024
    # orders stay the old backend's).
    cutover(url)
    yield AdoptedDatabase(name, url, columns, before, after, (first, second))
    with infra.mysql_admin() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture(scope="session")
def mysql_url(adopted_database: AdoptedDatabase) -> str:
    """Every suite runs on the adopted database: the shared tables as the existing system
    has them, with its rows, plus what ``paylane migrate`` added."""
    return adopted_database.url


@pytest.fixture(scope="session")
async def db_pool(mysql_url: str) -> AsyncIterator[aiomysql.Pool]:
    async with db.create_pool(mysql_url, maxsize=20) as pool:
        yield pool


@pytest.fixture
async def database(db_pool: aiomysql.Pool) -> AsyncIterator[Dependency]:
    """The test database as the dependency a consumer or relay pauses on (outages.py)."""
    dependency = Dependency("mysql", partial(db.ping, db_pool, writable=True))
    yield dependency
    await dependency.close()


@pytest.fixture(scope="session")
async def amqp_connection(amqp_url: str) -> AsyncIterator[AbstractRobustConnection]:
    connection = await amqp.connect(amqp_url, "tests")
    yield connection
    await connection.close()
