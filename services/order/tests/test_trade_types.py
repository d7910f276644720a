"""Trade types the order service offers: APP only with the mobile app's appid configured."""

from __future__ import annotations

from dataclasses import replace

import pytest

from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_order.errors import InvalidRequest
from paylane_order.orders import NewOrder, Orders
from services.order.tests.support import MERCHANT


def _new(trade_type: str) -> NewOrder:
    return NewOrder(
        user_id="user-1",
        acting_user=None,
        package=DEFAULT_CATALOG["basic"],
        trade_type=trade_type,
        openid=None,
        generation_id=None,
        client_ip=None,
        idempotency_key=None,
    )


async def test_app_is_refused_with_a_clear_400_without_the_apps_appid() -> None:
    # Refused before the database or WeChat Pay is touched: neither is given.
    orders = Orders(None, None, None, MERCHANT)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as info:
        await orders.create(_new("APP"))
    assert (info.value.status, info.value.code) == (400, "trade_type_unavailable")
    assert "WECHATPAY_APP_APPID" in info.value.message


def test_app_orders_are_placed_under_the_apps_appid() -> None:
    merchant = replace(MERCHANT, app_appid="wx8888888888888888")
    assert merchant.appid_for("APP") == "wx8888888888888888"
    assert {merchant.appid_for(t) for t in ("JSAPI", "NATIVE", "H5")} == {MERCHANT.appid}
    assert MERCHANT.appid_for("APP") is None


async def test_cloudhosting_offers_jsapi_and_native_only() -> None:
    hosted = replace(MERCHANT, trade_types=frozenset({"JSAPI", "NATIVE"}))
    # Refused before the database or WeChat Pay is touched: neither is given.
    orders = Orders(None, None, None, hosted)  # type: ignore[arg-type]
    for trade_type in ("H5", "APP"):
        with pytest.raises(InvalidRequest) as info:
            await orders.create(_new(trade_type))
        assert (info.value.status, info.value.code) == (400, "trade_type_unavailable")
        assert "Cloud Hosting" in info.value.message
    assert hosted.offers("JSAPI") and hosted.offers("NATIVE") and MERCHANT.offers("H5")
