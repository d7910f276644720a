"""``refund.*`` → the refund row, the order's refunded amount, and ``order.refunded``.

``refund.succeeded`` moves ``paid → refunded`` once the successful refunds cover the
order (or records a partial refund) and emits ``order.refunded``; ``refund.closed`` and
``refund.abnormal`` are recorded, logged as alerts and shown by ``GET /orders/{no}``; an
abnormal one keeps ``abnormal_at`` and waits for its remedy (abnormal.py).

A refund takes back what the order granted, so it is applied only on WeChat Pay's word:
a notification whose signature ingress checked, or paylane's own query. A claim
(``source: "cloudhosting"``, the platform's unsigned container callback) is first asked
about (``queryrefund``, recorded as ``refund_check``) and applied as WeChat Pay answers.
One WeChat Pay does not know, or knows of another order, changes nothing: it is logged
(``payment_logs`` kind ``unconfirmed_refund``), counted
(``paylane_refunds_unconfirmed_total``) and dead-lettered with the reason. One still
processing there, or one WeChat Pay could not be asked about, is tried again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypedDict

import aiomysql
import structlog

from paylane_common.contract import events
from paylane_common.contract.events import (
    Envelope,
    RefundEvent,
    is_refund_claim,
    make_event,
    refund_from_answer,
)
from paylane_common.contract.ids import new_row_id
from paylane_common.contract.money import yuan
from paylane_common.delivery import inbox, outbox
from paylane_common.delivery.consumer import Reject, Retry
from paylane_common.storage.db import transaction
from paylane_common.storage.rows import OrderStatus, RefundStatus, fetch_one
from paylane_common.wechatpay import WechatPayApiError, WechatPayError

from . import INBOX_CONSUMER, OUTBOX_PRODUCER, audit, metrics
from .payments import add_order_refunded
from .query_log import QueryLog
from .review import OrderOwner

log = structlog.get_logger(__name__)


class _RefundedOrder(OrderOwner):
    amount_total: int
    status: OrderStatus | None
    transaction_id: str | None


class _RefundState(TypedDict):
    status: RefundStatus | None


_STATUS: dict[str, RefundStatus] = {
    "SUCCESS": "success",
    "CLOSED": "closed",
    "ABNORMAL": "abnormal",
}
#: The order states a successful refund counts against (a pending or failed order's
#: payment takes it into account once applied: payments._refunded_before).
_REFUNDABLE = ("paid", "refunded", "needs_review")
_REFUNDABLE_SQL = "(" + ", ".join(f"'{state}'" for state in _REFUNDABLE) + ")"
#: The event id of a claimed refund as WeChat Pay confirmed it, which this service stages
#: for the webhook endpoints once it has applied it: ``confirmed-<the claim's id>``.
CONFIRMED_PREFIX = "confirmed-"
#: Outcomes of a refund applied before (nothing new to tell the webhook endpoints).
_NOT_NEW = ("duplicate", "refund_abnormal_stale")


#: How many times in all a claimed refund WeChat Pay calls PROCESSING is asked about, and
#: how long apart (the consumer's retry queues), before it is dead-lettered.
PROCESSING_ATTEMPTS = 6
PROCESSING_DELAY_S = 30.0
#: … and one WeChat Pay could not be asked about (its error, the network), as the payment
#: gate asks again.
UNANSWERED_ATTEMPTS = 8
UNANSWERED_DELAY_S = 5.0


class RefundUnconfirmed(Exception):
    """WeChat Pay does not stand behind a claimed refund; the message says why."""


class RefundApplier:
    def __init__(
        self,
        pool: aiomysql.Pool,
        on_commit: Callable[[], None] | None = None,
        queries: QueryLog | None = None,
    ):
        self._pool = pool
        self._on_commit = on_commit
        #: Asks WeChat Pay about claims; without it a claim is dead-lettered unapplied.
        self._queries = queries

    async def __call__(self, envelope: Envelope, data: RefundEvent) -> str:
        if envelope.event_id.startswith(CONFIRMED_PREFIX):
            return "duplicate"  # a confirmed claim this service applied before staging it
        claimed_by: str | None = None
        if is_refund_claim(envelope.event_id, data):
            claimed_by = "cloudhosting"
            try:
                confirmed = await self._confirmed(envelope, data)
            except RefundUnconfirmed as why:
                await self._unconfirmed(envelope, data, str(why), claimed_by)
                raise Reject(str(why)) from None
            if confirmed is None:
                return "duplicate"
            data = confirmed
        if data.status == "PROCESSING":
            return "refund_processing"
        staged = False
        async with transaction(self._pool) as cur:
            if not await inbox.claim(cur, INBOX_CONSUMER, envelope.event_id):
                return "duplicate"
            outcome = await self._apply(cur, envelope, data, claimed_by)
            if claimed_by is not None and outcome not in _NOT_NEW:
                staged = True
                # The claim itself reaches no webhook endpoint (it is nobody's word); the
                # refund as WeChat Pay confirmed it does. This service takes it back as
                # a duplicate.
                event_id = f"{CONFIRMED_PREFIX}{envelope.event_id}"
                echo = make_event(events.REFUND_EVENTS[data.status], data, event_id)
                await outbox.add(cur, OUTBOX_PRODUCER, echo)
        if (outcome == "refunded" or staged) and self._on_commit is not None:
            self._on_commit()
        if outcome == "refund_abnormal":
            metrics.REFUNDS_ABNORMAL.inc()
        return outcome

    async def _confirmed(self, envelope: Envelope, claim: RefundEvent) -> RefundEvent | None:
        """The refund as WeChat Pay answers ``queryrefund`` about the claim; None for a
        redelivery of what was applied already (the inbox has it), which asks nothing."""
        async with transaction(self._pool) as cur:
            if await inbox.seen(cur, INBOX_CONSUMER, [envelope.event_id]):
                return None
        if self._queries is None:
            raise RefundUnconfirmed("a refund claim, and no WeChat Pay client to ask about it")
        no = claim.out_refund_no

        def again(why: str) -> Retry:
            return Retry(why, max_attempts=UNANSWERED_ATTEMPTS, delay_s=UNANSWERED_DELAY_S)

        try:
            answer = await self._queries.refund(no, "refund_check", claim.out_trade_no)
        except WechatPayApiError as exc:
            if exc.code == "RESOURCE_NOT_EXISTS":
                raise RefundUnconfirmed(f"WeChat Pay knows no refund {no}") from None
            raise again(f"queryrefund {no}: {exc.code}") from None
        except WechatPayError as exc:
            raise again(f"queryrefund {no}: {exc}") from None
        if answer.get("out_trade_no") != claim.out_trade_no:
            raise RefundUnconfirmed(
                f"WeChat Pay's refund {no} is of order {answer.get('out_trade_no')!r},"
                f" not {claim.out_trade_no}"
            )
        try:
            confirmed = refund_from_answer(answer, no, "wechatpay")
        except (KeyError, ValueError) as exc:
            raise again(f"queryrefund {no}: unusable answer ({type(exc).__name__})") from None
        if confirmed.status == "PROCESSING":
            raise Retry(
                f"WeChat Pay says refund {no} is still processing",
                max_attempts=PROCESSING_ATTEMPTS,
                delay_s=PROCESSING_DELAY_S,
            )
        if confirmed.status != claim.status:
            log.warning(
                "refund_claim_corrected",
                out_refund_no=no,
                claimed=claim.status,
                wechatpay=confirmed.status,
            )
        return confirmed

    async def _unconfirmed(
        self, envelope: Envelope, claim: RefundEvent, reason: str, claimed_by: str
    ) -> None:
        """A claimed refund WeChat Pay does not stand behind: logged; nothing changes."""
        async with transaction(self._pool) as cur:
            entry = audit.refund_event(
                "unconfirmed_refund",
                claim,
                event_id=envelope.event_id,
                detail=reason,
                source=claimed_by,
            )
            await audit.write(cur, entry)
        metrics.REFUNDS_UNCONFIRMED.labels(claimed_by).inc()
        log.error(
            "refund_unconfirmed",
            alert=True,
            reason=reason,
            source=claimed_by,
            out_refund_no=claim.out_refund_no,
        )

    async def _apply(
        self,
        cur: aiomysql.Cursor,
        envelope: Envelope,
        data: RefundEvent,
        claimed_by: str | None = None,
    ) -> str:
        """``claimed_by``: who claimed a refund ``data`` is WeChat Pay's answer about, for
        the audit rows' ``source``."""
        await cur.execute(
            "SELECT out_trade_no, user_id, package_type, amount_total, status, transaction_id"
            " FROM payment_orders WHERE out_trade_no = %s FOR UPDATE",
            (data.out_trade_no,),
        )
        order = await fetch_one(cur, _RefundedOrder)
        if order is None:
            raise Retry(f"unknown out_trade_no {data.out_trade_no}", max_attempts=4)
        status = _STATUS[data.status]
        refunded_at = _utc(data.success_time) if status == "success" else None
        # A refund the reconciler closed because WeChat Pay did not know it may still
        # succeed (a request on its way then): success is WeChat Pay's last word. WeChat Pay
        # itself never turns a CLOSED refund into SUCCESS.
        # abnormal_at stays once set: the record that the refund needed a remedy
        # (abnormal.py), whatever became of it. An ABNORMAL from before the remedy was
        # accepted (the reconciler's, or a notification held up) is stale: the refund is
        # PROCESSING again at WeChat Pay, and only a newer ABNORMAL says the remedy failed.
        abnormal_at = datetime.now(UTC).replace(tzinfo=None) if status == "abnormal" else None
        occurred_at = _naive_utc(envelope.occurred_at)
        await cur.execute(
            "UPDATE refunds SET status = %s, refund_id = COALESCE(%s, refund_id),"
            " refunded_at = COALESCE(%s, refunded_at),"
            " abnormal_at = COALESCE(abnormal_at, %s)"
            " WHERE out_refund_no = %s AND (status IN ('pending', 'abnormal')"
            " OR (status = 'closed' AND %s = 'success'))"
            " AND NOT (%s = 'abnormal' AND remedy_at IS NOT NULL AND remedy_at > %s)",
            (
                status,
                data.refund_id,
                refunded_at,
                abnormal_at,
                data.out_refund_no,
                status,
                status,
                occurred_at,
            ),
        )
        if cur.rowcount == 0:
            await cur.execute(
                "SELECT status FROM refunds WHERE out_refund_no = %s", (data.out_refund_no,)
            )
            existing = await fetch_one(cur, _RefundState)
            if existing is not None:
                if status == "abnormal" and existing["status"] == "pending":
                    log.info("refund_abnormal_before_its_remedy", out_refund_no=data.out_refund_no)
                    return "refund_abnormal_stale"
                return "duplicate"
            # A refund made outside paylane (e.g. the merchant console): record it, in
            # yuan as the shared table has it (the fen columns are generated).
            await cur.execute(
                "INSERT INTO refunds (id, out_refund_no, out_trade_no, transaction_id,"
                " refund_id, refund_amount, total_amount, reason, status, refunded_at,"
                " abnormal_at) VALUES (%s, %s, %s, %s, %s, %s, %s, 'external', %s, %s, %s)",
                (
                    new_row_id("refund"),
                    data.out_refund_no,
                    data.out_trade_no,
                    order["transaction_id"],
                    data.refund_id,
                    yuan(data.amount_refund),
                    yuan(data.amount_total),
                    status,
                    refunded_at,
                    abnormal_at,
                ),
            )
        if status != "success":
            entry = audit.refund_event(
                f"refund_{status}",
                data,
                event_id=envelope.event_id,
                order_status=order["status"],
                source=claimed_by,
            )
            await audit.write(cur, entry)
            log.error(
                "refund_not_successful",
                alert=True,
                refund_status=data.status,
                out_refund_no=data.out_refund_no,
                hint=(
                    "send it to a bank card: paylane refund abnormal apply"
                    if status == "abnormal"
                    else None
                ),
            )
            return f"refund_{status}"

        await cur.execute(
            "SELECT COALESCE(SUM(amount_refund), 0) AS n FROM refunds"
            " WHERE out_trade_no = %s AND status = 'success'",
            (data.out_trade_no,),
        )
        refunded = int((await cur.fetchone())["n"])
        full = refunded >= order["amount_total"]
        after = "refunded" if full and order["status"] in _REFUNDABLE else order["status"]
        entry = audit.refund_event(
            "refund_success",
            data,
            event_id=envelope.event_id,
            order_status=after,
            source=claimed_by,
        )
        await audit.write(cur, entry)
        # A still pending (or failed) order is left as it is: its payment, once applied,
        # takes the successful refunds into account (payments._refunded_before).
        await cur.execute(
            "UPDATE payment_orders SET amount_refunded = %s,"
            " status = IF(%s, 'refunded', status),"
            " refunded_at = IF(%s, NOW(6), refunded_at)"
            f" WHERE out_trade_no = %s AND status IN {_REFUNDABLE_SQL}",
            (refunded, full, full, data.out_trade_no),
        )
        if full:
            # Whatever the order's status, paylane stages its full order.refunded once: not
            # again when the sweep (sweep.py) already did for the cloud function's update.
            await cur.execute(
                "UPDATE payment_orders SET refund_event_at = NOW(6)"
                " WHERE out_trade_no = %s AND refund_event_at IS NULL",
                (data.out_trade_no,),
            )
            if cur.rowcount == 0:
                log.info("order_refund_already_announced")
                return "refunded"
        await add_order_refunded(cur, order, amount_refund=data.amount_refund, full=full)
        log.info("order_refund_recorded", full=full, refunded=refunded)
        return "refunded"


def _naive_utc(value: datetime) -> datetime:
    """As the database keeps times (its sessions are in UTC)."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value


def _utc(value: str | None) -> datetime:
    if value:
        try:
            parsed = datetime.fromisoformat(value)
            return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed
        except ValueError:
            pass
    return datetime.now(UTC).replace(tzinfo=None)
