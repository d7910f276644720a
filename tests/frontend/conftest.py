"""The whole stack as processes for the browser and the JavaScript client, on a vhost and a
database of their own: orders here must stay payable while a person (a browser) acts, so
they expire after ten minutes, not the four seconds of tests/e2e, and that stack's
reconciler must not see them."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from paylane_common.migrate import migrate
from tests.support.ci import require_tool
from tests.support.infra import Infra, unique_name
from tests.support.stack import Stack
from tests.support.stack_config import ORDER_ENV, new_stack, start_stack
from tests.support.wechat import FakeWechat

REPO = Path(__file__).parents[2]


@dataclass(frozen=True)
class Frontend:
    stack: Stack

    def url(self, service: str) -> str:
        return self.stack.services[service].url


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go: ``$PAYLANE_TEST_ARTIFACTS`` or ``test-artifacts/`` (git-ignored)."""
    path = Path(os.environ.get("PAYLANE_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def own_infra(infra: Infra) -> Iterator[tuple[str, str]]:
    """A vhost and a migrated database for this stack alone: (AMQP URL, MySQL URL)."""
    vhost, database = unique_name("paylane_frontend"), unique_name("paylane_frontend")
    infra.broker.add_vhost(vhost, infra.amqp_user)
    mysql_url = infra.mysql_url(database)
    migrate(mysql_url)
    yield infra.amqp_url(vhost), mysql_url
    with infra.mysql_admin() as conn, conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
    try:
        infra.broker.delete_vhost(vhost)
    except RuntimeError:
        pass


@pytest.fixture(scope="session")
async def frontend(
    own_infra: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Frontend]:
    amqp_url, mysql_url = own_infra
    wechat = FakeWechat()
    stack = new_stack(amqp_url, mysql_url, wechat, tmp_path_factory.mktemp("frontend-logs"))
    try:
        await start_stack(stack, wechat, {**ORDER_ENV, "ORDER_TTL_S": "600"})
        yield Frontend(stack)
    finally:
        await stack.stop_all()


@pytest.fixture(scope="session")
def node() -> str:
    return require_tool(shutil.which("node"), "node not installed: it runs clients/js's tests")
