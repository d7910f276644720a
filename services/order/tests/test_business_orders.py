"""Business orders (the backend sells anything: ``amount_fen`` and ``description``) and
their fulfilment, on the real database and the kit's WeChat Pay (a sandbox): placed,
paid in the sandbox, settled by the payment gate against the order's own amount, no plan
change; fulfilment reported once, its events staged with the change; a failed one
refunded in the same call; every bad input a 400 naming the field."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

import aiomysql
import pytest
from prometheus_client import REGISTRY

from paylane_common.storage.db import transaction
from paylane_common.storage.leases import Lease
from paylane_common.wechatpay import WechatPayClient
from paylane_order.config import ReconcilerConfig
from paylane_order.fulfilment import count_overdue
from paylane_order.gate import Gate
from paylane_order.payments import PaymentApplier
from paylane_order.reconciler import Reconciler
from services.order.tests.support import OrderApi
from tests.support.events import payment_succeeded
from tests.support.queries import fetch_one, order_status, user_state
from tests.support.sandbox import RunningSandbox
from tests.support.seeding import add_order, add_user, ago

pytestmark = pytest.mark.integration


def _external_id() -> str:
    return f"ext-{uuid.uuid4().hex[:16]}"


async def _business_order(
    api: OrderApi, user_id: str, amount_fen: int = 1234, **fields: Any
) -> dict[str, Any]:
    body = {
        "user_id": user_id,
        "amount_fen": amount_fen,
        "description": "话费充值 12.34",
        "trade_type": "JSAPI",
        "external_id": _external_id(),
        **fields,
    }
    status, placed = await api.backend("POST", "/orders", body)
    assert status == 201, placed
    return dict(placed)


async def _pay(api: OrderApi, gate: Gate, out_trade_no: str, amount: int | None = None) -> str:
    """The payer pays at the sandbox (``amount``: another than the order's), no
    notification; the reconciler's claim of it goes through the payment gate, which asks
    WeChat Pay (the sandbox). Returns the payment's outcome."""
    body: dict[str, Any] = {"notify": False}
    if amount is not None:
        body["amount"] = amount
    paid = await api.sandbox.ok("POST", f"/sandbox/orders/{out_trade_no}/pay", body)
    claim = payment_succeeded(out_trade_no, None, paid["transaction_id"], source="reconcile")
    return await PaymentApplier(api.pool, gate)(*claim)


async def _staged(pool: aiomysql.Pool, out_trade_no: str) -> list[tuple[str, dict[str, Any]]]:
    """The order service's staged events of the order, oldest first."""
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT routing_key, payload FROM outbox WHERE producer = 'order'"
            " AND payload LIKE %s ORDER BY id",
            (f"%{out_trade_no}%",),
        )
        return [(r["routing_key"], json.loads(r["payload"])) for r in await cur.fetchall()]


async def test_a_business_order_is_placed_paid_at_its_own_amount_and_changes_no_plan(
    order_api: OrderApi, gate: Gate
) -> None:
    user_id, _ = await order_api.user()
    plan_before = await user_state(order_api.pool, user_id)
    placed = await _business_order(order_api, user_id, attach="sku-42")
    no = placed["out_trade_no"]
    assert (placed["amount_total"], placed["status"]) == (1234, "pending")
    assert placed["pay"]["package"].startswith("prepay_id=")  # JSAPI pay parameters
    at_wechat = await order_api.sandbox.ok("GET", f"/sandbox/orders/{no}")
    assert at_wechat["request"]["amount"]["total"] == 1234
    assert at_wechat["request"]["description"] == "话费充值 12.34"
    assert at_wechat["request"]["attach"] == "sku-42"

    assert await _pay(order_api, gate, no) == "paid"
    status, order = await order_api.backend("GET", f"/orders/{no}")
    assert status == 200
    assert (order["status"], order["package_type"], order["business"]) == ("paid", "free", True)
    assert (order["description"], order["attach"], order["fulfilment_status"]) == (
        "话费充值 12.34",
        "sku-42",
        "pending",
    )
    (key, paid), *_ = await _staged(order_api.pool, no)
    assert (key, paid["data"]["package_type"], paid["data"]["amount_total"]) == (
        "order.paid",
        "free",
        1234,
    )
    # Nothing granted: the plan is the entitlement service's, and order.paid of 'free' is
    # a no-op there (services/entitlement/tests/test_grants.py).
    assert await user_state(order_api.pool, user_id) == plan_before


async def test_a_business_order_paid_another_amount_needs_review(
    order_api: OrderApi, gate: Gate
) -> None:
    user_id, _ = await order_api.user()
    no = (await _business_order(order_api, user_id))["out_trade_no"]
    assert await _pay(order_api, gate, no, amount=1233) == "needs_review"
    row = await fetch_one(
        order_api.pool,
        "SELECT status, review_reason FROM payment_orders WHERE out_trade_no = %s",
        no,
    )
    assert row == {
        "status": "needs_review",
        "review_reason": "amount 1233 differs from order amount 1234",
    }
    assert [key for key, _ in await _staged(order_api.pool, no)] == []


async def test_external_id_makes_the_post_idempotent_and_a_caller_may_name_its_order(
    order_api: OrderApi,
) -> None:
    user_id, _ = await order_api.user()
    own_no = f"BIZ{secrets.token_hex(8).upper()}"
    body = {
        "user_id": user_id,
        "amount_fen": 500,
        "description": "a book",
        "trade_type": "NATIVE",
        "external_id": _external_id(),
        "out_trade_no": own_no,
        "expires_in_s": 600,
    }
    status, first = await order_api.backend("POST", "/orders", body)
    assert (status, first["out_trade_no"]) == (201, own_no)
    status, again = await order_api.backend("POST", "/orders", body)
    assert (status, again["out_trade_no"]) == (200, own_no)  # the same order
    status, other = await order_api.backend("POST", "/orders", {**body, "amount_fen": 501})
    assert (status, other["error"]) == (409, "external_id_reused")
    assert "amount_fen" in other["message"]
    # Another external id, but the order number of an order that exists.
    status, taken = await order_api.backend(
        "POST", "/orders", {**body, "external_id": _external_id()}
    )
    assert (status, taken["error"]) == (409, "out_trade_no_taken")
    row = await fetch_one(
        order_api.pool,
        "SELECT TIMESTAMPDIFF(SECOND, created_at, expires_at) AS ttl, external_id"
        " FROM payment_orders WHERE out_trade_no = %s",
        own_no,
    )
    assert row["external_id"] == body["external_id"]
    assert 590 <= row["ttl"] <= 610  # expires_in_s, not ORDER_TTL_S


async def test_users_buy_only_catalog_packages(order_api: OrderApi) -> None:
    _, headers = await order_api.user()
    business = {"amount_fen": 1, "description": "anything", "trade_type": "NATIVE"}
    status, refused = await order_api.call("POST", "/orders", business, headers)
    assert (status, refused["error"]) == (403, "forbidden")
    assert "amount_fen" in refused["message"]
    status, _ = await order_api.call(
        "POST", "/orders", {"package_type": "basic", "trade_type": "NATIVE"}, headers
    )
    assert status == 201


#: A valid business order's body, less its user; each case below spoils one field.
_GOOD = {"amount_fen": 100, "description": "ok", "trade_type": "NATIVE"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount_fen": 0}, "amount_fen"),
        ({"amount_fen": -5}, "amount_fen"),
        ({"amount_fen": 2**31}, "amount_fen"),  # above WeChat Pay's amount.total
        ({"amount_fen": "100"}, "amount_fen"),
        ({"description": "字" * 43}, "description"),  # 129 bytes of UTF-8, 43 characters
        ({"description": "x" * 128}, "description"),
        ({"description": ""}, "description"),
        ({"external_id": "has space"}, "external_id"),
        ({"external_id": "x" * 65}, "external_id"),
        ({"attach": "x" * 129}, "attach"),
        ({"out_trade_no": "abc"}, "out_trade_no"),  # fewer than 6
        ({"out_trade_no": "BIZ#00001"}, "out_trade_no"),  # outside WeChat Pay's alphabet
        ({"out_trade_no": "x" * 33}, "out_trade_no"),
        ({"expires_in_s": 10}, "expires_in_s"),
        ({"expires_in_s": 7201}, "expires_in_s"),
        ({"description": None}, "description"),
        ({"amount_fen": None}, "amount_fen"),
        ({"package_type": "basic"}, "package_type"),
        ({"generation_id": "gen-1"}, "generation_id"),
    ],
)
async def test_each_bad_business_field_is_a_400_naming_it(
    order_api: OrderApi, change: dict[str, Any], field: str
) -> None:
    user_id, _ = await order_api.user()
    body = {k: v for k, v in {**_GOOD, "user_id": user_id, **change}.items() if v is not None}
    status, answer = await order_api.backend("POST", "/orders", body)
    assert (status, answer["error"]) == (400, "invalid_request"), answer
    assert field in answer["message"]


async def test_a_description_of_127_bytes_is_taken(order_api: OrderApi) -> None:
    user_id, _ = await order_api.user()
    described = "字" * 42 + "x"  # 127 bytes
    placed = await _business_order(order_api, user_id, description=described, trade_type="NATIVE")
    assert placed["amount_total"] == 1234


async def test_fulfilment_success_is_recorded_once_with_its_event(
    order_api: OrderApi, gate: Gate
) -> None:
    user_id, _ = await order_api.user()
    placed = await _business_order(order_api, user_id)
    no = placed["out_trade_no"]
    path = f"/orders/{no}/fulfilment"
    # Not paid yet: nothing to fulfil.
    status, refused = await order_api.backend("POST", path, {"status": "success"})
    assert (status, refused["error"]) == (409, "order_not_paid")
    await _pay(order_api, gate, no)

    status, done = await order_api.backend("POST", path, {"status": "success", "detail": "sent"})
    assert status == 200 and done["changed"] is True and done["refund"] is None
    order = done["order"]
    assert (order["fulfilment_status"], order["fulfilment_detail"]) == ("success", "sent")
    assert order["fulfilled_at"] is not None
    # The same report again: nothing changes, no second event; the other one: refused.
    status, again = await order_api.backend("POST", path, {"status": "success"})
    assert (status, again["changed"], again["order"]["fulfilment_detail"]) == (200, False, "sent")
    status, refused = await order_api.backend("POST", path, {"status": "failed"})
    assert (status, refused["error"]) == (409, "fulfilment_final")

    staged = [(k, e["data"]) for k, e in await _staged(order_api.pool, no)]
    assert [k for k, _ in staged] == ["order.paid", "fulfilment.succeeded"]
    event = staged[1][1]
    assert {k: event[k] for k in ("out_trade_no", "user_id", "trade_type", "status")} == {
        "out_trade_no": no,
        "user_id": user_id,
        "trade_type": "JSAPI",
        "status": "success",
    }
    assert event["transaction_id"] and event["external_id"] and event["amount_total"] == 1234
    assert await order_status(order_api.pool, no) == "paid"


async def test_a_failed_fulfilment_is_refunded_in_the_same_call(
    order_api: OrderApi, gate: Gate
) -> None:
    user_id, _ = await order_api.user()
    no = (await _business_order(order_api, user_id))["out_trade_no"]
    await _pay(order_api, gate, no)
    path = f"/orders/{no}/fulfilment"
    body = {"status": "failed", "detail": "carrier refused", "refund": True}
    status, failed = await order_api.backend("POST", path, body)
    assert status == 200, failed
    assert failed["changed"] is True
    assert failed["order"]["fulfilment_status"] == "failed"
    refund = failed["refund"]
    assert (refund["amount"], refund["status"]) == (1234, "pending")
    at_wechat = await order_api.sandbox.ok("GET", f"/sandbox/orders/{no}")
    assert at_wechat["refunds"] == [refund["out_refund_no"]]
    # A retry: the same refund, not a second one.
    status, again = await order_api.backend("POST", path, body)
    assert (status, again["changed"]) == (200, False)
    assert again["refund"]["out_refund_no"] == refund["out_refund_no"]
    assert (await order_api.sandbox.ok("GET", f"/sandbox/orders/{no}"))["refunds"] == [
        refund["out_refund_no"]
    ]
    assert [k for k, _ in await _staged(order_api.pool, no)] == ["order.paid", "fulfilment.failed"]


async def test_fulfilment_is_for_business_orders_by_the_backend(
    order_api: OrderApi, kit_wechat: tuple[RunningSandbox, WechatPayClient]
) -> None:
    user_id, headers = await order_api.user()
    status, package_order = await order_api.backend(
        "POST", "/orders", {"user_id": user_id, "package_type": "basic", "trade_type": "NATIVE"}
    )
    assert status == 201
    path = f"/orders/{package_order['out_trade_no']}/fulfilment"
    status, refused = await order_api.backend("POST", path, {"status": "success"})
    assert (status, refused["error"]) == (409, "not_a_business_order")
    status, _ = await order_api.call("POST", path, {"status": "success"}, headers)
    assert status == 403  # a user reports no fulfilment
    status, missing = await order_api.backend(
        "POST", "/orders/NOSUCHORDER1/fulfilment", {"status": "success"}
    )
    assert status == 404, missing


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "done"}, "status"),
        ({}, "status"),
        ({"status": "success", "detail": "x" * 256}, "detail"),
        ({"status": "success", "refund": True}, "refund"),
        ({"status": "failed", "extra": 1}, "extra"),
    ],
)
async def test_a_bad_fulfilment_report_is_a_400_naming_the_field(
    order_api: OrderApi, body: dict[str, Any], field: str
) -> None:
    status, answer = await order_api.backend("POST", "/orders/ANYORDER01/fulfilment", body)
    assert (status, answer["error"]) == (400, "invalid_request")
    assert field in answer["message"]


async def test_a_business_order_never_placed_is_placed_again_with_its_own_terms(
    order_api: OrderApi,
) -> None:
    """WeChat Pay unreachable at placement (503): paying again places the same order,
    with its own amount, description and attach (it has no catalog package)."""
    user_id, _ = await order_api.user()
    body = {
        "user_id": user_id,
        "amount_fen": 777,
        "description": "a ticket",
        "attach": "seat-7",
        "trade_type": "NATIVE",
        "external_id": _external_id(),
    }
    await order_api.sandbox.ok("DELETE", "/sandbox/faults")
    await order_api.sandbox.add_fault(
        path_prefix="/v3/pay/transactions/native", method="POST", count=4, status=500
    )
    try:
        status, failed = await order_api.backend("POST", "/orders", body)
        assert (status, failed["error"]) == (503, "wechatpay_unavailable")
    finally:
        await order_api.sandbox.ok("DELETE", "/sandbox/faults")
    row = await fetch_one(
        order_api.pool,
        "SELECT out_trade_no FROM payment_orders WHERE external_id = %s",
        body["external_id"],
    )
    no = row["out_trade_no"]
    status, again = await order_api.backend("POST", f"/orders/{no}/pay")
    assert status == 200, again
    assert again["placed_again"] is True and again["pay"]["code_url"].startswith("weixin://")
    state = await order_api.sandbox.ok("GET", f"/sandbox/orders/{no}")
    assert (state["amount_total"], state["request"]["description"]) == (777, "a ticket")
    assert state["request"]["attach"] == "seat-7"
    # The backend's retry under the same external_id answers that order.
    status, retried = await order_api.backend("POST", "/orders", body)
    assert (status, retried["out_trade_no"]) == (200, no)


async def test_paid_business_orders_unfulfilled_past_the_deadline_are_counted_by_every_replica(
    order_api: OrderApi, kit_wechat: tuple[RunningSandbox, WechatPayClient], gate: Gate
) -> None:
    """``paylane_fulfilment_overdue_orders``: paid business orders still pending
    ``FULFILMENT_DEADLINE_S`` after payment; set by a replica's reconciler pass even when
    another replica holds the reconciler's lease."""
    pool = order_api.pool
    before = await count_overdue(pool, 3600)
    user_id = await add_user(pool)

    async def business(**columns: Any) -> str:
        return await add_order(
            pool, user_id, package_type="free", amount="12.34", description="x", **columns
        )

    overdue = await business(status="paid", fulfilment_status="pending", paid_at=ago(7200))
    await business(status="paid", fulfilment_status="pending", paid_at=ago(600))  # in time
    await business(status="paid", fulfilment_status="success", paid_at=ago(7200))  # reported
    await business(status="pending", fulfilment_status="pending", created_at=ago(7200))
    await add_order(pool, user_id, status="paid", paid_at=ago(7200))  # a package order
    assert await count_overdue(pool, 3600) == before + 1
    assert await count_overdue(pool, 3 * 3600) == before  # a longer deadline: none yet

    config = ReconcilerConfig(fulfilment_deadline_s=3600)
    replica = Reconciler(pool, kit_wechat[1], None, config, gate)  # type: ignore[arg-type]
    async with Lease(pool, Reconciler.LOCK).held() as held:  # another replica's pass
        assert held
        assert await replica.run_once() == {}
    assert REGISTRY.get_sample_value("paylane_fulfilment_overdue_orders") == before + 1
    async with transaction(pool) as cur:  # reported: no longer overdue
        await cur.execute(
            "UPDATE payment_orders SET fulfilment_status = 'success' WHERE out_trade_no = %s",
            (overdue,),
        )
    assert await count_overdue(pool, 3600) == before
