"""An operator resolves a ``needs_review`` order by granting it (the console's "Resolve by
grant"; review.py says how an order gets there).

Nothing is granted without WeChat Pay's word for it, for the price of what is granted:

- WeChat Pay is asked about the order now (``Gate.from_query``, as the console's
  re-query and a client's poll ask), and only ``SUCCESS`` counts: ``NOTPAY``, ``CLOSED``,
  ``REFUND`` (money already on its way back) or an unknown order grant nothing;
- the amount WeChat Pay says was paid must be at least the order's (``Gate.short_of``;
  the price rule that sent the order to review is the operator's to judge), and both
  amounts are said either way;
- the order is paid the one way every payment is (``PaymentApplier.apply_confirmed``
  with an :class:`~paylane_order.payments.OperatorGrant`): inbox, conditional
  ``needs_review → paid``, a ``payment_logs`` row naming the operator, and ``order.paid``
  staged in the outbox in the same transaction, so the entitlement service grants once.

An order announced paid before its review (``paid_event_at`` set: granted, then revoked)
is refused: the entitlement ledger grants an order once, so a second ``order.paid``
would grant nothing. A refund settles it instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from paylane_common.contract import events
from paylane_common.contract.events import PaymentSucceeded, make_event
from paylane_common.contract.money import yuan_text
from paylane_common.delivery.consumer import Retry

from .errors import Conflict, OrderError
from .gate import Gate, Unconfirmed
from .payments import OperatorGrant, PaymentApplier

log = structlog.get_logger(__name__)

#: The only trade_state a grant is made on.
GRANT_STATES = ("SUCCESS",)


class WechatPayDidNotAnswer(OrderError):
    status, code = 502, "wechatpay_unavailable"


@dataclass(frozen=True)
class ReviewGrant:
    gate: Gate
    payments: PaymentApplier

    async def grant(self, order: dict[str, object], operator: str, reason: str) -> str:
        """Grant ``order`` (a ``payment_orders`` row) on WeChat Pay's word; what was done,
        in words. Raises :class:`Conflict` (refused, saying why, with both amounts when
        they are the reason) or :class:`WechatPayDidNotAnswer`."""
        no = str(order["out_trade_no"])
        if order["status"] != "needs_review":
            raise Conflict(f"only a needs_review order is granted; this one is {order['status']}")
        if order["paid_event_at"] is not None:
            raise Conflict(
                "the order was announced paid before its review (its grant was revoked), and"
                " an order is granted once: refund it instead"
            )
        claim = PaymentSucceeded(out_trade_no=no, transaction_id="-", source="query")
        try:
            paid = await self.gate.from_query(
                claim, any_transaction=True, states=GRANT_STATES, source="console"
            )
        except Unconfirmed as exc:
            raise Conflict(f"{exc}: nothing is granted") from None
        except Retry as exc:
            raise WechatPayDidNotAnswer(f"{exc.reason}: nothing is granted") from None
        amounts = (
            f"WeChat Pay says {yuan_text(paid.amount_total or 0)} yuan was paid"
            f" (transaction {paid.transaction_id}) for the order's"
            f" {yuan_text(int(str(order['amount_total'])))} yuan"
        )
        envelope = make_event(
            events.PAYMENT_SUCCEEDED, paid, f"operator-grant-{paid.transaction_id}"
        )
        outcome = await self.payments.apply_confirmed(
            envelope, paid, OperatorGrant(operator, reason)
        )
        if outcome != "paid":  # the inbox had it: granted already
            raise Conflict(f"{amounts}; this payment was applied already")
        log.warning("review_granted", operator=operator, transaction_id=paid.transaction_id)
        return f"{amounts}: the order is paid and its grant announced"
