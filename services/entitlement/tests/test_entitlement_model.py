"""The entitlement rule against a simple model, on the real database (hypothesis).

Random sequences of payments, full and partial refunds of a few orders of one user,
delivered in any order (a refund before its payment: a replayed DLQ, relays racing),
redelivered under new event ids, with the app using regenerations in between. After
every step the user's plan and regenerations must be what the model says:

- the plan is the best of the plan before the user's first grant and the packages of the
  orders still granted;
- an order grants once, and never after its full refund has been applied;
- a full refund takes back what that order granted, never below zero (regenerations
  already used are not turned into a debt).

The one-by-one path and the batch path (several deliveries in one transaction, the rest
one by one as ``BatchConsumer`` does) must both agree with the model.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import aiomysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paylane_common.contract.catalog import DEFAULT_CATALOG, STATUS_RANK
from paylane_common.contract.events import OrderPaid, OrderRefunded
from paylane_common.storage.db import transaction
from paylane_entitlement.grants import EntitlementApplier
from services.entitlement.tests.support import new_user
from tests.support.batches import batch_item
from tests.support.events import Delivery, order_paid, order_refunded
from tests.support.queries import user_state

pytestmark = pytest.mark.integration

PACKAGES = sorted(DEFAULT_CATALOG)
ORDERS = 4

#: ("paid", order) | ("refund", order, full) | ("use", n): the app spends regenerations.
Step = tuple[Any, ...]


def steps() -> st.SearchStrategy[list[Step]]:
    order = st.integers(0, ORDERS - 1)
    return st.lists(
        st.one_of(
            st.tuples(st.just("paid"), order),
            st.tuples(st.just("refund"), order, st.booleans()),
            st.tuples(st.just("use"), st.integers(1, 150)),
        ),
        min_size=1,
        max_size=14,
    )


@dataclass
class Model:
    status: str
    count: int
    packages: list[str]
    base: str = ""
    granted: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)  # granted once, or fully refunded

    def __post_init__(self) -> None:
        self.base = self.status

    def apply(self, step: Step) -> None:
        if step[0] == "use":
            self.count = max(self.count - step[1], 0)
        elif step[0] == "paid":
            if step[1] not in self.done:
                self.done.add(step[1])
                self.granted.add(step[1])
                self.count += DEFAULT_CATALOG[self.packages[step[1]]].regenerate_grant
        elif step[2]:  # a full refund; a partial one changes nothing
            if step[1] in self.granted:
                self.granted.discard(step[1])
                grant = DEFAULT_CATALOG[self.packages[step[1]]].regenerate_grant
                self.count = max(self.count - grant, 0)
            self.done.add(step[1])
        plans = [self.base] + [
            DEFAULT_CATALOG[self.packages[i]].payment_status for i in self.granted
        ]
        self.status = max(plans, key=STATUS_RANK.__getitem__)


class Deliveries:
    """The events of one user's orders, each delivery under a new event id."""

    def __init__(self, user_id: str, packages: list[str]) -> None:
        self.user_id = user_id
        self.packages = packages
        self.numbers = [f"M{uuid.uuid4().hex[:20]}" for _ in packages]

    def event(self, step: Step) -> Delivery[OrderPaid] | Delivery[OrderRefunded]:
        package, number = self.packages[step[1]], self.numbers[step[1]]
        if step[0] == "paid":
            return order_paid(self.user_id, package, number)
        # A partial refund of one fen, or the whole price.
        amount = None if step[2] else 1
        return order_refunded(self.user_id, number, amount, package_type=package, full=step[2])


async def _use(pool: aiomysql.Pool, user_id: str, n: int) -> None:
    async with transaction(pool) as cur:
        await cur.execute(
            "UPDATE users SET regenerate_count = GREATEST(regenerate_count - %s, 0) WHERE id = %s",
            (n, user_id),
        )


async def _start(pool: aiomysql.Pool, data: st.DataObject) -> tuple[Model, Deliveries]:
    status = data.draw(st.sampled_from(["free", "free", "basic", "premium"]), label="plan")
    count = data.draw(st.integers(0, 5), label="regenerations")
    packages = data.draw(st.lists(st.sampled_from(PACKAGES), min_size=ORDERS, max_size=ORDERS))
    user_id = await new_user(pool, status, count)
    return Model(status, count, packages), Deliveries(user_id, packages)


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(data=st.data(), sequence=steps())
async def test_one_by_one_matches_the_model(
    db_pool: aiomysql.Pool, data: st.DataObject, sequence: list[Step]
) -> None:
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    model, deliveries = await _start(db_pool, data)
    for step in sequence:
        if step[0] == "use":
            await _use(db_pool, deliveries.user_id, step[1])
        else:
            await applier(*deliveries.event(step))
        model.apply(step)
        assert await user_state(db_pool, deliveries.user_id) == (model.status, model.count), step


@SETTINGS
@given(data=st.data(), sequence=steps())
async def test_batches_match_the_model(
    db_pool: aiomysql.Pool, data: st.DataObject, sequence: list[Step]
) -> None:
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)
    model, deliveries = await _start(db_pool, data)
    batch: list[Step] = []

    async def deliver() -> None:
        items = [batch_item(*deliveries.event(step)) for step in batch]
        async with transaction(db_pool) as cur:
            outcomes = await applier.apply_batch(cur, items)
        for item, outcome in zip(items, outcomes, strict=True):
            if outcome is None:  # left to the one-by-one path, in arrival order
                await applier(item.envelope, item.data)
        for step in batch:
            model.apply(step)
        batch.clear()
        assert await user_state(db_pool, deliveries.user_id) == (model.status, model.count)

    for step in sequence:
        if step[0] == "use":
            if batch:
                await deliver()
            await _use(db_pool, deliveries.user_id, step[1])
            model.apply(step)
            continue
        batch.append(step)
        if len(batch) >= data.draw(st.integers(1, 6), label="batch size"):
            await deliver()
    if batch:
        await deliver()
