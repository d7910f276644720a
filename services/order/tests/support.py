"""Helpers of the order service's tests: the merchant, an order as another writer leaves
it, and a payment event for it."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiomysql
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from paylane_common.contract.catalog import DEFAULT_CATALOG, Package
from paylane_common.contract.events import PaymentSucceeded
from paylane_common.contract.money import yuan
from paylane_common.runtime.settings import load_settings
from paylane_common.wechatpay import WechatPayClient
from paylane_order import api
from paylane_order.config import ORDER_CONFIG, MerchantConfig, OrderConfig
from paylane_order.errors import error_middleware
from paylane_order.gate import Gate
from paylane_order.order_list import OrderList
from paylane_order.orders import Orders
from paylane_order.payments import PaymentApplier
from paylane_order.sessions import Sessions
from paylane_order.settings import OrderSettings
from paylane_order.status_query import StatusQuery
from paylane_order.webhooks.routes import WEBHOOK_STORE
from paylane_order.webhooks.store import WebhookStore
from tests.support import hygiene
from tests.support.events import TRANSACTION_ID, Delivery, payment_succeeded
from tests.support.sandbox import RunningSandbox
from tests.support.seeding import add_order, add_user
from tests.support.stack_config import BACKEND, BACKEND_SECRET, TOKEN_PRIVATE_KEY
from tests.support.wechat import KIT, FakeWechat

MERCHANT = MerchantConfig(
    mchid=KIT.mchid,
    appid=KIT.appid,
    notify_url="http://127.0.0.1:9/notify/wechatpay",
    order_ttl_s=1800,
)
#: The catalog of the tests' gate: :func:`basic_order` sells basic for 9.90 yuan.
CATALOG = {
    "basic": DEFAULT_CATALOG["basic"].model_copy(update={"price_fen": 990}),
    "premium": DEFAULT_CATALOG["premium"],
}


def payment_gate(client: WechatPayClient, catalog: Mapping[str, Package] = CATALOG) -> Gate:
    """The order service's payment gate for the tests' merchant: it verifies the
    notifications of ``tests.support.events`` (signed by the kit's WeChat Pay) and asks
    ``client`` (a sandbox of the kit's keys, see the ``gate`` fixture) about the rest."""
    return Gate(MERCHANT, catalog, client, KIT.apiv3_key)


async def basic_order(
    pool: aiomysql.Pool,
    amount: int = 990,
    status: str = "pending",
    generation_id: str = "",
    package_type: str = "basic",
) -> tuple[str, str]:
    """A basic NATIVE order of a new user, as another writer (the cloud function) leaves
    it: the shared columns only, ``amount`` (fen) in yuan; none of paylane's (expires_at,
    mchid, appid… stay NULL). Returns (out_trade_no, user_id)."""
    out_trade_no = f"T{uuid.uuid4().hex[:24]}"
    user_id = await add_user(pool)
    await add_order(
        pool,
        user_id,
        out_trade_no,
        generation_id=generation_id,
        amount=yuan(amount),
        package_type=package_type,
        trade_type="NATIVE",
        status=status,
    )
    return out_trade_no, user_id


def payment(
    out_trade_no: str, amount: int | None = 990, txn: str = TRANSACTION_ID, **kw: Any
) -> Delivery[PaymentSucceeded]:
    """A payment.succeeded to the merchant (``kw``: any other field)."""
    to_merchant: dict[str, Any] = {"mchid": MERCHANT.mchid, "appid": MERCHANT.appid, **kw}
    return payment_succeeded(out_trade_no, amount, txn, **to_merchant)


def order_settings(
    keys: FakeWechat, api_base: str, amqp_url: str, mysql_url: str, **overrides: Any
) -> OrderSettings:
    """The order service's settings for a merchant of ``keys`` calling WeChat Pay at
    ``api_base`` (a sandbox), as ``paylane reconcile`` reads them from the environment."""
    values: dict[str, Any] = {
        "amqp_url": amqp_url,
        "mysql_url": mysql_url,
        "wechatpay_mchid": keys.mchid,
        "wechatpay_appid": keys.appid,
        "wechatpay_api_base": api_base,
        "wechatpay_notify_url": "http://127.0.0.1:9/notify/wechatpay",
        "wechatpay_merchant_private_key": keys.merchant_private_key_pem,
        "wechatpay_merchant_serial_no": keys.merchant_serial_no,
        "wechatpay_public_key": keys.platform_public_key_pem,
        "wechatpay_public_key_id": keys.public_key_id,
        "client_token_private_key": TOKEN_PRIVATE_KEY,
        "wechatpay_apiv3_key": keys.apiv3_key,
    }
    return load_settings(OrderSettings, **{**values, **overrides})


@dataclass
class OrderApi:
    """The order API served in the test's process (the ``order_api`` fixture)."""

    client: TestClient[web.Request, web.Application]
    orders: Orders
    sessions: Sessions
    pool: aiomysql.Pool
    sandbox: RunningSandbox

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, the JSON answer, or the text of another one)."""
        async with self.client.request(method, path, json=body, headers=headers) as response:
            text = await response.text()
            is_json = response.content_type == "application/json"
            return response.status, json.loads(text) if is_json and text else text

    async def backend(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return await self.call(method, path, body, BACKEND)

    async def user(self) -> tuple[str, dict[str, str]]:
        """A new user with an openid, and the headers of their session."""
        openid = f"o-{uuid.uuid4().hex[:16]}"
        hygiene.register(openid)
        user_id = await add_user(self.pool, openid=openid)
        issued = await self.sessions.issue(user_id)
        return user_id, {"Authorization": f"Bearer {issued.token}"}


@asynccontextmanager
async def serving_order_api(
    pool: aiomysql.Pool,
    mysql_url: str,
    sandbox: RunningSandbox,
    client: WechatPayClient,
    **overrides: Any,
) -> AsyncIterator[OrderApi]:
    """The order API's routes and their middlewares on ``pool``, placing orders at
    ``sandbox`` (the kit's WeChat Pay) through ``client`` (and asking it about pending
    ones on ``GET /orders/{no}``); ``overrides``: settings."""
    settings = order_settings(
        KIT,
        sandbox.base_url,
        "amqp://guest:guest@127.0.0.1:5672/unused",
        mysql_url,
        backend_api_secret=BACKEND_SECRET,
        order_rate_per_min=0,
        max_pending_orders=0,
        **overrides,
    )
    config = OrderConfig.from_settings(settings)
    app = web.Application(middlewares=[error_middleware])
    app[ORDER_CONFIG] = config
    orders = app[api.ORDERS] = Orders(
        pool,
        client,
        KIT.merchant_signer(),
        config.merchant,
        max_pending=config.max_pending_orders,
        duplicate_window_s=config.duplicate_order_window_s,
    )
    sessions = app[api.SESSIONS] = Sessions(pool, config.tokens, config.token_ttl_s)
    app[api.ORDER_LIST] = OrderList(pool)
    gate = payment_gate(client)
    app[api.STATUS_QUERY] = StatusQuery(pool, gate, PaymentApplier(pool, gate), config.status_query)
    app[WEBHOOK_STORE] = WebhookStore(pool)
    api.add_routes(app)
    async with TestClient(TestServer(app)) as test_client:
        yield OrderApi(test_client, orders, sessions, pool, sandbox)
