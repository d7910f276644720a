"""A business order's fulfilment, as the backend reports it (``POST /orders/{no}/fulfilment``;
docs/order-api.md, "Fulfilment").

``payment_orders.fulfilment_status`` is ``pending`` from the order's placement; once the
order is paid the backend reports its effect done (``success``) or not (``failed``), once:
the same report again changes nothing (a retry), another one is refused, since a final
state is final. The change and its event (``fulfilment.succeeded`` / ``fulfilment.failed``)
are one transaction (the outbox). A failed fulfilment may be refunded in the same call
(``refund: true``): all that is still refundable, under an ``out_refund_no`` derived from
the order, so a retry is the same refund.

Only business orders have a fulfilment: a package order's effect is the plan its payment
grants (the entitlement service's ``entitlement.granted``), never reported by the backend.
Paid business orders still ``pending`` after ``FULFILMENT_DEADLINE_S`` are counted for an
alert (:func:`count_overdue`, each reconciler pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypedDict

import aiomysql
import structlog

from paylane_common.contract import events
from paylane_common.contract.events import FulfilmentSettled, make_event
from paylane_common.delivery import outbox
from paylane_common.storage.db import transaction
from paylane_common.storage.rows import FulfilmentStatus, OrderStatus, PackageType, fetch_one

from . import OUTBOX_PRODUCER
from .business import is_business
from .errors import Conflict, NotFound
from .ids import keyed_out_refund_no
from .refund_requests import RefundRequest, RefundRequests

log = structlog.get_logger(__name__)

Outcome = Literal["success", "failed"]
#: The ``out_refund_no`` of a failed fulfilment's refund is derived from the order and this.
REFUND_KEY = "fulfilment-failed"
#: A refund's reason (WeChat Pay shows it to the payer, at most 80 characters).
REFUND_REASON = "fulfilment failed"


class FulfilledOrder(TypedDict):
    """The order a fulfilment is reported of, locked."""

    out_trade_no: str
    user_id: str
    package_type: PackageType
    trade_type: str | None
    transaction_id: str | None
    amount_total: int
    status: OrderStatus | None
    description: str | None
    external_id: str | None
    fulfilment_status: FulfilmentStatus | None


@dataclass(frozen=True)
class Reported:
    """What a report did: ``changed`` false for a retry of the state the order has."""

    changed: bool
    refund: RefundRequest | None


class Fulfilments:
    def __init__(self, pool: aiomysql.Pool, refunds: RefundRequests) -> None:
        self._pool = pool
        self._refunds = refunds

    async def report(
        self, out_trade_no: str, status: Outcome, detail: str | None, *, refund: bool = False
    ) -> Reported:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT out_trade_no, user_id, package_type, trade_type, transaction_id,"
                " amount_total, status, description, external_id, fulfilment_status"
                " FROM payment_orders WHERE out_trade_no = %s FOR UPDATE",
                (out_trade_no,),
            )
            order = await fetch_one(cur, FulfilledOrder)
            if order is None:
                raise NotFound(f"order {out_trade_no} not found")
            if not is_business(order):
                raise Conflict(
                    f"order {out_trade_no} is a package order: its effect is the plan its"
                    " payment grants, which has no fulfilment to report",
                    "not_a_business_order",
                )
            current = order["fulfilment_status"]
            changed = current != status
            if changed and current in ("success", "failed"):
                raise Conflict(
                    f"order {out_trade_no}'s fulfilment is {current} already: a final state",
                    "fulfilment_final",
                )
            if changed and order["status"] != "paid":
                raise Conflict(
                    f"order {out_trade_no} is {order['status']}, not paid: only a paid order"
                    " is fulfilled",
                    "order_not_paid",
                )
            if changed:
                now = datetime.now(UTC).replace(tzinfo=None)
                await cur.execute(
                    "UPDATE payment_orders SET fulfilment_status = %s, fulfilment_detail = %s,"
                    " fulfilled_at = %s WHERE out_trade_no = %s",
                    (status, detail, now, out_trade_no),
                )
                await outbox.add(cur, OUTBOX_PRODUCER, _settled(order, status, detail, now))
        if changed:
            log.info("fulfilment_reported", out_trade_no=out_trade_no, status=status)
        requested = None
        if refund:
            # After the commit: the failure stays recorded whatever WeChat Pay answers, and
            # a retry of the call asks for the same refund again.
            requested = await self._refunds.request(
                out_trade_no,
                None,
                REFUND_REASON,
                keyed_out_refund_no(out_trade_no, REFUND_KEY),
            )
        return Reported(changed, requested)


def _settled(
    order: FulfilledOrder, status: Outcome, detail: str | None, at: datetime
) -> events.Envelope:
    data = FulfilmentSettled(
        out_trade_no=order["out_trade_no"],
        user_id=order["user_id"],
        trade_type=order["trade_type"],
        transaction_id=order["transaction_id"],
        amount_total=order["amount_total"],
        description=order["description"],
        external_id=order["external_id"],
        status=status,
        detail=detail,
        fulfilled_at=at.replace(tzinfo=UTC).isoformat(),
    )
    kind = events.FULFILMENT_SUCCEEDED if status == "success" else events.FULFILMENT_FAILED
    return make_event(kind, data)


async def count_overdue(pool: aiomysql.Pool, deadline_s: float) -> int:
    """Paid business orders whose fulfilment is still pending ``deadline_s`` after payment."""
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT COUNT(*) AS n FROM payment_orders WHERE fulfilment_status = 'pending'"
            " AND status = 'paid' AND paid_at < UTC_TIMESTAMP(6) - INTERVAL %s MICROSECOND",
            (int(deadline_s * 1e6),),
        )
        row = await cur.fetchone()
    return int(row["n"])
