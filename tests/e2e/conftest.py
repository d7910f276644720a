"""The whole stack as processes against the session's own vhost and database."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.stack import Stack
from tests.support.stack_config import new_stack, start_stack
from tests.support.wechat import FakeWechat


@pytest.fixture(scope="session")
def wechat() -> FakeWechat:
    return FakeWechat()


@pytest.fixture(scope="session")
async def stack(
    amqp_url: str, mysql_url: str, wechat: FakeWechat, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    stack = new_stack(amqp_url, mysql_url, wechat, tmp_path_factory.mktemp("service-logs"))
    try:
        await start_stack(stack, wechat)
        yield stack
    finally:
        await stack.stop_all()
