"""Fixtures of the order service's tests: WeChat Pay (the kit's, as a sandbox in this
process) and the payment gate that asks it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import aiomysql
import pytest

from paylane_common.wechatpay import WechatPayClient
from paylane_order.gate import Gate
from services.order.tests.support import OrderApi, payment_gate, serving_order_api
from tests.support.sandbox import RunningSandbox, running_sandbox, sandbox_settings
from tests.support.wechat import KIT


@pytest.fixture(scope="module")
async def kit_wechat() -> AsyncIterator[tuple[RunningSandbox, WechatPayClient]]:
    """The kit's WeChat Pay (tests.support.wechat.KIT, which signs the tests' payment
    notifications) as a sandbox, and the merchant's client to it."""
    async with running_sandbox(sandbox_settings(KIT)) as sandbox, aiohttp.ClientSession() as http:
        yield sandbox, KIT.merchant_client(sandbox.base_url, http)


@pytest.fixture(scope="module")
def gate(kit_wechat: tuple[RunningSandbox, WechatPayClient]) -> Gate:
    return payment_gate(kit_wechat[1])


@pytest.fixture(scope="module")
async def order_api(
    db_pool: aiomysql.Pool,
    mysql_url: str,
    kit_wechat: tuple[RunningSandbox, WechatPayClient],
) -> AsyncIterator[OrderApi]:
    """The order API's routes in this process, on the session's database and the kit's
    WeChat Pay (a sandbox): no broker, no consumer, no reconciler."""
    sandbox, client = kit_wechat
    async with serving_order_api(db_pool, mysql_url, sandbox, client) as served:
        yield served
