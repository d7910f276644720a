"""Payments applied in batches (paylane_common.delivery.batching) on the real database: the plain
ones in set-based statements, everything else left to the one-by-one path, and the
result the same as applying every message on its own."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aiomysql
import pytest

from paylane_common.contract.events import PaymentSucceeded
from paylane_common.delivery.consumer import Retry
from paylane_common.runtime import tracing
from paylane_common.storage.db import transaction
from paylane_common.wechatpay.testing import PAYER_OPENID
from paylane_order.payments import PaymentApplier
from services.order.tests.support import basic_order, payment
from tests.support.batches import batch_item

pytestmark = pytest.mark.integration


async def _batch(pool: aiomysql.Pool, applier: PaymentApplier, deliveries) -> list[str | None]:
    async with transaction(pool) as cur:
        return await applier.apply_batch(cur, [batch_item(e, d) for e, d in deliveries])


async def _one_by_one(applier: PaymentApplier, deliveries) -> list[str]:
    outcomes = []
    for envelope, data in deliveries:
        try:
            outcomes.append(await applier(envelope, data))
        except Retry:
            outcomes.append("retry")
    return outcomes


async def _state(pool: aiomysql.Pool, nos: list[str]) -> dict[str, tuple[Any, ...]]:
    """Per order: status, transaction id, payer openid, whether order.paid was marked
    staged; payment_logs kinds; order.paid events staged."""
    state = {}
    async with transaction(pool) as cur:
        for no in nos:
            await cur.execute(
                "SELECT status, transaction_id, _openid AS openid,"
                " paid_event_at IS NOT NULL AS staged FROM payment_orders WHERE out_trade_no = %s",
                (no,),
            )
            order = await cur.fetchone()
            await cur.execute(
                "SELECT kind FROM payment_logs WHERE out_trade_no = %s ORDER BY kind", (no,)
            )
            kinds = [row["kind"] for row in await cur.fetchall()]
            await cur.execute(
                "SELECT COUNT(*) AS n FROM outbox WHERE routing_key = 'order.paid'"
                " AND payload LIKE %s",
                (f"%{no}%",),
            )
            staged = (await cur.fetchone())["n"]
            state[no] = (dict(order) if order else None, kinds, staged)
    return state


async def _scenario(pool: aiomysql.Pool, applier: PaymentApplier):
    """Deliveries covering every case, and the orders they name (in a fixed order)."""
    plain = [await basic_order(pool) for _ in range(3)]
    failed, _ = await basic_order(pool, status="failed")
    mismatch, _ = await basic_order(pool)
    twice, _ = await basic_order(pool)
    seen, _ = await basic_order(pool)
    seen_delivery = payment(seen, txn="42-seen")
    await applier(*seen_delivery)  # already applied before the batch
    unknown = f"T{uuid.uuid4().hex[:24]}"
    first = payment(plain[0][0], txn="42-p0", openid="o-payer")
    deliveries = [
        first,
        payment(plain[1][0], txn="42-p1"),
        first,  # the same event again, in the same batch
        payment(failed, txn="42-late"),
        seen_delivery,  # in the inbox already
        payment(mismatch, amount=1, txn="42-mm"),
        payment(unknown, txn="42-unknown"),
        payment(twice, txn="42-t1"),
        payment(twice, txn="42-t2"),  # a second payment of one order
        payment(plain[2][0], txn="42-p2"),
    ]
    nos = [plain[0][0], plain[1][0], plain[2][0], failed, mismatch, twice, seen, unknown]
    return deliveries, nos


async def test_a_batch_pays_the_plain_payments_and_leaves_the_rest_alone(db_pool, gate):
    applier = PaymentApplier(db_pool, gate)
    deliveries, nos = await _scenario(db_pool, applier)
    outcomes = await _batch(db_pool, applier, deliveries)
    assert outcomes == ["paid", "paid", None, "paid", "duplicate", None, None, "paid", None, "paid"]

    state = await _state(db_pool, nos)
    p0, p1, p2, failed, mismatch, twice, _, unknown = nos
    assert state[p0] == (
        {"status": "paid", "transaction_id": "42-p0", "openid": "o-payer", "staged": 1},
        ["paid"],
        1,
    )
    assert state[p1][0]["status"] == state[p2][0]["status"] == "paid"
    assert state[failed] == (
        {"status": "paid", "transaction_id": "42-late", "openid": PAYER_OPENID, "staged": 1},
        ["paid"],
        1,
    )
    assert state[mismatch] == (
        {"status": "pending", "transaction_id": None, "openid": None, "staged": 0},
        [],
        0,
    )
    assert state[twice][0]["transaction_id"] == "42-t1"
    assert state[unknown] == (None, [], 0)

    # Each staged event carries the trace of the message it came from.
    async with transaction(db_pool) as cur:
        await cur.execute("SELECT payload, headers FROM outbox WHERE payload LIKE %s", (f"%{p1}%",))
        row = await cur.fetchone()
    p1_event = deliveries[1][0].event_id
    assert json.loads(row["headers"])[tracing.TRACE_HEADER] == f"trace-{p1_event}"

    # What the batch left alone, one by one: the reference path's outcomes.
    left = [d for d, o in zip(deliveries, outcomes, strict=True) if o is None]
    assert await _one_by_one(applier, left) == [
        "duplicate",
        "needs_review",
        "retry",
        "duplicate_payment",
    ]


async def test_batch_then_leftovers_ends_as_one_by_one_does(db_pool, gate):
    applier = PaymentApplier(db_pool, gate)

    batched, batched_nos = await _scenario(db_pool, applier)
    outcomes = await _batch(db_pool, applier, batched)
    await _one_by_one(applier, [d for d, o in zip(batched, outcomes, strict=True) if o is None])

    alone, alone_nos = await _scenario(db_pool, applier)
    await _one_by_one(applier, alone)

    # Same scenario, fresh order numbers: compare the states position by position.
    batched_state = await _state(db_pool, batched_nos)
    alone_state = await _state(db_pool, alone_nos)
    assert [batched_state[no] for no in batched_nos] == [alone_state[no] for no in alone_nos]


async def test_a_batch_with_nothing_plain_writes_nothing(db_pool, gate):
    applier = PaymentApplier(db_pool, gate)
    no, _ = await basic_order(db_pool)
    envelope, _ = payment(no)
    internal = PaymentSucceeded(out_trade_no=no, transaction_id="42-int", source="internal")
    async with transaction(db_pool) as cur:
        outcomes = await applier.apply_batch(cur, [batch_item(envelope, internal)])
        await cur.execute(
            "SELECT COUNT(*) AS n FROM inbox WHERE event_id = %s", (envelope.event_id,)
        )
        assert (await cur.fetchone())["n"] == 0
    assert outcomes == [None]  # no amount: WeChat Pay must confirm it, one by one
