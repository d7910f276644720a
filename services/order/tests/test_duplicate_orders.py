"""A double tap on "pay" makes one order: a second ``POST /orders`` by the same user, for
the same package, trade type and generation, while the first is pending and younger than
``DUPLICATE_ORDER_WINDOW_S``, answers that order (200) with fresh pay parameters, unless
it brings an ``Idempotency-Key`` of its own. Over HTTP, on the session's database and the
kit's WeChat Pay (a sandbox)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from paylane_common.storage.db import transaction
from services.order.tests.support import OrderApi

pytestmark = pytest.mark.integration

JSAPI_BASIC = {"package_type": "basic", "trade_type": "JSAPI"}


async def _orders_of(order_api: OrderApi, user_id: str) -> list[str]:
    async with transaction(order_api.pool) as cur:
        await cur.execute("SELECT out_trade_no FROM payment_orders WHERE user_id = %s", (user_id,))
        return [row["out_trade_no"] for row in await cur.fetchall()]


async def _age(order_api: OrderApi, out_trade_no: str, seconds: int) -> None:
    """The order as if placed ``seconds`` earlier."""
    async with transaction(order_api.pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET created_at = created_at - INTERVAL %s SECOND"
            " WHERE out_trade_no = %s",
            (seconds, out_trade_no),
        )


async def test_a_second_tap_answers_the_pending_order_with_fresh_pay_parameters(
    order_api: OrderApi,
) -> None:
    user_id, session = await order_api.user()
    first = await order_api.call("POST", "/orders", JSAPI_BASIC, session)
    second = await order_api.call("POST", "/orders", JSAPI_BASIC, session)
    assert (first[0], second[0]) == (201, 200), (first, second)
    assert second[1]["out_trade_no"] == first[1]["out_trade_no"]
    assert second[1]["pay"]["package"] == first[1]["pay"]["package"]  # the same prepay_id
    assert second[1]["pay"]["nonceStr"] != first[1]["pay"]["nonceStr"]  # signed anew
    assert await _orders_of(order_api, user_id) == [first[1]["out_trade_no"]]


async def test_two_taps_at_once_make_one_order(order_api: OrderApi) -> None:
    user_id, _ = await order_api.user()
    body = {**JSAPI_BASIC, "user_id": user_id}
    answers = await asyncio.gather(*(order_api.backend("POST", "/orders", body) for _ in range(3)))
    assert sorted(status for status, _ in answers) == [200, 200, 201], answers
    assert len({answer["out_trade_no"] for _, answer in answers}) == 1
    assert len(await _orders_of(order_api, user_id)) == 1


@pytest.mark.parametrize(
    ("change", "second_body", "headers"),
    [
        ("a new Idempotency-Key", {}, {"Idempotency-Key": "tap-2"}),
        ("another package", {"package_type": "premium"}, {}),
        ("another trade type", {"trade_type": "NATIVE"}, {}),
        ("another generation", {"generation_id": "gen-2"}, {}),
    ],
)
async def test_another_request_is_another_order(
    order_api: OrderApi, change: str, second_body: dict[str, Any], headers: dict[str, str]
) -> None:
    user_id, session = await order_api.user()
    first = await order_api.call("POST", "/orders", JSAPI_BASIC, session)
    second = await order_api.call(
        "POST", "/orders", {**JSAPI_BASIC, **second_body}, {**session, **headers}
    )
    assert (first[0], second[0]) == (201, 201), change
    assert second[1]["out_trade_no"] != first[1]["out_trade_no"]
    assert len(await _orders_of(order_api, user_id)) == 2


async def test_an_order_past_the_window_or_no_longer_pending_is_not_answered_again(
    order_api: OrderApi,
) -> None:
    user_id, session = await order_api.user()
    old = await order_api.call("POST", "/orders", JSAPI_BASIC, session)
    await _age(order_api, old[1]["out_trade_no"], 301)  # DUPLICATE_ORDER_WINDOW_S: 300
    new = await order_api.call("POST", "/orders", JSAPI_BASIC, session)
    assert new[0] == 201 and new[1]["out_trade_no"] != old[1]["out_trade_no"]

    closed = await order_api.call("POST", f"/orders/{new[1]['out_trade_no']}/close", None, session)
    assert closed[0] == 200 and closed[1]["status"] == "failed"
    again = await order_api.call("POST", "/orders", JSAPI_BASIC, session)
    assert again[0] == 201
    assert len(await _orders_of(order_api, user_id)) == 3


async def test_a_tap_after_a_failed_placement_places_the_orders_own_amount(
    order_api: OrderApi,
) -> None:
    """The first tap's placement failed (a 503): its row is pending, never placed. The
    second tap places that row, for the amount the row holds, whatever the catalog says
    now (a price changed in between): WeChat Pay must be asked for what the order says,
    or the payment arrives for another amount and the order goes to review, paid."""
    user_id, session = await order_api.user()
    native_premium = {"package_type": "premium", "trade_type": "NATIVE"}
    await order_api.sandbox.ok("DELETE", "/sandbox/faults")
    await order_api.sandbox.add_fault(
        path_prefix="/v3/pay/transactions/native", method="POST", count=4, status=500
    )
    try:
        status, failed = await order_api.call("POST", "/orders", native_premium, session)
        assert (status, failed["error"]) == (503, "wechatpay_unavailable")
    finally:
        await order_api.sandbox.ok("DELETE", "/sandbox/faults")
    (no,) = await _orders_of(order_api, user_id)
    # Made at the price of then: 19.90 yuan (the catalog sells premium at 29.90 now).
    async with transaction(order_api.pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET amount = '19.90' WHERE out_trade_no = %s", (no,)
        )

    status, again = await order_api.call("POST", "/orders", native_premium, session)
    assert (status, again["out_trade_no"], again["amount_total"]) == (200, no, 1990), again
    state = await order_api.sandbox.ok("GET", f"/sandbox/orders/{no}")
    assert state["amount_total"] == 1990


async def test_a_refused_retry_of_an_unplaced_order_leaves_it_pending(
    order_api: OrderApi,
) -> None:
    """The first tap's placement failed (a 503); a second tap places the row again while
    the first one's call may still be in flight at WeChat Pay. A refusal of that retry
    (another body for the same out_trade_no: OUT_TRADE_NO_USED) says nothing of the first
    placement: the order stays pending, never failed and its client never told so."""
    user_id, session = await order_api.user()
    native_basic = {"package_type": "basic", "trade_type": "NATIVE"}
    await order_api.sandbox.ok("DELETE", "/sandbox/faults")
    path = "/v3/pay/transactions/native"
    await order_api.sandbox.add_fault(path_prefix=path, method="POST", count=4, status=500)
    try:
        status, failed = await order_api.call("POST", "/orders", native_basic, session)
        assert (status, failed["error"]) == (503, "wechatpay_unavailable")
        await order_api.sandbox.ok("DELETE", "/sandbox/faults")
        await order_api.sandbox.add_fault(
            path_prefix=path, method="POST", status=400, code="OUT_TRADE_NO_USED"
        )
        status, refused = await order_api.call("POST", "/orders", native_basic, session)
        assert (status, refused["error"]) == (502, "wechatpay_rejected"), refused
    finally:
        await order_api.sandbox.ok("DELETE", "/sandbox/faults")
    (no,) = await _orders_of(order_api, user_id)
    async with transaction(order_api.pool) as cur:
        await cur.execute("SELECT status FROM payment_orders WHERE out_trade_no = %s", (no,))
        assert (await cur.fetchone())["status"] == "pending"
