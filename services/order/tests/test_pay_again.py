"""``POST /orders/{no}/pay``: a payer who cancelled the payment sheet pays the same order
again, with fresh pay parameters: the prepay answer WeChat Pay still holds, signed anew,
or the order placed again under its own out_trade_no with the same body. Over HTTP, on
the session's database and the kit's WeChat Pay (a sandbox)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from paylane_common.storage.db import transaction
from services.order.tests.support import OrderApi
from tests.support.seeding import add_order
from tests.support.wechat import KIT

pytestmark = pytest.mark.integration


def _signed_by_the_merchant(pay: dict[str, str]) -> None:
    message = "".join(f"{pay[k]}\n" for k in ("appId", "timeStamp", "nonceStr", "package"))
    KIT.merchant_key.public_key().verify(
        base64.b64decode(pay["paySign"]), message.encode(), padding.PKCS1v15(), hashes.SHA256()
    )


async def _set(order_api: OrderApi, out_trade_no: str, assignments: str) -> None:
    async with transaction(order_api.pool) as cur:
        await cur.execute(
            f"UPDATE payment_orders SET {assignments} WHERE out_trade_no = %s", (out_trade_no,)
        )


async def _placed(order_api: OrderApi, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    status, order = await order_api.call(
        "POST", "/orders", {"package_type": "basic", "trade_type": "JSAPI", **body}, headers
    )
    assert status == 201, order
    return dict(order)


async def test_a_cancelled_payment_is_paid_again_with_the_prepay_id_wechat_still_holds(
    order_api: OrderApi,
) -> None:
    _, session = await order_api.user()
    order = await _placed(order_api, session)
    no = order["out_trade_no"]
    status, again = await order_api.call("POST", f"/orders/{no}/pay", None, session)
    assert status == 200, again
    assert (again["out_trade_no"], again["status"], again["placed_again"]) == (no, "pending", False)
    assert again["pay"]["package"] == order["pay"]["package"]  # prepay_id=…, the same
    assert again["pay"]["nonceStr"] != order["pay"]["nonceStr"]
    _signed_by_the_merchant(again["pay"])
    assert again["stream_ticket"] and again["client_token"]

    status, by_backend = await order_api.backend("POST", f"/orders/{no}/pay")
    assert (status, by_backend["pay"]["package"]) == (200, order["pay"]["package"])
    _, stranger = await order_api.user()
    status, answer = await order_api.call("POST", f"/orders/{no}/pay", None, stranger)
    assert (status, answer["error"]) == (404, "not_found")

    # The payer pays with it: WeChat Pay knows that prepay_id's order.
    await order_api.sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    state = await order_api.sandbox.ok("GET", f"/sandbox/orders/{no}")
    assert state["trade_state"] == "SUCCESS"


async def test_an_order_whose_prepay_id_is_too_old_is_placed_again_with_the_same_body(
    order_api: OrderApi,
) -> None:
    """WeChat Pay answers an identical placement of the same out_trade_no with a prepay
    answer; a body that differs in anything would be OUT_TRADE_NO_USED (a 502 here)."""
    _, session = await order_api.user()
    order = await _placed(order_api, session, generation_id="gen-again")
    no = order["out_trade_no"]
    # As if placed 2 h ago, still payable (an ORDER_TTL_S of 7200).
    await _set(order_api, no, "created_at = created_at - INTERVAL 7150 SECOND")
    status, again = await order_api.call("POST", f"/orders/{no}/pay", None, session)
    assert status == 200, again
    assert (again["out_trade_no"], again["placed_again"]) == (no, True)
    assert again["pay"]["package"].startswith("prepay_id=wx")
    _signed_by_the_merchant(again["pay"])


async def test_an_order_never_placed_at_wechatpay_is_placed_by_paying_again(
    order_api: OrderApi,
) -> None:
    user_id, session = await order_api.user()
    await order_api.sandbox.ok("DELETE", "/sandbox/faults")
    await order_api.sandbox.add_fault(
        path_prefix="/v3/pay/transactions/native", method="POST", count=4, status=500
    )
    try:
        status, failed = await order_api.call(
            "POST", "/orders", {"package_type": "premium", "trade_type": "NATIVE"}, session
        )
        assert (status, failed["error"]) == (503, "wechatpay_unavailable")
    finally:
        await order_api.sandbox.ok("DELETE", "/sandbox/faults")
    async with transaction(order_api.pool) as cur:
        await cur.execute("SELECT out_trade_no FROM payment_orders WHERE user_id = %s", (user_id,))
        (row,) = await cur.fetchall()
    no = row["out_trade_no"]
    status, again = await order_api.call("POST", f"/orders/{no}/pay", None, session)
    assert status == 200, again
    assert again["placed_again"] is True and again["pay"]["code_url"].startswith("weixin://")
    state = await order_api.sandbox.ok("GET", f"/sandbox/orders/{no}")
    assert (state["trade_state"], state["amount_total"]) == ("NOTPAY", 2990)


async def test_what_cannot_be_paid_again_is_a_clear_409(order_api: OrderApi) -> None:
    user_id, session = await order_api.user()
    expired = (await _placed(order_api, session))["out_trade_no"]
    await _set(order_api, expired, "expires_at = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND")
    paid = (await _placed(order_api, session, trade_type="NATIVE"))["out_trade_no"]
    await _set(order_api, paid, "status = 'paid'")
    closed = (await _placed(order_api, session, generation_id="gen-closed"))["out_trade_no"]
    status, _ = await order_api.call("POST", f"/orders/{closed}/close", None, session)
    assert status == 200
    theirs = await add_order(order_api.pool, user_id, trade_type="JSAPI")  # the cloud function's

    for no, code in [
        (expired, "order_expired"),
        (paid, "order_not_pending"),
        (closed, "order_not_pending"),
        (theirs, "order_not_repayable"),
    ]:
        status, answer = await order_api.call("POST", f"/orders/{no}/pay", None, session)
        assert (status, answer["error"]) == (409, code), (no, answer)
