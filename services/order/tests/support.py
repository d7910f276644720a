"""Helpers of the order service's tests: the merchant, an order as another writer leaves
it, and a payment event for it."""

from __future__ import annotations

import uuid

import aiomysql

from paylane_common.events import PaymentSucceeded
from paylane_order.config import MerchantConfig
from paylane_order.money import yuan
from tests.support.events import TRANSACTION_ID, Delivery, payment_succeeded
from tests.support.seeding import add_order, add_user

MERCHANT = MerchantConfig(
    mchid="1900000109",
    appid="wx-app-main",
    notify_url="http://127.0.0.1:9/notify/wechatpay",
    order_ttl_s=1800,
)


async def basic_order(
    pool: aiomysql.Pool, amount: int = 990, status: str = "pending", generation_id: str = ""
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
        package_type="basic",
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
