"""``needs_review`` after a grant takes the grant back (review.py), on the real database."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from paylane_common.contract.events import parse_event
from paylane_common.storage.db import transaction
from paylane_order.payments import PaymentApplier
from paylane_order.review import to_review
from services.order.tests.support import basic_order, payment
from tests.support.queries import fetch_one, order_status

pytestmark = pytest.mark.integration


async def _staged(pool, out_trade_no: str, routing_key: str) -> list[Any]:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT payload FROM outbox WHERE routing_key = %s AND payload LIKE %s",
            (routing_key, f"%{out_trade_no}%"),
        )
        return [parse_event(row["payload"].encode())[1] for row in await cur.fetchall()]


def _needs_review() -> float:
    return REGISTRY.get_sample_value("paylane_orders_needs_review_total") or 0.0


async def test_a_granted_order_sent_to_review_is_revoked_once(db_pool, gate) -> None:
    out_trade_no, user_id = await basic_order(db_pool)
    assert await PaymentApplier(db_pool, gate)(*payment(out_trade_no)) == "paid"
    before = _needs_review()
    async with transaction(db_pool) as cur:
        assert await to_review(cur, out_trade_no, "not_paid_at_wechat: not in the bill")
    async with transaction(db_pool) as cur:
        assert not await to_review(cur, out_trade_no, "again")  # once
    assert _needs_review() == before + 1  # what PaylaneOrdersNeedReview counts
    [revoked] = await _staged(db_pool, out_trade_no, "order.revoked")
    assert (revoked.user_id, revoked.package_type, revoked.reason) == (
        user_id,
        "basic",
        "not_paid_at_wechat: not in the bill",
    )
    assert await order_status(db_pool, out_trade_no) == "needs_review"
    row = await fetch_one(
        db_pool, "SELECT review_reason FROM payment_orders WHERE out_trade_no = %s", out_trade_no
    )
    assert row["review_reason"] == "not_paid_at_wechat: not in the bill"


async def test_an_order_never_announced_has_nothing_to_revoke(db_pool) -> None:
    out_trade_no, _ = await basic_order(db_pool, status="paid")
    async with transaction(db_pool) as cur:
        assert await to_review(cur, out_trade_no, "marked paid, not confirmed")
    assert await _staged(db_pool, out_trade_no, "order.revoked") == []
