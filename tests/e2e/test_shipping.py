"""Shipping declared to WeChat, end to end (docs/shipping.md): a JSAPI package order
placed, paid at the sandbox and granted is uploaded exactly once; a NATIVE one never;
a busy answer is retried by the running service."""

from __future__ import annotations

import re
from typing import Any

import aiomysql
import pytest

from paylane_common.storage.db import transaction
from tests.support.polling import eventually
from tests.support.queries import fetch_one, user_state
from tests.support.stack import Stack
from tests.support.stack_api import Order, call, new_order, sandbox
from tests.support.stack_config import BACKEND

pytestmark = pytest.mark.e2e


async def paid(stack: Stack, db_pool: aiomysql.Pool, order: Order) -> str:
    """The payer pays the order at the sandbox; once granted, its transaction id."""
    status, answer = await sandbox(stack, "POST", f"/sandbox/orders/{order.out_trade_no}/pay")
    assert status == 200, answer

    async def granted() -> bool:
        return (await user_state(db_pool, order.user_id))[0] == order.package_type

    await eventually(granted, what=f"{order.out_trade_no} granted")
    return str(answer["transaction_id"])


async def uploads(stack: Stack, transaction_id: str) -> list[dict[str, Any]]:
    _, shown = await sandbox(stack, "GET", "/sandbox/shipping")
    return [u["body"] for u in shown["uploads"] if u["transaction_id"] == transaction_id]


async def shipping_state(stack: Stack, out_trade_no: str) -> dict[str, Any] | None:
    status, view = await call(stack, "order", "GET", f"/orders/{out_trade_no}", None, BACKEND)
    assert status == 200, view
    shipping: dict[str, Any] | None = view["shipping"]
    return shipping


async def grant_handled_by_order(db_pool: aiomysql.Pool, out_trade_no: str) -> None:
    """Wait until the order service has handled the entitlement.granted of the order (its
    inbox claim): whatever it decided about shipping is decided then."""
    row = await fetch_one(
        db_pool,
        "SELECT event_id FROM outbox WHERE producer = 'entitlement'"
        " AND routing_key = 'entitlement.granted' AND payload LIKE %s",
        f"%{out_trade_no}%",
    )

    async def claimed() -> bool:
        async with transaction(db_pool) as cur:
            await cur.execute(
                "SELECT 1 FROM inbox WHERE consumer = 'order' AND event_id = %s",
                (row["event_id"],),
            )
            return await cur.fetchone() is not None

    await eventually(claimed, what=f"the grant of {out_trade_no} handled by order")


async def test_a_jsapi_package_order_paid_and_granted_is_uploaded_exactly_once(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    order = await new_order(stack, "premium", "JSAPI")
    txn = await paid(stack, db_pool, order)

    async def uploaded() -> bool:
        shipping = await shipping_state(stack, order.out_trade_no)
        return shipping is not None and shipping["state"] == "uploaded"

    await eventually(uploaded, what=f"{order.out_trade_no} shipped")
    [body] = await uploads(stack, txn)
    assert body["order_key"] == {"order_number_type": 2, "transaction_id": txn}
    assert (body["logistics_type"], body["delivery_mode"]) == (3, 1)
    assert body["shipping_list"] == [{"item_desc": "paylane premium"}]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00", body["upload_time"])
    placed_for = await fetch_one(
        db_pool, "SELECT _openid FROM payment_orders WHERE out_trade_no = %s", order.out_trade_no
    )
    assert body["payer"] == {"openid": placed_for["_openid"]}
    # Every event of the order handled (the grant; its fulfilment, where another branch
    # publishes one for packages): still one upload.
    await grant_handled_by_order(db_pool, order.out_trade_no)
    assert len(await uploads(stack, txn)) == 1


async def test_a_native_order_is_never_uploaded(stack: Stack, db_pool: aiomysql.Pool) -> None:
    order = await new_order(stack, "basic", "NATIVE")
    txn = await paid(stack, db_pool, order)
    await grant_handled_by_order(db_pool, order.out_trade_no)
    assert await shipping_state(stack, order.out_trade_no) is None
    assert await uploads(stack, txn) == []


async def test_a_busy_answer_is_retried_by_the_service(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    # The fault is the sandbox's next upload, whoever's: first let the uploads due (of
    # earlier tests' orders in this database) go, or one of them would take it.
    async def nothing_due() -> bool:
        row = await fetch_one(
            db_pool,
            "SELECT COUNT(*) AS n FROM paylane_shipping WHERE state = 'pending'"
            " AND next_attempt_at <= NOW(6) + INTERVAL 5 SECOND",
        )
        return row["n"] == 0

    await eventually(nothing_due, what="no earlier upload due")
    status, _ = await sandbox(stack, "POST", "/sandbox/shipping/faults", {"errcode": -1})
    assert status == 201
    order = await new_order(stack, "basic", "JSAPI")
    txn = await paid(stack, db_pool, order)

    async def uploaded() -> bool:
        shipping = await shipping_state(stack, order.out_trade_no)
        return shipping is not None and shipping["state"] == "uploaded"

    await eventually(uploaded, what=f"{order.out_trade_no} shipped after a retry")
    shipping = await shipping_state(stack, order.out_trade_no)
    assert shipping is not None and shipping["attempts"] >= 2
    assert len(await uploads(stack, txn)) == 1
