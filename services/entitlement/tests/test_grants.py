"""The entitlement rule (docs/database.md) on the real database: rises only, once per order."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from paylane_common.contract import events
from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_common.contract.events import OrderPaid, OrderRefunded, OrderRevoked, make_event
from paylane_common.contract.ids import new_row_id
from paylane_common.delivery.consumer import Retry
from paylane_common.storage.db import transaction
from paylane_entitlement.grants import EntitlementApplier
from services.entitlement.tests.support import new_user
from tests.support.batches import batch_item
from tests.support.events import Delivery, order_paid, order_refunded
from tests.support.queries import grants, user_state

pytestmark = pytest.mark.integration


async def test_grant_raises_status_and_adds_regenerations(db_pool):
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    user_id = await new_user(db_pool)
    assert await applier(*order_paid(user_id, "basic")) == "granted"
    assert await user_state(db_pool, user_id) == ("basic", 23)
    assert await applier(*order_paid(user_id, "premium")) == "granted"
    assert await user_state(db_pool, user_id) == ("premium", 123)
    # A basic purchase never lowers a premium user; it still adds its regenerations.
    assert await applier(*order_paid(user_id, "basic")) == "granted"
    assert await user_state(db_pool, user_id) == ("premium", 143)


async def test_one_order_grants_once_under_concurrent_distinct_events(db_pool):
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    user_id = await new_user(db_pool)
    out_trade_no = f"G{uuid.uuid4().hex[:20]}"
    deliveries = [order_paid(user_id, "premium", out_trade_no) for _ in range(20)]
    outcomes = await asyncio.gather(*(applier(e, d) for e, d in deliveries))
    assert sorted(outcomes) == ["duplicate"] * 19 + ["granted"]
    assert await user_state(db_pool, user_id) == ("premium", 103)
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT COUNT(*) AS n FROM outbox WHERE routing_key = 'entitlement.granted'"
            " AND payload LIKE %s",
            (f"%{out_trade_no}%",),
        )
        assert (await cur.fetchone())["n"] == 1


async def test_full_refund_revokes_exactly_that_order(db_pool):
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    user_id = await new_user(db_pool)
    _, basic = await applier(*order_paid(user_id, "basic")), None
    premium_event, premium = order_paid(user_id, "premium")
    assert await applier(premium_event, premium) == "granted"
    assert await user_state(db_pool, user_id) == ("premium", 123)

    refund, again = (
        order_refunded(user_id, premium.out_trade_no, package_type="premium") for _ in range(2)
    )
    assert await applier(*refund) == "revoked"
    assert await user_state(db_pool, user_id) == ("basic", 23)
    # Revoked once, whatever happens.
    assert await applier(*again) == "duplicate"
    assert await user_state(db_pool, user_id) == ("basic", 23)
    del basic


def _refunded(paid: Delivery[OrderPaid]) -> Delivery[OrderRefunded]:
    """The full refund of ``paid``."""
    data = paid.data
    return order_refunded(data.user_id, data.out_trade_no, package_type=data.package_type)


async def test_a_full_refund_leaves_the_plan_the_remaining_orders_give(db_pool):
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    # premium, then basic; premium refunded → basic (not premium).
    user_id = await new_user(db_pool)
    premium, basic = order_paid(user_id, "premium"), order_paid(user_id, "basic")
    await applier(*premium)
    await applier(*basic)
    assert await applier(*_refunded(premium)) == "revoked"
    assert await user_state(db_pool, user_id) == ("basic", 23)
    # basic, then premium; both refunded → the plan before the first grant.
    user_id = await new_user(db_pool)
    basic, premium = order_paid(user_id, "basic"), order_paid(user_id, "premium")
    await applier(*basic)
    await applier(*premium)
    await applier(*_refunded(basic))
    assert await user_state(db_pool, user_id) == ("premium", 103)
    await applier(*_refunded(premium))
    assert await user_state(db_pool, user_id) == ("free", 3)


async def test_a_refund_applied_before_its_payment_leaves_nothing_granted(db_pool):
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    user_id = await new_user(db_pool)
    paid = order_paid(user_id, "premium")
    assert await applier(*_refunded(paid)) == "revoked_before_grant"
    assert await applier(*paid) == "duplicate"
    assert await user_state(db_pool, user_id) == ("free", 3)
    # The batch path agrees: the late order.paid is left to the one-by-one path.
    again = order_paid(user_id, "premium", out_trade_no=paid[1].out_trade_no)
    async with transaction(db_pool) as cur:
        assert await applier.apply_batch(
            cur, [batch_item(*again), batch_item(*order_paid(user_id, "basic"))]
        ) == [
            None,
            "granted",
        ]
    assert await applier(*again) == "duplicate"
    assert await user_state(db_pool, user_id) == ("basic", 23)


async def test_a_user_row_with_null_plan_and_count_is_granted_and_revoked(db_pool):
    """Another writer may leave ``payment_status`` / ``regenerate_count`` NULL (the shared
    schema has defaults, not NOT NULL): read as free / 0, on both paths."""
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    user_id = await new_user(db_pool, None, None)
    assert await user_state(db_pool, user_id) == (None, None)
    paid = order_paid(user_id, "premium")
    assert await applier(*paid) == "granted"
    assert await user_state(db_pool, user_id) == ("premium", 100)
    assert await applier(*_refunded(paid)) == "revoked"
    assert await user_state(db_pool, user_id) == ("free", 0)
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT payload FROM outbox WHERE payload LIKE %s ORDER BY id", (f"%{user_id}%",)
        )
        payloads = [json.loads(row["payload"])["data"] for row in await cur.fetchall()]
    assert [(d["payment_status"], d["regenerate_count"]) for d in payloads] == [
        ("premium", 100),
        ("free", 0),
    ]

    batched = await new_user(db_pool, None, None)
    async with transaction(db_pool) as cur:
        outcomes = await applier.apply_batch(
            cur,
            [batch_item(*order_paid(batched, "basic")), batch_item(*order_paid(batched, "basic"))],
        )
    assert outcomes == ["granted", "granted"]
    assert await user_state(db_pool, batched) == ("basic", 40)
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT status_before FROM entitlement_grants WHERE user_id = %s", (batched,)
        )
        # The first grant started from free (the NULL), the second from its basic.
        assert sorted(row["status_before"] for row in await cur.fetchall()) == ["basic", "free"]


async def test_a_grant_for_a_user_row_that_does_not_exist_is_retried_then_dead_lettered(db_pool):
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    missing = new_row_id("user")
    paid = order_paid(missing, "basic")
    with pytest.raises(Retry, match="unknown user"):
        await applier(*paid)
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT COUNT(*) AS n FROM entitlement_grants WHERE out_trade_no = %s",
            (paid[1].out_trade_no,),
        )
        assert (await cur.fetchone())["n"] == 0
    # The batch path leaves it to the one-by-one path (which retries, then dead-letters).
    async with transaction(db_pool) as cur:
        assert await applier.apply_batch(cur, [batch_item(*paid), batch_item(*paid)]) == [
            None,
            None,
        ]


def _revoked(
    paid: Delivery[OrderPaid], reason: str = "not paid at WeChat Pay"
) -> Delivery[OrderRevoked]:
    """``order.revoked`` of ``paid``: its order went to needs_review after the grant."""
    data = OrderRevoked(
        out_trade_no=paid.data.out_trade_no,
        user_id=paid.data.user_id,
        package_type=paid.data.package_type,
        reason=reason,
    )
    return Delivery(make_event(events.ORDER_REVOKED, data), data)


async def _revoked_events(out_trade_no: str, pool) -> list[dict[str, Any]]:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT payload FROM outbox WHERE routing_key = 'entitlement.revoked'"
            " AND payload LIKE %s",
            (f"%{out_trade_no}%",),
        )
        return [json.loads(row["payload"])["data"] for row in await cur.fetchall()]


async def test_an_order_under_review_has_its_grant_taken_back_once(db_pool):
    """An order moved to ``needs_review`` after its grant (issue 24: the bill said WeChat
    Pay never saw it paid, and the grant stayed): exactly what it granted is revoked, and
    the client is told why (``revoked_for: review``)."""
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    user_id = await new_user(db_pool)
    await applier(*order_paid(user_id, "basic"))
    premium = order_paid(user_id, "premium")
    assert await applier(*premium) == "granted"
    assert await user_state(db_pool, user_id) == ("premium", 123)
    assert await applier(*_revoked(premium)) == "revoked"
    assert await user_state(db_pool, user_id) == ("basic", 23)
    assert await applier(*_revoked(premium)) == "duplicate"
    [revoked] = await _revoked_events(premium.data.out_trade_no, db_pool)
    assert (revoked["revoked_for"], revoked["payment_status"]) == ("review", "basic")


async def test_a_revocation_before_its_grant_leaves_nothing_granted(db_pool):
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    user_id = await new_user(db_pool)
    premium = order_paid(user_id, "premium")
    assert await applier(*_revoked(premium)) == "revoked_before_grant"
    assert await applier(*premium) == "duplicate"
    assert await user_state(db_pool, user_id) == ("free", 3)


async def test_a_business_order_changes_no_plan_and_is_no_error(db_pool):
    """A business order (package ``free``) is paid and refunded like any order; its events
    are taken once (the inbox records them) and change nothing: no plan, no ledger row,
    no retry and no dead letter, one by one or in a batch."""
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    user_id = await new_user(db_pool)
    before = await user_state(db_pool, user_id)
    paid = order_paid(user_id, "free", amount_total=1234)
    assert await applier(*paid) == "no_plan_change"
    assert await applier(*paid) == "duplicate"  # recorded: taken once
    async with transaction(db_pool) as cur:
        outcomes = await applier.apply_batch(
            cur, [batch_item(*order_paid(user_id, "free", amount_total=99))]
        )
    assert outcomes == [None]  # left to one by one, which records it as above
    refunded = order_refunded(user_id, paid.data.out_trade_no, 1234, package_type="free")
    assert await applier(*refunded) == "no_plan_change"
    assert await user_state(db_pool, user_id) == before
    assert await grants(db_pool, paid.data.out_trade_no) == {"n": 0, "revoked": 0}
