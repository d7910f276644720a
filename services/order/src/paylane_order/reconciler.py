"""The reconciler (DESIGN §4): settles what no notification settled.

- orders ``pending`` longer than ``after_s``: WeChat Pay says SUCCESS → publish
  ``payment.succeeded`` with ``source: "reconcile"`` (the consumer applies it as any
  other, so a late notification changes nothing); NOTPAY past ``expires_at`` → closed at
  WeChat Pay and locally; CLOSED / REVOKED / PAYERROR, or never placed and expired → closed.
- refunds still ``pending``: their final status is published as ``refund.*``.
- internal notifies without amount are confirmed by the same query (``confirm_payment``).

One pass at a time across replicas (MySQL ``GET_LOCK``); every query is idempotent.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aiomysql
import structlog
from prometheus_client import Counter as PromCounter

from paylane_common import events
from paylane_common.background import BackgroundLoop
from paylane_common.consumer import Reject, Retry
from paylane_common.db import transaction
from paylane_common.events import PaymentSucceeded, RefundEvent, make_event
from paylane_common.exceptions import PublishError
from paylane_common.publisher import Publisher
from paylane_common.wechatpay import WechatPayApiError, WechatPayClient, WechatPayError

log = structlog.get_logger(__name__)

FINDINGS = PromCounter(
    "paylane_reconciler_findings_total",
    "What the reconciler found and did, by kind",
    ["kind"],
)
PAID_STATES = ("SUCCESS", "REFUND")
_REFUND_EVENTS = {
    "SUCCESS": events.REFUND_SUCCEEDED,
    "CLOSED": events.REFUND_CLOSED,
    "ABNORMAL": events.REFUND_ABNORMAL,
}


def payment_from_transaction(tx: dict[str, Any], source: str) -> PaymentSucceeded:
    amount = tx.get("amount") or {}
    return PaymentSucceeded(
        out_trade_no=tx["out_trade_no"],
        transaction_id=tx["transaction_id"],
        amount_total=amount.get("total"),
        payer_total=amount.get("payer_total"),
        currency=amount.get("currency") or "CNY",
        openid=(tx.get("payer") or {}).get("openid"),
        trade_type=tx.get("trade_type"),
        success_time=tx.get("success_time"),
        mchid=tx.get("mchid"),
        appid=tx.get("appid"),
        source=source,  # type: ignore[arg-type]
    )


async def confirm_payment(client: WechatPayClient, data: PaymentSucceeded) -> PaymentSucceeded:
    """An internal notify without amount, confirmed (and completed) by WeChat Pay."""
    try:
        tx = await client.query_by_out_trade_no(data.out_trade_no)
    except WechatPayApiError as exc:
        if exc.retryable:
            raise Retry(f"WeChat Pay query failed: {exc.code}", max_attempts=8, delay_s=5) from None
        raise Reject(f"WeChat Pay does not confirm the payment: {exc.code}") from None
    except WechatPayError as exc:
        raise Retry(f"WeChat Pay query failed: {exc}", max_attempts=8, delay_s=5) from None
    state = tx.get("trade_state")
    if state not in PAID_STATES or tx.get("transaction_id") != data.transaction_id:
        raise Reject(
            f"WeChat Pay does not confirm the payment: trade_state {state},"
            f" transaction {tx.get('transaction_id')}"
        )
    return payment_from_transaction(tx, data.source)


class Reconciler(BackgroundLoop):
    LOCK = "paylane.reconciler"
    task_name = "reconciler"

    def __init__(
        self,
        pool: aiomysql.Pool,
        client: WechatPayClient,
        publisher: Publisher,
        *,
        after_s: float = 60.0,
        interval_s: float = 30.0,
        batch_size: int = 100,
    ) -> None:
        self._pool = pool
        self._client = client
        self._publisher = publisher
        self._after_s = after_s
        self._interval_s = interval_s
        self._batch_size = batch_size

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:
                log.warning("reconcile_pass_failed", error=repr(exc))
            await asyncio.sleep(self._interval_s)

    async def run_once(self) -> Counter[str]:
        """One pass; returns what was found (empty when another replica holds the lock)."""
        findings: Counter[str] = Counter()
        async with self._pool.acquire() as conn:
            async with conn.cursor() as cur:
                await cur.execute("SELECT GET_LOCK(%s, 0)", (self.LOCK,))
                (locked,) = await cur.fetchone()
            if not locked:
                return findings
            try:
                for order in await self._pending_orders():
                    findings[await self._settle_order(order)] += 1
                for refund in await self._pending_refunds():
                    findings[await self._settle_refund(refund)] += 1
            finally:
                async with conn.cursor() as cur:
                    await cur.execute("SELECT RELEASE_LOCK(%s)", (self.LOCK,))
        for kind, n in findings.items():
            FINDINGS.labels(kind).inc(n)
        if findings:
            log.info("reconcile_pass", **findings)
        return findings

    async def _pending_orders(self) -> list[dict[str, Any]]:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT out_trade_no, expires_at FROM payment_orders WHERE status = 'pending'"
                " AND created_at < NOW(6) - INTERVAL %s MICROSECOND ORDER BY created_at LIMIT %s",
                (int(self._after_s * 1e6), self._batch_size),
            )
            return list(await cur.fetchall())

    async def _pending_refunds(self) -> list[dict[str, Any]]:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT out_refund_no FROM refunds WHERE status = 'pending'"
                " AND created_at < NOW(6) - INTERVAL %s MICROSECOND ORDER BY created_at LIMIT %s",
                (int(self._after_s * 1e6), self._batch_size),
            )
            return list(await cur.fetchall())

    async def _settle_order(self, order: dict[str, Any]) -> str:
        out_trade_no = order["out_trade_no"]
        expired = order["expires_at"] is not None and order["expires_at"] <= _now()
        try:
            tx = await self._client.query_by_out_trade_no(out_trade_no)
        except WechatPayApiError as exc:
            if exc.code == "ORDER_NOT_EXIST" and expired:
                await self._close_locally(out_trade_no)
                return "closed_never_placed"
            log.warning("reconcile_query_failed", out_trade_no=out_trade_no, code=exc.code)
            return "query_failed"
        except WechatPayError as exc:
            log.warning("reconcile_query_failed", out_trade_no=out_trade_no, error=str(exc))
            return "query_failed"
        state = tx.get("trade_state")
        if state in PAID_STATES:
            data = payment_from_transaction(tx, "reconcile")
            envelope = make_event(
                events.PAYMENT_SUCCEEDED, data, f"reconcile-{data.transaction_id}"
            )
            try:
                await self._publisher.publish(envelope)
            except PublishError as exc:
                log.warning("reconcile_publish_failed", error=str(exc))
                return "publish_failed"
            log.warning("payment_recovered_by_reconciler", out_trade_no=out_trade_no)
            return "paid_recovered"
        if state in ("CLOSED", "REVOKED", "PAYERROR"):
            await self._close_locally(out_trade_no)
            return "closed_at_wechatpay"
        if expired:
            try:
                await self._client.close(out_trade_no)
            except WechatPayError as exc:
                log.warning("reconcile_close_failed", out_trade_no=out_trade_no, error=str(exc))
                return "close_failed"
            await self._close_locally(out_trade_no)
            return "closed_expired"
        return "still_pending"

    async def _settle_refund(self, refund: dict[str, Any]) -> str:
        out_refund_no = refund["out_refund_no"]
        try:
            answer = await self._client.query_refund(out_refund_no)
        except WechatPayError as exc:
            log.warning(
                "reconcile_refund_query_failed", out_refund_no=out_refund_no, error=str(exc)
            )
            return "refund_query_failed"
        status = answer.get("status")
        if status not in _REFUND_EVENTS:
            return "refund_still_processing"
        amount = answer.get("amount") or {}
        data = RefundEvent(
            out_trade_no=answer["out_trade_no"],
            out_refund_no=out_refund_no,
            refund_id=answer.get("refund_id"),
            amount_refund=amount.get("refund", 0),
            amount_total=amount.get("total", 0),
            status=status,
            success_time=answer.get("success_time"),
        )
        envelope = make_event(
            _REFUND_EVENTS[status], data, f"reconcile-refund-{out_refund_no}-{status}"
        )
        try:
            await self._publisher.publish(envelope)
        except PublishError as exc:
            log.warning("reconcile_publish_failed", error=str(exc))
            return "publish_failed"
        return f"refund_{status.lower()}"

    async def _close_locally(self, out_trade_no: str) -> None:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE payment_orders SET status = 'closed', closed_at = NOW(6)"
                " WHERE out_trade_no = %s AND status = 'pending'",
                (out_trade_no,),
            )


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
