"""Asking WeChat Pay about a pending order when its client asks (docs/order-api.md,
"Asking WeChat Pay on demand").

A client polling ``GET /orders/{no}`` (its stream is down, or the payment sheet just
closed) should wait neither for a notification that may be late or lost nor for the
reconciler's next look. So a GET of an order still ``pending`` ``after_s`` after it was
made asks WeChat Pay, as the existing system's query function does, and a payment WeChat
Pay confirms is applied before the answer, the one way every payment is: the payment
gate (``Gate.from_query``: WeChat Pay's own account of the payment; ``Gate.mismatch``: the
amount is the order's and a price of its package) and the payment consumer's transaction
(``PaymentApplier.apply_confirmed``: inbox, conditional ``pending → paid``,
``payment_logs`` with source ``query``, outbox ``order.paid``).

- **At most once per ``interval_s`` an order**, whichever replica serves the GET: a
  conditional UPDATE of ``payment_orders.queried_at`` lets one request in, the others
  answer the row. (A limit in process memory would not hold: the balancer spreads one
  client's polls over the replicas.) ``reconciled_at`` and the reconciler's schedule
  stay the reconciler's.
- **Never a failed GET**: an error of WeChat Pay's, or no answer within ``timeout_s``
  (its retries included), is logged and counted, and the GET answers the row as it is;
  the reconciler settles the order later.
- **Only a payment is applied here**: an order WeChat Pay reports closed, failed or
  unpaid past its expiry is left to the reconciler, which closes it (failed.py).
- The inbox id is ``query-<transaction_id>``: another GET, a replica racing, or the
  notification arriving after, applies nothing twice (the inbox and the conditional
  UPDATE of payments.py).
"""

from __future__ import annotations

import asyncio

import aiomysql
import structlog

from paylane_common.contract import events
from paylane_common.contract.events import PaymentSucceeded, make_event
from paylane_common.delivery.consumer import Retry
from paylane_common.storage.db import transaction
from paylane_common.storage.rows import OrderRow

from . import metrics
from .config import StatusQueryConfig
from .gate import Gate, Unconfirmed
from .payments import PaymentApplier
from .query_log import Source

log = structlog.get_logger(__name__)


class StatusQuery:
    def __init__(
        self,
        pool: aiomysql.Pool,
        gate: Gate,
        payments: PaymentApplier,
        config: StatusQueryConfig,
        source: Source = "on_demand",
    ) -> None:
        self._pool = pool
        self._gate = gate
        self._payments = payments
        self._config = config
        #: Who asks, as the query's record says: a client's GET, or an operator.
        self._source: Source = source

    async def settle(self, order: OrderRow) -> bool:
        """Asks WeChat Pay about ``order`` (a row) when it is pending, ``after_s`` old and
        not asked within ``interval_s``; True when a payment was applied (read the row
        again), False otherwise, whatever WeChat Pay did."""
        if order["status"] != "pending" or self._config.after_s < 0:
            return False
        out_trade_no: str = order["out_trade_no"]
        if not await self._claim(out_trade_no):
            return False
        claim = PaymentSucceeded(out_trade_no=out_trade_no, transaction_id="-", source="query")
        try:
            async with asyncio.timeout(self._config.timeout_s):
                paid = await self._gate.from_query(claim, any_transaction=True, source=self._source)
        except Unconfirmed:
            metrics.STATUS_QUERIES.labels("not_paid").inc()
            return False
        except Retry as exc:  # WeChat Pay's error, after the client's retries
            metrics.STATUS_QUERIES.labels("failed").inc()
            log.warning("status_query_failed", out_trade_no=out_trade_no, error=exc.reason)
            return False
        except TimeoutError:
            metrics.STATUS_QUERIES.labels("timeout").inc()
            log.warning(
                "status_query_timed_out", out_trade_no=out_trade_no, after_s=self._config.timeout_s
            )
            return False
        envelope = make_event(events.PAYMENT_SUCCEEDED, paid, f"query-{paid.transaction_id}")
        try:
            outcome = await self._payments.apply_confirmed(envelope, paid)
        except Retry as exc:  # cannot be for a row just read; the reconciler gets it then
            metrics.STATUS_QUERIES.labels("failed").inc()
            log.warning("status_query_not_applied", out_trade_no=out_trade_no, error=exc.reason)
            return False
        metrics.STATUS_QUERIES.labels("paid" if outcome == "paid" else "already_settled").inc()
        log.info("status_query_settled", out_trade_no=out_trade_no, outcome=outcome)
        return True

    async def _claim(self, out_trade_no: str) -> bool:
        """This request's turn to ask: the order is pending, ``after_s`` old, and nobody
        asked within ``interval_s`` (one conditional UPDATE, so one replica wins)."""
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE payment_orders SET queried_at = NOW(6)"
                " WHERE out_trade_no = %s AND status = 'pending'"
                " AND created_at <= NOW(6) - INTERVAL %s MICROSECOND"
                " AND (queried_at IS NULL OR queried_at <= NOW(6) - INTERVAL %s MICROSECOND)",
                (
                    out_trade_no,
                    int(self._config.after_s * 1e6),
                    int(self._config.interval_s * 1e6),
                ),
            )
            return bool(cur.rowcount == 1)
