"""Helpers of the entitlement service's tests: a user with a given plan, an order.paid."""

from __future__ import annotations

import uuid

import aiomysql

from paylane_common import events
from paylane_common.catalog import DEFAULT_CATALOG
from paylane_common.events import Envelope, OrderPaid, make_event
from paylane_common.ids import new_row_id
from tests.support.seeding import add_user


async def new_user(pool: aiomysql.Pool, status: str | None = "free", count: int | None = 3) -> str:
    """A row of the shared ``users`` table with this plan and regenerations (NULL for
    None, as rows of the existing system may have them)."""
    user_id = new_row_id("user")
    return await add_user(
        pool, id=user_id, openid=f"openid-{user_id}", payment_status=status, regenerate_count=count
    )


def order_paid(
    user_id: str, package: str, out_trade_no: str | None = None
) -> tuple[Envelope, OrderPaid]:
    """An order.paid for ``package`` at its catalog price (a new order unless given)."""
    data = OrderPaid(
        out_trade_no=out_trade_no or f"G{uuid.uuid4().hex[:20]}",
        user_id=user_id,
        package_type=package,
        amount_total=DEFAULT_CATALOG[package].price_fen,
        paid_at="2026-11-22T00:00:00+00:00",
    )
    return make_event(events.ORDER_PAID, data), data
