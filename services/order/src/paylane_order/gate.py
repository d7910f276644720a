"""One gate for ``paid``: nothing is granted without WeChat Pay's word, for the price of
what is granted.

Every way a payment reaches the order service (WeChat's notification through ingress,
the cloud function's internal notify, the reconciler, the sweep of orders another writer
marked paid, a replay from any of them) passes the gate before an order may
become ``paid`` and ``order.paid`` may go out. What the event says is only a claim; the
gate answers with WeChat Pay's own account of the payment, from one of two pieces of
evidence:

- **the notification, verified here**: ingress puts the body and ``Wechatpay-*`` headers
  it received into the event (``PaymentSucceeded.notification``). The order service checks
  the RSA signature with the WeChat Pay key it holds, judges freshness from ingress's
  receipt time (a replayed notification is harmless: the inbox and the conditional
  UPDATE dedupe it), decrypts the resource with the APIv3 key and reads the payment from
  it, not from the event's fields;
- **a query**: WeChat Pay answers SUCCESS (or REFUND, paid then refunded) for the order,
  with the same ``transaction_id``.

Whoever can publish to the broker, or write ``payment_orders``, can make a claim; only
WeChat Pay's keys can make evidence. A claim without evidence changes no order
(:class:`Unconfirmed`).

The second half is the price (:func:`mismatch`): the amount WeChat Pay says was paid must
be the order's own, in the currency, to our merchant and app, and a price the catalog had
for the order's package when the order was made (paylane_order.catalog_prices); a
business order (business.py) has no package: its own amount is its price. A payment
that fails it is genuine money for the wrong thing: the order goes to ``needs_review``,
nothing is granted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TypedDict

import aiomysql
import structlog
from pydantic import ValidationError

from paylane_common.contract.catalog import Package
from paylane_common.contract.events import PaymentSucceeded, payment_from_transaction
from paylane_common.contract.money import yuan_text
from paylane_common.delivery.consumer import Retry
from paylane_common.storage.rows import PackageType
from paylane_common.wechatpay import (
    DecryptionError,
    NotificationHeaders,
    VerificationError,
    WechatPayApiError,
    WechatPayClient,
    WechatPayError,
    decrypt_notification,
    parse_notification,
)

from . import metrics
from .business import is_business
from .catalog_prices import PricePeriod, prices_at
from .config import MerchantConfig, OrderConfig
from .query_log import QueryLog, Source

log = structlog.get_logger(__name__)

#: What a query may answer for a payment that happened: paid, or paid and then refunded.
PAID_STATES = ("SUCCESS", "REFUND")


class PricedOrder(TypedDict):
    """What :meth:`Gate.mismatch` compares a payment with: a ``payment_orders`` row with
    these columns."""

    package_type: PackageType
    amount_total: int
    currency: str
    appid: str | None
    created_at: datetime | None
    #: A business order's (business.is_business): it is priced by its own amount.
    description: str | None


class Unconfirmed(Exception):
    """WeChat Pay does not stand behind the payment; the message says why. ``not_paid``:
    WeChat Pay says the order is not paid at all (unknown, or not SUCCESS/REFUND), as
    opposed to paid by another transaction than the one claimed."""

    def __init__(self, reason: str, *, not_paid: bool):
        super().__init__(reason)
        self.not_paid = not_paid


@dataclass(frozen=True)
class Gate:
    merchant: MerchantConfig
    #: This process's catalog: its prices count, recorded or not.
    catalog: Mapping[str, Package]
    #: Queries WeChat Pay; its verifier checks notifications' signatures.
    client: WechatPayClient
    #: Decrypts notifications; "": every payment is confirmed by a query.
    apiv3_key: str
    #: Records each query (the console's timeline); None: asked, not recorded.
    queries: QueryLog | None = None

    @classmethod
    def of(
        cls, config: OrderConfig, client: WechatPayClient, pool: aiomysql.Pool | None = None
    ) -> Gate:
        queries = QueryLog(pool, client) if pool is not None else None
        return cls(config.merchant, config.catalog, client, config.apiv3_key, queries)

    def from_notification(self, claim: PaymentSucceeded) -> PaymentSucceeded | None:
        """The payment as the notification the event carries states it, if that
        notification is WeChat Pay's and about this payment; otherwise None, and the claim
        is asked about (:meth:`from_query`, which raises :class:`Unconfirmed` when WeChat
        Pay does not stand behind it, ``Retry`` when it could not be asked). CPU only: the
        hot path of every payment WeChat notified."""
        received = claim.notification
        if received is None or not self.apiv3_key:
            return None
        body = received.body.encode()
        try:
            headers = NotificationHeaders.from_mapping(received.headers)
            self.client.verifier.verify(headers, body, at=received.received_at)
            notification = parse_notification(body)
            resource = decrypt_notification(notification, self.apiv3_key)
            if notification["event_type"] != "TRANSACTION.SUCCESS":
                raise ValueError(f"event_type {notification['event_type']!r}")
            if resource.get("trade_state", "SUCCESS") != "SUCCESS":
                raise ValueError(f"trade_state {resource.get('trade_state')!r}")
            payment = payment_from_transaction(resource, claim.source, received)
        except VerificationError as exc:
            metrics.NOT_VERIFIED.labels(exc.reason).inc()
            log.warning("notification_not_verified", reason=exc.reason, source=claim.source)
            return None
        except (DecryptionError, ValueError, KeyError, TypeError, ValidationError) as exc:
            metrics.NOT_VERIFIED.labels("unusable").inc()
            log.warning("notification_unusable", error=type(exc).__name__, source=claim.source)
            return None
        if (payment.out_trade_no, payment.transaction_id) != (
            claim.out_trade_no,
            claim.transaction_id,
        ):
            metrics.NOT_VERIFIED.labels("another_payment").inc()
            log.error(
                "notification_of_another_payment",
                alert=True,
                signed_out_trade_no=payment.out_trade_no,
                signed_transaction_id=payment.transaction_id,
            )
            return None
        # Nothing of the claim's is kept: ingress sets no generation (only the cloud
        # function's internal notify names one, and it carries no notification).
        return payment

    async def from_query(
        self,
        claim: PaymentSucceeded,
        *,
        any_transaction: bool = False,
        states: tuple[str, ...] = PAID_STATES,
        source: Source = "payment_check",
    ) -> PaymentSucceeded:
        """WeChat Pay's answer for the order: paid (SUCCESS or REFUND; ``states``) with the
        claim's transaction (any, with ``any_transaction``: a row another writer marked
        paid without one). ``source``: who asks, as the query's record says."""
        try:
            if self.queries is not None:
                tx = await self.queries.order(claim.out_trade_no, source)
            else:
                tx = await self.client.query_by_out_trade_no(claim.out_trade_no)
        except WechatPayApiError as exc:
            if exc.code == "ORDER_NOT_EXIST":
                raise Unconfirmed(
                    "WeChat Pay does not confirm the payment: ORDER_NOT_EXIST", not_paid=True
                ) from None
            # Anything else (a 5xx, SIGN_ERROR, NO_AUTH …) says nothing about the payment:
            # asked again later, and dead-lettered with the code if it never answers.
            raise Retry(f"WeChat Pay query failed: {exc.code}", max_attempts=8, delay_s=5) from None
        except WechatPayError as exc:
            raise Retry(f"WeChat Pay query failed: {exc}", max_attempts=8, delay_s=5) from None
        state, transaction_id = tx.get("trade_state"), tx.get("transaction_id")
        if state not in states or not transaction_id:
            raise Unconfirmed(
                f"WeChat Pay does not confirm the payment: trade_state {state}", not_paid=True
            )
        if not any_transaction and transaction_id != claim.transaction_id:
            raise Unconfirmed(
                f"WeChat Pay does not confirm transaction {claim.transaction_id}:"
                f" the order was paid by {transaction_id}",
                not_paid=False,
            )
        try:
            payment = payment_from_transaction(tx, claim.source)
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise Retry(f"WeChat Pay's answer is unusable: {type(exc).__name__}") from None
        # What only the claim knows (the generation it unlocks) stays with the payment.
        return payment.model_copy(update={"generation_id": claim.generation_id})

    def mismatch(
        self, order: PricedOrder, paid: PaymentSucceeded, periods: Iterable[PricePeriod]
    ) -> str | None:
        """Why WeChat Pay's ``paid`` does not pay for ``order``, or None.
        ``periods``: the recorded prices of the order's package (catalog_prices.load)."""
        if paid.amount_total != order["amount_total"]:
            return f"amount {paid.amount_total} differs from order amount {order['amount_total']}"
        return self._not_ours(order, paid) or self._not_a_price(order, paid, periods)

    def short_of(self, order: PricedOrder, paid: PaymentSucceeded) -> str | None:
        """Why an operator may not grant ``order`` on WeChat Pay's ``paid`` (the console's
        resolution of a ``needs_review`` order), or None: paid less than the order's
        amount, or not to us, in another currency. The price rule is the operator's to
        judge (that is why the order is under review); more than the amount may be
        granted, the difference refunded."""
        if paid.amount_total is None or paid.amount_total < order["amount_total"]:
            said = "no" if paid.amount_total is None else yuan_text(paid.amount_total)
            return (
                f"WeChat Pay says {said} yuan was paid, less than the order's"
                f" {yuan_text(order['amount_total'])} yuan: nothing is granted (refund instead)"
            )
        return self._not_ours(order, paid)

    def _not_ours(self, order: PricedOrder, paid: PaymentSucceeded) -> str | None:
        if paid.currency != order["currency"]:
            return f"currency {paid.currency} differs from order currency {order['currency']}"
        if paid.mchid is not None and paid.mchid != self.merchant.mchid:
            return f"mchid {paid.mchid} is not ours"
        expected_appid = order["appid"] or self.merchant.appid
        if paid.appid is not None and paid.appid != expected_appid:
            return f"appid {paid.appid} differs from the order's"
        return None

    def _not_a_price(
        self, order: PricedOrder, paid: PaymentSucceeded, periods: Iterable[PricePeriod]
    ) -> str | None:
        if is_business(order):
            return None  # its price is its own amount, compared above
        prices = self.prices(order["package_type"], order["created_at"], periods)
        if paid.amount_total not in prices:
            known = ", ".join(str(p) for p in sorted(prices)) or "none"
            return (
                f"amount {paid.amount_total} is not a price of {order['package_type']!r}"
                f" (prices then: {known})"
            )
        return None

    def prices(
        self, package_type: str, made_at: datetime | None, periods: Iterable[PricePeriod]
    ) -> set[int]:
        """The prices that count for an order of ``package_type`` made at ``made_at``."""
        found = prices_at(periods, package_type, made_at) if made_at is not None else set()
        current = self.catalog.get(package_type)
        if current is not None:
            found.add(current.price_fen)
        return found
