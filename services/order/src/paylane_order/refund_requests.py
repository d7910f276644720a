"""Refund requests: the row in the shared ``refunds`` table first (yuan, as that table has
it; the fen columns are generated), then WeChat Pay. What is refundable is checked with the
order's row locked, so concurrent requests cannot exceed what was paid; a caller-given
``out_refund_no`` (or Idempotency-Key) makes a retry the same refund."""

from __future__ import annotations

from typing import TypedDict

import aiomysql
import structlog

from paylane_common.contract.ids import new_row_id
from paylane_common.contract.money import yuan
from paylane_common.storage.db import is_duplicate_key, transaction
from paylane_common.storage.rows import OrderStatus, RefundStatus, fetch_one
from paylane_common.wechatpay import WechatPayApiError, WechatPayClient

from . import audit
from .config import MerchantConfig
from .errors import Conflict, InvalidRequest, NotFound, UpstreamRejected, UpstreamUnavailable
from .ids import new_out_refund_no

log = structlog.get_logger(__name__)


class RefundRequest(TypedDict):
    """What a refund request answers (``replies.RefundRequested``)."""

    out_refund_no: str
    amount: int
    status: RefundStatus | None


class _PaidOrder(TypedDict):
    """The order a refund is requested of, locked."""

    status: OrderStatus | None
    amount_total: int
    transaction_id: str | None


class _Requested(TypedDict):
    """A refund requested before under the same ``out_refund_no``."""

    out_trade_no: str
    amount_refund: int
    amount_total: int
    reason: str | None
    status: RefundStatus | None
    refund_id: str | None


class RefundRequests:
    def __init__(
        self, pool: aiomysql.Pool, client: WechatPayClient, merchant: MerchantConfig
    ) -> None:
        self._pool = pool
        self._client = client
        self._merchant = merchant

    async def request(
        self,
        out_trade_no: str,
        amount: int | None,
        reason: str,
        out_refund_no: str | None = None,
        *,
        review_ok: bool = False,
    ) -> RefundRequest:
        """A refund request at WeChat Pay. With ``out_refund_no`` (caller-given, or derived
        from an Idempotency-Key) a retry is the same refund: its row is answered, and sent
        to WeChat Pay again while WeChat Pay has not acknowledged it (identical body).
        ``review_ok``: a ``needs_review`` order may be refunded too (an operator resolving
        it in the console); otherwise only a paid one."""
        existing: _Requested | None = None
        # Only a number the caller gave may name a refund already requested.
        refund_no = out_refund_no or new_out_refund_no()
        async with transaction(self._pool) as cur:
            # Lock the order so concurrent refund requests cannot exceed what was paid.
            await cur.execute(
                "SELECT status, amount_total, transaction_id FROM payment_orders"
                " WHERE out_trade_no = %s FOR UPDATE",
                (out_trade_no,),
            )
            order = await fetch_one(cur, _PaidOrder)
            if order is None:
                raise NotFound(f"order {out_trade_no} does not exist")
            if out_refund_no is not None:
                await cur.execute(
                    "SELECT out_trade_no, amount_refund, amount_total, reason, status, refund_id"
                    " FROM refunds WHERE out_refund_no = %s",
                    (refund_no,),
                )
                existing = await fetch_one(cur, _Requested)
                if existing is not None:
                    if existing["out_trade_no"] != out_trade_no or amount not in (
                        None,
                        existing["amount_refund"],
                    ):
                        raise Conflict(
                            "this refund (Idempotency-Key or out_refund_no) was requested"
                            " for another order or amount",
                            "idempotency_key_reused",
                        )
                    fen = existing["amount_refund"]
                    resend = existing["status"] == "pending" and existing["refund_id"] is None
                    if not resend:
                        return _refund_view(refund_no, fen, existing["status"])
                    total, reason = existing["amount_total"], existing["reason"] or ""
            if existing is None:
                fen, total = await self._reserve(cur, out_trade_no, order, amount, review_ok)
                try:
                    # Yuan, as the shared table has it; the fen columns are generated.
                    await cur.execute(
                        "INSERT INTO refunds (id, out_refund_no, out_trade_no, transaction_id,"
                        " refund_amount, total_amount, reason) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        (
                            new_row_id("refund"),
                            refund_no,
                            out_trade_no,
                            order["transaction_id"],
                            yuan(fen),
                            yuan(total),
                            reason[:80],
                        ),
                    )
                except Exception as exc:
                    if is_duplicate_key(exc):  # the same out_refund_no for another order
                        raise Conflict(
                            f"out_refund_no {refund_no} is already used",
                            "idempotency_key_reused",
                        ) from None
                    raise
                await _note_reason(cur, out_trade_no, reason)
        status = await self._send_refund(out_trade_no, refund_no, fen, total, reason)
        return _refund_view(refund_no, fen, status)

    async def _reserve(
        self,
        cur: aiomysql.Cursor,
        out_trade_no: str,
        order: _PaidOrder,
        amount: int | None,
        review_ok: bool = False,
    ) -> tuple[int, int]:
        """(amount, order total) of a new refund, checked against what is refundable."""
        if order["status"] != "paid" and not (review_ok and order["status"] == "needs_review"):
            raise Conflict(
                f"only a paid order can be refunded; this one is {order['status']}",
                "order_not_paid",
            )
        await cur.execute(
            "SELECT COALESCE(SUM(amount_refund), 0) AS n FROM refunds"
            " WHERE out_trade_no = %s AND status IN ('pending', 'success', 'abnormal')",
            (out_trade_no,),
        )
        committed = int((await cur.fetchone())["n"])
        total = order["amount_total"]
        refundable = total - committed
        amount = refundable if amount is None else amount
        if amount <= 0 or amount > refundable:
            raise InvalidRequest(
                f"refund of {amount} fen exceeds the {refundable} fen still refundable"
                f" (paid {total}, already refunded or pending {committed})",
                "refund_exceeds_paid",
            )
        return amount, total

    async def _send_refund(
        self, out_trade_no: str, out_refund_no: str, amount: int, total: int, reason: str
    ) -> RefundStatus:
        payload = {
            "out_trade_no": out_trade_no,
            "out_refund_no": out_refund_no,
            "reason": reason[:80],
            "notify_url": self._merchant.notify_url,
            "amount": {"refund": amount, "total": total, "currency": "CNY"},
        }
        try:
            answer = await self._client.create_refund(payload)
        except WechatPayApiError as exc:
            if exc.retryable:
                # The refund row stays pending: a retry with the same key sends it again,
                # and the reconciler queries it (and closes it if it never got there).
                raise UpstreamUnavailable(f"WeChat Pay failed: {exc.code}") from None
            refused = audit.refund_create(
                "refund_refused",
                out_trade_no,
                out_refund_no,
                amount,
                request=payload,
                response={"code": exc.code, "message": exc.message},
            )
            await self._set_refund(out_refund_no, "closed", None, refused)
            raise UpstreamRejected(
                f"WeChat Pay refused the refund: {exc.code} {exc.message}"
            ) from None
        requested = audit.refund_create(
            "refund_requested",
            out_trade_no,
            out_refund_no,
            amount,
            request=payload,
            response=answer,
        )
        await self._set_refund(out_refund_no, None, answer.get("refund_id"), requested)
        log.info("refund_requested", out_trade_no=out_trade_no, out_refund_no=out_refund_no)
        return "pending"

    async def _set_refund(
        self, out_refund_no: str, status: str | None, refund_id: str | None, entry: audit.Entry
    ) -> None:
        """WeChat Pay's answer on the refund's row, and its ``refund_create`` row."""
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE refunds SET status = COALESCE(%s, status),"
                " refund_id = COALESCE(refund_id, %s) WHERE out_refund_no = %s",
                (status, refund_id, out_refund_no),
            )
            await audit.write(cur, entry)


async def _note_reason(cur: aiomysql.Cursor, out_trade_no: str, reason: str) -> None:
    """The order's ``refund_reason``, as the existing backend keeps it: the reason of its
    latest refund request (each refund keeps its own in ``refunds.reason``)."""
    await cur.execute(
        "UPDATE payment_orders SET refund_reason = %s WHERE out_trade_no = %s",
        (reason[:80], out_trade_no),
    )


def _refund_view(out_refund_no: str, amount: int, status: RefundStatus | None) -> RefundRequest:
    return {"out_refund_no": out_refund_no, "amount": amount, "status": status}
