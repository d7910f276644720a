"""Session fixtures shared by every test directory: real RabbitMQ and MySQL (docs/testing.md).

Under pytest-xdist each worker is a session of its own: its own vhost and database."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection
from hypothesis import settings

from paylane_common.broker import amqp
from paylane_common.runtime.outages import Dependency
from paylane_common.storage import db
from paylane_common.storage.migrate import cutover, migrate
from tests.support import hygiene
from tests.support.infra import Infra, describe, provide_infra, unique_name
from tests.support.seed_db import create_seed_database, layout, snapshot

# tests/integration/test_log_hygiene.py runs a session of its own to see a leak fail it.
pytest_plugins = ("pytester",)

# Every log line of the session also goes to one file, scanned for secrets at the end.
hygiene.configure_session_logging()

# Hypothesis: "quick" in make test (tests/fuzz: 500 hostile requests), "long" in
# make test-fuzz (10,000). HYPOTHESIS_PROFILE or --hypothesis-profile chooses; a test's
# own @settings(max_examples=...) wins over either.
settings.register_profile("quick", max_examples=500)
settings.register_profile("long", max_examples=10_000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))

#: The markers of tests that need more than this process: a test with none of them is a
#: unit test (make test-unit runs those with RabbitMQ and MySQL unreachable).
SERVICE_MARKERS = ("integration", "e2e", "chaos", "broker_outage", "fuzz", "containers")
#: Directories whose modules share one stack (a package or session fixture).
SHARED_STACK_DIRS = ("tests/e2e", "tests/frontend")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the session's RabbitMQ and MySQL (the ``infra`` fixture, however
    indirectly) is an integration test even if its module forgot to say so. Under
    pytest-xdist (--dist loadgroup) a module's tests run on one worker, its module
    fixtures set up once, and those of tests/e2e and of tests/frontend on one worker each,
    the stack they share started once."""
    for item in items:
        needs_services = "infra" in getattr(item, "fixturenames", ())
        if needs_services and not any(item.get_closest_marker(m) for m in SERVICE_MARKERS):
            item.add_marker(pytest.mark.integration)
        path = item.nodeid.split("::")[0]  # the module, relative to the root
        shared = next((d for d in SHARED_STACK_DIRS if path.startswith(f"{d}/")), None)
        group = shared or path
        item.add_marker(pytest.mark.xdist_group(group))


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
    if os.environ.get("PAYLANE_TEST_NO_SERVICES") == "1":
        pytest.fail(
            "PAYLANE_TEST_NO_SERVICES=1 (make test-unit): this test reaches RabbitMQ or "
            f"MySQL, so it must carry one of the markers {', '.join(SERVICE_MARKERS)}"
        )
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
