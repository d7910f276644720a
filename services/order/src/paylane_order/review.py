"""``needs_review``: an order paylane will not settle on its own, with the reason.

Whatever moves an order there (a payment that does not pay for it, a row marked paid that
WeChat Pay does not confirm, the daily bill) goes through :func:`to_review`. An order whose
``order.paid`` paylane had already staged was granted (or will be): it gets an
``order.revoked``, so the entitlement service takes back exactly what it granted and the
client hears that the order is under review. An operator then settles it (a refund, or
a grant by hand).
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

import aiomysql
import structlog

from paylane_common.contract import events
from paylane_common.contract.events import OrderRevoked, make_event
from paylane_common.delivery import outbox
from paylane_common.storage.rows import OrderStatus, PackageType, fetch_one

from . import OUTBOX_PRODUCER, metrics

log = structlog.get_logger(__name__)


class OrderOwner(TypedDict):
    """Whose order, of what: what ``order.revoked`` and ``order.refunded`` name."""

    out_trade_no: str
    user_id: str
    package_type: PackageType


class _UnderReview(OrderOwner):
    status: OrderStatus | None
    paid_event_at: datetime | None


def order_revoked(order: OrderOwner, reason: str) -> events.Envelope:
    """``order.revoked`` for ``order``."""
    return make_event(
        events.ORDER_REVOKED,
        OrderRevoked(
            out_trade_no=order["out_trade_no"],
            user_id=order["user_id"],
            package_type=order["package_type"],
            reason=reason[:255],
        ),
    )


async def to_review(
    cur: aiomysql.Cursor, out_trade_no: str, reason: str, *, transaction_id: str | None = None
) -> bool:
    """The order to ``needs_review`` with ``reason``, in the caller's transaction (the row
    locked); whether it moved. Revokes what it granted, if it did (see above)."""
    await cur.execute(
        "SELECT out_trade_no, user_id, package_type, status, paid_event_at"
        " FROM payment_orders WHERE out_trade_no = %s FOR UPDATE",
        (out_trade_no,),
    )
    order = await fetch_one(cur, _UnderReview)
    if order is None or order["status"] == "needs_review":
        return False
    await cur.execute(
        "UPDATE payment_orders SET status = 'needs_review', review_reason = %s,"
        " transaction_id = COALESCE(transaction_id, %s) WHERE out_trade_no = %s",
        (reason[:255], transaction_id, out_trade_no),
    )
    metrics.NEEDS_REVIEW.inc()
    if order["status"] == "paid" and order["paid_event_at"] is not None:
        await outbox.add(cur, OUTBOX_PRODUCER, order_revoked(order, reason))
        metrics.REVOKED.inc()
        log.error("order_revoked", alert=True, reason=reason)
    return True
