"""``pending → failed``: an order that ends unpaid, and its paying client told.

``failed`` is the shared schema's word for an order that timed out or was cancelled
(``closed_at`` says when). Whatever ends an order so (closing it through the API, a
placement WeChat Pay refused, the reconciler's closes of orders closed at WeChat Pay,
failed or expired) goes through :func:`fail`: one conditional UPDATE and, in the same
transaction, ``order.failed`` into the outbox with the reason, which the notifier pushes
to the paying client (docs/notifier.md), so that it stops waiting for a payment. A
payment that still arrives is honoured all the same (payments.py).
"""

from __future__ import annotations

import aiomysql
import structlog

from paylane_common.contract import events
from paylane_common.contract.events import FailedReason, OrderFailed, make_event
from paylane_common.delivery import outbox
from paylane_common.storage.db import transaction

from . import OUTBOX_PRODUCER

log = structlog.get_logger(__name__)


async def fail(
    cur: aiomysql.Cursor, out_trade_no: str, reason: FailedReason, *, detail: str | None = None
) -> bool:
    """The order ``failed`` for ``reason``, in the caller's transaction, unless it is no
    longer ``pending``; whether it moved. ``detail`` (e.g. WeChat Pay's refusal) goes to
    ``review_reason``."""
    await cur.execute(
        "UPDATE payment_orders SET status = 'failed', closed_at = NOW(6),"
        " review_reason = COALESCE(%s, review_reason)"
        " WHERE out_trade_no = %s AND status = 'pending'",
        (detail[:255] if detail else None, out_trade_no),
    )
    if cur.rowcount != 1:
        return False
    await cur.execute(
        "SELECT user_id, package_type FROM payment_orders WHERE out_trade_no = %s",
        (out_trade_no,),
    )
    row = await cur.fetchone()
    failed = OrderFailed(
        out_trade_no=out_trade_no,
        user_id=row["user_id"],
        package_type=row["package_type"],
        reason=reason,
    )
    await outbox.add(cur, OUTBOX_PRODUCER, make_event(events.ORDER_FAILED, failed))
    log.info("order_failed", out_trade_no=out_trade_no, reason=reason)
    return True


async def fail_order(
    pool: aiomysql.Pool, out_trade_no: str, reason: FailedReason, *, detail: str | None = None
) -> bool:
    """:func:`fail` in a transaction of its own."""
    async with transaction(pool) as cur:
        return await fail(cur, out_trade_no, reason, detail=detail)
