"""The reconciler (docs/order-api.md, "The reconciler"): settles what no notification settled.

- orders ``pending`` longer than ``after_s``: WeChat Pay says SUCCESS → publish
  ``payment.succeeded`` with ``source: "reconcile"`` (the consumer applies it as any
  other, so a late notification changes nothing); NOTPAY past its expiry → closed at
  WeChat Pay and ``failed`` locally; CLOSED / REVOKED / PAYERROR, or never placed
  (ORDER_NOT_EXIST) and expired → ``failed`` (the shared schema's word for an order that
  timed out or was cancelled; ``closed_at`` says when). A late payment of a failed order
  is still honoured (payments.py).
- an order another writer made (the cloud function) has no ``expires_at``: it expires at
  ``created_at`` + ``order_ttl_s``, as paylane's own. An old pending order WeChat Pay does
  not know (ORDER_NOT_EXIST: never placed, or long purged) is past that and so failed
  once, which takes it out of the pending set for good: no order is asked about forever.
- refunds still ``pending``: their final status is published as ``refund.*``; one WeChat
  Pay does not know (RESOURCE_NOT_EXISTS: the request never got there) and still has no
  ``refund_id`` is closed locally once ``refund_grace_s`` old, so it stops reserving the
  order's refundable amount.
- orders another writer (the cloud function) settled, whose effect paylane never applied
  because its notify was lost: announced once WeChat Pay confirms the payment and its
  price (``sweep.sweep``), or sent to ``needs_review``.

Each pass pages through the pending orders and refunds older than ``after_s`` by key
(``created_at``, ``id``), with at most ``concurrency`` WeChat Pay queries in flight. A
refund is asked about every pass. An order is asked about on a schedule instead (most
pending orders are ones nobody opened): once ``after_s`` old, again once
``second_look_s`` old, then at its expiry (when it is closed), and again every pass only
while a query fails or a payment it found is not applied yet. ``reconciled_at`` records
the last answer. A notification lost for a payment made in the first ``after_s`` is found
within ``after_s`` plus one interval (as long as a pass takes less than the interval:
``paylane_reconciler_pass_seconds``); one made later, at the next look. Unpaid orders
leave the pending set when they expire (failed), so it stays bounded by the rate of new
orders times ``ORDER_TTL_S``.

One pass at a time across replicas (a lease on ``paylane_locks``, leases.py, which only
the order service's account may take); every query is idempotent. Each completed pass,
and the effects sweep in it, sets ``paylane_reconciler_last_success_timestamp_seconds``
and ``paylane_sweep_last_success_timestamp_seconds`` (alerts: docs/operations.md).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypedDict, TypeVar

import aiomysql
import structlog

from paylane_common.broker.publisher import Publisher
from paylane_common.contract import events
from paylane_common.contract.events import (
    FailedReason,
    make_event,
    payment_from_transaction,
    refund_from_answer,
)
from paylane_common.runtime.background import BackgroundLoop
from paylane_common.runtime.exceptions import PublishError
from paylane_common.storage.db import transaction
from paylane_common.storage.leases import Lease
from paylane_common.storage.rows import fetch_all
from paylane_common.wechatpay import WechatPayApiError, WechatPayClient, WechatPayError

from . import audit, metrics, sweep
from .config import ReconcilerConfig
from .failed import fail
from .fulfilment import count_overdue
from .gate import PAID_STATES, Gate
from .query_log import QueryLog

log = structlog.get_logger(__name__)


class OrderToSettle(TypedDict):
    """An order :meth:`Reconciler.settle_order` asks WeChat Pay about."""

    out_trade_no: str
    expires_at: datetime | None
    created_at: datetime | None


class RefundToSettle(TypedDict):
    """A refund :meth:`Reconciler.settle_refund` asks WeChat Pay about."""

    out_refund_no: str
    out_trade_no: str
    amount_refund: int
    refund_id: str | None
    created_at: datetime | None


class _PendingOrder(OrderToSettle):
    id: str


class _PendingRefund(RefundToSettle):
    id: str


class _Keyed(TypedDict):
    """What a pass pages by."""

    id: str
    created_at: datetime | None


_Pending = TypeVar("_Pending", bound=_Keyed)

_COLUMNS = {
    "payment_orders": "out_trade_no, expires_at",
    "refunds": "out_refund_no, out_trade_no, amount_refund, refund_id",
}


class Reconciler(BackgroundLoop):
    LOCK = "paylane.reconciler"
    task_name = "reconciler"

    def __init__(
        self,
        pool: aiomysql.Pool,
        client: WechatPayClient,
        publisher: Publisher,
        config: ReconcilerConfig,
        gate: Gate,
    ) -> None:
        self._pool = pool
        self._client = client
        self._gate = gate
        self._publisher = publisher
        self._config = config
        self._order_ttl = timedelta(seconds=config.order_ttl_s)
        self._queries = QueryLog(pool, client)

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:
                log.warning("reconcile_pass_failed", error=repr(exc))
            await asyncio.sleep(self._config.interval_s)

    async def run_once(self, wait_for_lock_s: float = 0) -> Counter[str]:
        """One pass; returns what was found (empty when another replica holds the lock
        for longer than ``wait_for_lock_s``)."""
        findings: Counter[str] = Counter()
        # Every replica, lease or not: the gauge of each is current, whichever is scraped.
        overdue = await count_overdue(self._pool, self._config.fulfilment_deadline_s)
        metrics.FULFILMENT_OVERDUE.set(overdue)
        async with Lease(self._pool, self.LOCK).held(wait_for_lock_s) as held:
            if not held:
                return findings
            with metrics.RECONCILER_PASS_SECONDS.time():
                await self._pass("payment_orders", _PendingOrder, self._settle_order, findings)
                await self._pass("refunds", _PendingRefund, self._settle_refund, findings)
                findings.update(
                    await sweep.sweep(
                        self._pool,
                        self._gate,
                        grace_s=self._config.sweep_grace_s,
                        limit=self._config.sweep_limit,
                        concurrency=self._config.concurrency,
                    )
                )
                metrics.SWEEP_LAST_SUCCESS.set_to_current_time()
        metrics.RECONCILER_LAST_SUCCESS.set_to_current_time()
        for kind, n in findings.items():
            metrics.RECONCILER_FINDINGS.labels(kind).inc(n)
        if findings:
            log.info("reconcile_pass", **findings)
        return findings

    async def _pass(
        self,
        table: str,
        shape: type[_Pending],
        settle: Callable[[_Pending], Awaitable[str]],
        findings: Counter[str],
    ) -> None:
        """Settles every ``table`` row pending longer than ``after_s``, at most
        ``concurrency`` at a time, reading the next page while the last one is asked about."""
        slots = asyncio.Semaphore(self._config.concurrency)

        async def settle_one(row: _Pending) -> None:
            try:
                findings[await settle(row)] += 1
            finally:
                slots.release()

        async with asyncio.TaskGroup() as tasks:
            after: tuple[datetime, str] | None = None
            while True:
                rows = await self._pending(table, shape, after)
                for row in rows:
                    await slots.acquire()
                    tasks.create_task(settle_one(row))
                if len(rows) < self._config.batch_size:
                    return
                last = rows[-1]
                assert last["created_at"] is not None  # compared in the WHERE: not NULL
                after = (last["created_at"], last["id"])

    async def _pending(
        self, table: str, shape: type[_Pending], after: tuple[datetime, str] | None
    ) -> list[_Pending]:
        """One page of ``table``'s pending rows older than ``after_s``, by key after
        ``after`` (``ix_*_status`` is ``status, created_at`` and ends with the id)."""
        keyset, args = "", []
        if after is not None:
            keyset = " AND (created_at > %s OR (created_at = %s AND id > %s))"
            args = [after[0], after[0], after[1]]
        due, due_args = "", []
        if table == "payment_orders":
            # Never asked; or asked before second_look_s and now older than that; or
            # expired (expires_at, or created_at + order_ttl_s for another writer's).
            second_us = int(self._config.second_look_s * 1e6)
            due = (
                " AND (reconciled_at IS NULL"
                " OR (reconciled_at < created_at + INTERVAL %s MICROSECOND"
                " AND created_at < NOW(6) - INTERVAL %s MICROSECOND)"
                " OR COALESCE(expires_at, created_at + INTERVAL %s MICROSECOND) <= NOW(6))"
            )
            due_args = [second_us, second_us, int(self._config.order_ttl_s * 1e6)]
        async with transaction(self._pool) as cur:
            await cur.execute(
                f"SELECT id, {_COLUMNS[table]}, created_at FROM {table}"
                " WHERE status = 'pending' AND created_at < NOW(6) - INTERVAL %s MICROSECOND"
                f"{due}{keyset} ORDER BY created_at, id LIMIT %s",
                [int(self._config.after_s * 1e6), *due_args, *args, self._config.batch_size],
            )
            return await fetch_all(cur, shape)

    @property
    def client(self) -> WechatPayClient:
        return self._client

    async def settle_order(self, order: OrderToSettle) -> str:
        """One order as a pass settles it (``out_trade_no``, ``expires_at``,
        ``created_at``), for the daily bill reconciliation (bills.py)."""
        return await self._settle_order(order)

    async def settle_refund(self, refund: RefundToSettle) -> str:
        """One refund as a pass settles it (``out_refund_no``, ``out_trade_no``,
        ``amount_refund``, ``refund_id``, ``created_at``)."""
        return await self._settle_refund(refund)

    def _expires_at(self, order: OrderToSettle) -> datetime | None:
        """paylane's own orders say when they expire; another writer's (``expires_at``
        NULL) expire ``order_ttl_s`` after they were created, as paylane's would. None for
        a row with neither (no pass reads one: the bill reconciliation might): its age is
        unknown, so it is not taken for expired, and only WeChat Pay's answer settles it."""
        if order["expires_at"] is not None:
            return order["expires_at"]
        created_at = order["created_at"]
        return created_at + self._order_ttl if created_at is not None else None

    async def _settle_order(self, order: OrderToSettle) -> str:
        out_trade_no = order["out_trade_no"]
        expires_at = self._expires_at(order)
        expired = expires_at is not None and expires_at <= _now()
        try:
            tx = await self._queries.order(out_trade_no, "reconciler")
        except WechatPayApiError as exc:
            if exc.code == "ORDER_NOT_EXIST":
                if expired:
                    # Never placed (its placement failed), or so old that WeChat Pay no
                    # longer knows it: nobody can pay it any more, so it failed. Were a
                    # payment of it to turn up after all, it is still honoured.
                    await self._fail_locally(out_trade_no, "expired", "never_placed")
                    return "closed_never_placed"
                await self._asked(out_trade_no)
                return "not_placed_yet"  # its placement failed; failed once expired
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
            reason: FailedReason = "failed" if state == "PAYERROR" else "closed"
            await self._fail_locally(out_trade_no, reason, "closed_at_wechatpay", state)
            return "closed_at_wechatpay"
        if expired:
            try:
                await self._client.close(out_trade_no)
            except WechatPayError as exc:
                log.warning("reconcile_close_failed", out_trade_no=out_trade_no, error=str(exc))
                return "close_failed"
            await self._fail_locally(out_trade_no, "expired", "expired", state)
            return "closed_expired"
        await self._asked(out_trade_no)
        return "still_pending"

    async def _settle_refund(self, refund: RefundToSettle) -> str:
        out_refund_no = refund["out_refund_no"]
        try:
            answer = await self._queries.refund(out_refund_no, "reconciler", refund["out_trade_no"])
        except WechatPayApiError as exc:
            if exc.code == "RESOURCE_NOT_EXISTS" and refund["refund_id"] is None:
                return await self._close_refund_never_sent(refund)
            log.warning("reconcile_refund_query_failed", out_refund_no=out_refund_no, code=exc.code)
            return "refund_query_failed"
        except WechatPayError as exc:
            log.warning(
                "reconcile_refund_query_failed", out_refund_no=out_refund_no, error=str(exc)
            )
            return "refund_query_failed"
        status = answer.get("status")
        if status not in events.REFUND_EVENTS:
            return "refund_still_processing"
        data = refund_from_answer(answer, out_refund_no, "reconcile")
        envelope = make_event(
            events.REFUND_EVENTS[status], data, f"reconcile-refund-{out_refund_no}-{status}"
        )
        try:
            await self._publisher.publish(envelope)
        except PublishError as exc:
            log.warning("reconcile_publish_failed", error=str(exc))
            return "publish_failed"
        return f"refund_{status.lower()}"

    async def _close_refund_never_sent(self, refund: RefundToSettle) -> str:
        """A refund WeChat Pay does not know: its request never got there (the caller saw
        a 503). Once older than the grace (longer than a request and its retries take),
        closed here, so it no longer reserves the order's refundable amount. (A row without
        ``created_at``, which no pass reads, is of unknown age: never closed here.)"""
        created_at = refund["created_at"]
        if created_at is None or (_now() - created_at).total_seconds() < (
            self._config.refund_grace_s
        ):
            return "refund_not_at_wechatpay_yet"
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE refunds SET status = 'closed' WHERE out_refund_no = %s"
                " AND status = 'pending' AND refund_id IS NULL",
                (refund["out_refund_no"],),
            )
            if cur.rowcount == 0:
                return "refund_settled_meanwhile"
            entry = audit.refund_callback(
                "refund_never_sent",
                refund["out_trade_no"],
                refund["out_refund_no"],
                refund["amount_refund"],
                status=None,
                request={"out_refund_no": refund["out_refund_no"]},
                response={"code": "RESOURCE_NOT_EXISTS"},
                source="reconcile",
                detail=f"{refund['out_refund_no']} unknown to WeChat Pay: closed",
            )
            await audit.write(cur, entry)
        log.warning(
            "refund_never_reached_wechatpay_closed",
            alert=True,
            out_refund_no=refund["out_refund_no"],
            out_trade_no=refund["out_trade_no"],
        )
        return "refund_closed_never_sent"

    async def _asked(self, out_trade_no: str) -> None:
        """WeChat Pay answered that the order is not paid (yet): its next look is the
        schedule's (see the module's docstring), not the next pass."""
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE payment_orders SET reconciled_at = NOW(6)"
                " WHERE out_trade_no = %s AND status = 'pending'",
                (out_trade_no,),
            )

    async def _fail_locally(
        self,
        out_trade_no: str,
        reason: FailedReason,
        kind: str,
        trade_state: str | None = None,
    ) -> None:
        """``pending → failed`` (timed out or cancelled), unless something moved it: the
        client is told (failed.py), and it is logged as ``order_close`` of ``kind``, with
        WeChat Pay's ``trade_state``."""
        async with transaction(self._pool) as cur:
            if not await fail(cur, out_trade_no, reason):
                return
            await cur.execute(
                "SELECT amount_total FROM payment_orders WHERE out_trade_no = %s",
                (out_trade_no,),
            )
            row = await cur.fetchone()
            entry = audit.order_close(
                kind,
                out_trade_no,
                row["amount_total"],
                source="reconcile",
                request={"out_trade_no": out_trade_no},
                response={"trade_state": trade_state or "ORDER_NOT_EXIST"},
            )
            await audit.write(cur, entry)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
