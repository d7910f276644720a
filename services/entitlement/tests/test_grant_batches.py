"""Grants applied in batches (paylane_common.delivery.batching) on the real database: several
orders of one user in one transaction, each event with the plan as it stood after that
grant, and everything not plain left to the one-by-one path."""

from __future__ import annotations

import json

import aiomysql
import pytest

from paylane_common.contract import events
from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_common.contract.ids import new_row_id
from paylane_common.delivery.consumer import Retry
from paylane_common.runtime import tracing
from paylane_common.storage.db import transaction
from paylane_entitlement.grants import EntitlementApplier
from services.entitlement.tests.support import new_user
from tests.support.batches import batch_item
from tests.support.events import order_paid, order_refunded
from tests.support.queries import user_state

pytestmark = pytest.mark.integration


async def _batch(pool: aiomysql.Pool, applier: EntitlementApplier, deliveries):
    async with transaction(pool) as cur:
        return await applier.apply_batch(cur, [batch_item(e, d) for e, d in deliveries])


async def _granted_events(pool: aiomysql.Pool, user_id: str) -> list[tuple[str, int, str]]:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT payload, headers FROM outbox WHERE routing_key = 'entitlement.granted'"
            " AND payload LIKE %s ORDER BY id",
            (f'%"user_id":"{user_id}"%',),
        )
        rows = await cur.fetchall()
    out = []
    for row in rows:
        data = json.loads(row["payload"])["data"]
        trace = json.loads(row["headers"])[tracing.TRACE_HEADER]
        out.append((data["payment_status"], data["regenerate_count"], trace))
    return out


async def test_a_batch_grants_several_orders_of_one_user_in_turn(db_pool):
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    user_id, other = await new_user(db_pool), await new_user(db_pool, "premium", 10)
    deliveries = [
        order_paid(user_id, "basic"),
        order_paid(other, "basic"),
        order_paid(user_id, "premium"),
        order_paid(user_id, "basic"),
    ]
    assert await _batch(db_pool, applier, deliveries) == ["granted"] * 4
    assert await user_state(db_pool, user_id) == ("premium", 3 + 20 + 100 + 20)
    assert await user_state(db_pool, other) == ("premium", 30)  # never lowered
    traces = [f"trace-{deliveries[i][0].event_id}" for i in (0, 2, 3)]
    assert await _granted_events(db_pool, user_id) == [
        ("basic", 23, traces[0]),
        ("premium", 123, traces[1]),
        ("premium", 143, traces[2]),
    ]
    # Delivered again (a redelivery after a lost ack): the inbox answers.
    assert await _batch(db_pool, applier, deliveries[:2]) == ["duplicate", "duplicate"]
    assert await user_state(db_pool, user_id) == ("premium", 143)


async def test_a_batch_leaves_what_is_not_plain_to_the_one_by_one_path(db_pool):
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    user_id = await new_user(db_pool)
    granted_before = order_paid(user_id, "basic")
    await applier(*granted_before)
    again = order_paid(
        user_id, "basic", out_trade_no=granted_before.data.out_trade_no
    )  # new event id
    unknown_user = order_paid(new_row_id("user"), "basic")
    refund = order_refunded(user_id, granted_before.data.out_trade_no)
    fresh = order_paid(user_id, "premium")
    other_user = await new_user(db_pool)
    other = order_paid(other_user, "basic")
    deliveries = [
        again,
        unknown_user,
        refund,
        fresh,  # after a refund of its user: one by one, in arrival order
        fresh,  # the same event twice in one batch
        other,  # another user's grant is not held back by that refund
    ]
    assert await _batch(db_pool, applier, deliveries) == [None] * 5 + ["granted"]
    assert await user_state(db_pool, user_id) == ("basic", 23)
    assert await user_state(db_pool, other_user) == ("basic", 23)

    assert await applier(*deliveries[0]) == "duplicate"  # the order granted already
    with pytest.raises(Retry):
        await applier(*deliveries[1])
    assert await applier(*deliveries[2]) == "revoked"  # the basic order's grant only
    assert await user_state(db_pool, user_id) == ("free", 3)
    assert await applier(*deliveries[3]) == "granted"
    assert await applier(*deliveries[4]) == "duplicate"
    assert await user_state(db_pool, user_id) == ("premium", 103)


async def test_grants_carry_the_order_paid_they_answer_on_both_paths(db_pool):
    """The notifier pushes a payment from its grant alone: ``entitlement.granted`` carries
    the ``order.paid`` (event id, time, generation), one by one and in a batch alike."""
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    one, batched = await new_user(db_pool), await new_user(db_pool)
    alone = order_paid(one, "premium", generation_id="gen-one")
    assert await applier(*alone) == "granted"
    in_batch = order_paid(batched, "basic", generation_id="gen-batch")
    assert await _batch(db_pool, applier, [in_batch]) == ["granted"]
    for user_id, paid in ((one, alone), (batched, in_batch)):
        async with transaction(db_pool) as cur:
            await cur.execute(
                "SELECT payload FROM outbox WHERE routing_key = 'entitlement.granted'"
                " AND payload LIKE %s",
                (f'%"user_id":"{user_id}"%',),
            )
            (row,) = await cur.fetchall()
        carried = events.Envelope.model_validate_json(row["payload"]).typed_data().paid
        assert carried == events.PaidOrder(
            event_id=paid.envelope.event_id,
            occurred_at=paid.envelope.occurred_at,
            generation_id=paid.data.generation_id,
        )
