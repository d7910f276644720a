"""The whole stack as processes against the session's own vhost and database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.isolated import started_stack
from tests.support.stack import Stack
from tests.support.wechat import FakeWechat


@pytest.fixture(scope="session")
def wechat() -> FakeWechat:
    return FakeWechat()


# Stopped once the e2e tests are done: its consumers and reconciler would otherwise go on
# taking messages and orders in the session's vhost and database from the tests after it
# (they refuse events of publishers they do not know, and settle what others wait for).
@pytest.fixture(scope="package")
async def stack(
    amqp_url: str, mysql_url: str, wechat: FakeWechat, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    log_dir = tmp_path_factory.mktemp("service-logs")
    async with started_stack(amqp_url, mysql_url, wechat, log_dir) as (stack, _):
        yield stack
