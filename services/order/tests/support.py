"""Helpers of the order service's tests: the merchant, an order as another writer leaves
it, and a payment event for it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import aiomysql

from paylane_common.catalog import DEFAULT_CATALOG, Package
from paylane_common.events import PaymentSucceeded
from paylane_common.money import yuan
from paylane_common.settings import load_settings
from paylane_common.wechatpay import WechatPayClient
from paylane_order.config import MerchantConfig
from paylane_order.gate import Gate
from paylane_order.settings import OrderSettings
from tests.support.events import TRANSACTION_ID, Delivery, payment_succeeded
from tests.support.seeding import add_order, add_user
from tests.support.stack_config import TOKEN_PRIVATE_KEY
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
    out_trade_no: str, amount: int = 990, txn: str = TRANSACTION_ID, **kw: object
) -> Delivery[PaymentSucceeded]:
    """A payment.succeeded to the merchant (``kw``: any other field)."""
    to_merchant: dict[str, object] = {"mchid": MERCHANT.mchid, "appid": MERCHANT.appid, **kw}
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
