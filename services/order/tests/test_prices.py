"""``GET /prices/current`` byte for byte: the seed's ``success`` / ``data`` (yuan as JSON
numbers written from the catalog's Decimals, ``29.90`` not ``29.9``) and the order
service's own fields, in this order and with these separators, whatever builds it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from paylane_common.runtime.settings import load_settings
from paylane_common.wechatpay.testing import FakeWechatPay
from paylane_order import api
from paylane_order.config import ORDER_CONFIG, OrderConfig
from paylane_order.errors import error_middleware
from paylane_order.settings import OrderSettings
from tests.support.stack_config import TOKEN_PRIVATE_KEY

KEYS = FakeWechatPay()
EFFECTIVE_AT = "2025-01-01T08:00:00+08:00"

Client = TestClient[web.Request, web.Application]


def _settings(**overrides: Any) -> OrderSettings:
    return load_settings(
        OrderSettings,
        wechatpay_mchid=KEYS.mchid,
        wechatpay_appid=KEYS.appid,
        wechatpay_api_base="https://api.mch.weixin.qq.com",
        wechatpay_notify_url="https://pay.example.com/notify/wechatpay",
        wechatpay_merchant_private_key=KEYS.merchant_private_key_pem,
        wechatpay_merchant_serial_no=KEYS.merchant_serial_no,
        wechatpay_public_key=KEYS.platform_public_key_pem,
        wechatpay_public_key_id=KEYS.public_key_id,
        client_token_private_key=TOKEN_PRIVATE_KEY,
        wechatpay_apiv3_key=KEYS.apiv3_key,
        prices_effective_at=EFFECTIVE_AT,
        **overrides,
    )


@pytest.fixture
def order_api() -> Callable[..., AbstractAsyncContextManager[Client]]:
    """The order API's routes for a catalog (``package_catalog``: its JSON, or the
    default); ``GET /prices/current`` reads nothing but the config."""

    @asynccontextmanager
    async def serve(**overrides: Any) -> AsyncIterator[Client]:
        app = web.Application(middlewares=[error_middleware])
        app[ORDER_CONFIG] = OrderConfig.from_settings(_settings(**overrides))
        api.add_routes(app)
        async with TestClient(TestServer(app)) as client:
            yield client

    return serve


async def _body(client: Client) -> bytes:
    response = await client.get("/prices/current")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    return await response.read()


async def test_the_default_catalog(order_api: Callable[..., Any]) -> None:
    async with order_api() as client:
        body = await _body(client)
    assert body == (
        b'{"success": true, "data": {"packages": {"basic": 0.01, "premium": 29.90},'
        b' "effectiveAt": "2025-01-01T00:00:00.000Z", "updatedAt": "2025-01-01T00:00:00.000Z"},'
        b' "currency": "CNY", "packages": {"basic": "0.01", "premium": "29.90"},'
        b' "packages_fen": {"basic": 1, "premium": 2990},'
        b' "grants": {"basic": {"payment_status": "basic", "regenerate_count": 20},'
        b' "premium": {"payment_status": "premium", "regenerate_count": 100}}}'
    )


async def test_a_catalog_of_other_prices(order_api: Callable[..., Any]) -> None:
    """Trailing zeros stay (``0.10``, ``100.00``), as they do in the Decimal yuan."""
    catalog = {
        "basic": {"price_fen": 10, "payment_status": "basic", "regenerate_grant": 5},
        "premium": {"price_fen": 10000, "payment_status": "premium", "regenerate_grant": 50},
    }
    async with order_api(package_catalog=json.dumps(catalog)) as client:
        body = await _body(client)
    assert body == (
        b'{"success": true, "data": {"packages": {"basic": 0.10, "premium": 100.00},'
        b' "effectiveAt": "2025-01-01T00:00:00.000Z", "updatedAt": "2025-01-01T00:00:00.000Z"},'
        b' "currency": "CNY", "packages": {"basic": "0.10", "premium": "100.00"},'
        b' "packages_fen": {"basic": 10, "premium": 10000},'
        b' "grants": {"basic": {"payment_status": "basic", "regenerate_count": 5},'
        b' "premium": {"payment_status": "premium", "regenerate_count": 50}}}'
    )
