"""What the operators' console reads (``console.py``): the search (the order list's
filters and keyset pages, :mod:`paylane_order.order_list`, with the console's own
filters), an order's timeline from the tables paylane already writes, and the health
page's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import aiomysql
from aio_pika.abc import AbstractRobustConnection
from prometheus_client import Gauge
from pydantic import Field, StrictStr, field_validator

from paylane_common.broker.amqp import close_quietly
from paylane_common.broker.topology import QUEUES
from paylane_common.contract.china_time import CHINA
from paylane_common.contract.money import fen
from paylane_common.storage.db import transaction

from . import console_records, metrics
from .order_list import DEFAULT_LIMIT, MAX_LIMIT, OrderFilters

_Text = Annotated[StrictStr, Field(min_length=1, max_length=128)]


class ConsoleFilters(OrderFilters):
    """The order list's filters (user id, status, from, to) and the console's: an order's
    numbers, the payer's openid, the backend's external id, the amount in yuan."""

    out_trade_no: _Text | None = None
    transaction_id: _Text | None = None
    openid: _Text | None = None
    external_id: _Text | None = None
    amount: int | None = Field(default=None, description="yuan in the form, fen here")

    @field_validator("amount", mode="before")
    @classmethod
    def _yuan(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return fen(value.strip())
            except ValueError:
                raise ValueError("amount: yuan, e.g. 29.90") from None
        return value

    def conditions(self) -> tuple[list[str], list[Any]]:
        where, args = super().conditions()
        for column, value in (
            ("out_trade_no", self.out_trade_no),
            ("transaction_id", self.transaction_id),
            ("external_id", self.external_id),
            ("amount_total", self.amount),
        ):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        if self.openid is not None:
            # The payer's openid on the order, or the openid of the order's user.
            where.append("(_openid = %s OR user_id IN (SELECT id FROM users WHERE openid = %s))")
            args += [self.openid, self.openid]
        return where, args


class ConsoleQuery(ConsoleFilters):
    cursor: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


@dataclass(frozen=True)
class Event:
    """One line of an order's timeline."""

    at: datetime | None
    what: str
    #: Where it comes from: order, log, refund, grant, inbox, outbox, operator.
    origin: str
    detail: str = ""


def _words(**parts: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in parts.items() if v not in (None, ""))


async def order_row(pool: aiomysql.Pool, out_trade_no: str) -> dict[str, Any] | None:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT o.*, u.openid AS user_openid FROM payment_orders o"
            " LEFT JOIN users u ON u.id = o.user_id WHERE o.out_trade_no = %s",
            (out_trade_no,),
        )
        row: dict[str, Any] | None = await cur.fetchone()
    return row


async def refunds_of(pool: aiomysql.Pool, out_trade_no: str) -> list[dict[str, Any]]:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT out_refund_no, refund_id, amount_refund, status, reason, created_at,"
            " refunded_at FROM refunds WHERE out_trade_no = %s ORDER BY created_at, id",
            (out_trade_no,),
        )
        return list(await cur.fetchall())


async def refundable_fen(pool: aiomysql.Pool, order: dict[str, Any]) -> int:
    """What a refund may still take back: paid less what is refunded or pending (the
    refund request's own rule, checked again there with the order locked)."""
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT COALESCE(SUM(amount_refund), 0) AS n FROM refunds"
            " WHERE out_trade_no = %s AND status IN ('pending', 'success', 'abnormal')",
            (order["out_trade_no"],),
        )
        committed = int((await cur.fetchone())["n"])
    return max(0, int(order["amount_total"] or 0) - committed)


async def timeline(pool: aiomysql.Pool, order: dict[str, Any]) -> list[Event]:
    """Everything paylane recorded about ``order``, oldest first: the order's own times,
    its ``payment_logs`` rows (notifications verified or not, state changes, the
    reconciler's queries, refunds and their callbacks, bill differences), its refunds, its
    grant or revocation, the outbox rows naming it and the inbox rows of their events, its
    shipping upload, the webhook deliveries and attempts of its events, the operators'
    actions on it, and the records kept for the console (console_records.py: rejected
    notifications naming it, WeChat Pay queries, pushes to its clients)."""
    no = order["out_trade_no"]
    found: list[Event] = []
    for column, what in (
        ("created_at", "order placed"),
        ("paid_at", "paid"),
        ("closed_at", "closed"),
        ("refunded_at", "refunded in full"),
    ):
        if order.get(column) is not None:
            found.append(Event(order[column], what, "order", _words(status=order["status"])))
    event_ids: set[str] = set()
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT type, kind, source, event_type, event_id, transaction_id, out_refund_no,"
            " amount_total, detail, created_at FROM payment_logs WHERE out_trade_no = %s",
            (no,),
        )
        for row in await cur.fetchall():
            if row["event_id"]:
                event_ids.add(row["event_id"])
            found.append(
                Event(
                    row["created_at"],
                    row["kind"] or row["type"],
                    "log",
                    _words(
                        type=row["type"],
                        source=row["source"],
                        event_type=row["event_type"],
                        event_id=row["event_id"],
                        transaction_id=row["transaction_id"],
                        out_refund_no=row["out_refund_no"],
                        detail=row["detail"],
                    ),
                )
            )
        await cur.execute(
            "SELECT out_refund_no, amount_refund, status, reason, created_at, refunded_at"
            " FROM refunds WHERE out_trade_no = %s",
            (no,),
        )
        for row in await cur.fetchall():
            found.append(
                Event(
                    row["created_at"],
                    "refund requested",
                    "refund",
                    _words(
                        out_refund_no=row["out_refund_no"],
                        fen=row["amount_refund"],
                        status=row["status"],
                        reason=row["reason"],
                    ),
                )
            )
            if row["refunded_at"] is not None:
                found.append(
                    Event(row["refunded_at"], "refund succeeded", "refund", row["out_refund_no"])
                )
        await cur.execute(
            "SELECT user_id, package_type, regenerate_granted, status_before, status_after,"
            " granted_at, revoked_at FROM entitlement_grants WHERE out_trade_no = %s",
            (no,),
        )
        for row in await cur.fetchall():
            plan = f"{row['status_before']} → {row['status_after']}"
            found.append(
                Event(
                    row["granted_at"],
                    "granted",
                    "grant",
                    _words(plan=plan, regenerations=row["regenerate_granted"]),
                )
            )
            if row["revoked_at"] is not None:
                found.append(Event(row["revoked_at"], "grant revoked", "grant"))
        # The outbox holds what paylane published about the order (retention prunes it).
        await cur.execute(
            "SELECT producer, event_id, routing_key, created_at, published_at FROM outbox"
            " WHERE payload LIKE %s",
            (f'%"{_like(no)}"%',),
        )
        for row in await cur.fetchall():
            event_ids.add(row["event_id"])
            found.append(
                Event(
                    row["created_at"],
                    f"{row['routing_key']} staged",
                    "outbox",
                    _words(producer=row["producer"], event_id=row["event_id"]),
                )
            )
            if row["published_at"] is not None:
                found.append(
                    Event(row["published_at"], f"{row['routing_key']} published", "outbox")
                )
        if event_ids:
            marks = ", ".join(["%s"] * len(event_ids))
            await cur.execute(
                f"SELECT consumer, event_id, processed_at FROM inbox WHERE event_id IN ({marks})",
                tuple(sorted(event_ids)),
            )
            for row in await cur.fetchall():
                found.append(
                    Event(
                        row["processed_at"],
                        f"applied by {row['consumer']}",
                        "inbox",
                        _words(event_id=row["event_id"]),
                    )
                )
        await cur.execute(
            "SELECT state, attempts, queued_at, uploaded_at, last_errcode, last_errmsg,"
            " failed_reason FROM paylane_shipping WHERE out_trade_no = %s",
            (no,),
        )
        for row in await cur.fetchall():
            found.append(Event(row["queued_at"], "shipping queued", "shipping"))
            if row["uploaded_at"] is not None:
                found.append(Event(row["uploaded_at"], "shipping uploaded", "shipping"))
            elif row["state"] != "uploaded":
                found.append(
                    Event(
                        None,
                        f"shipping {row['state']}",
                        "shipping",
                        _words(
                            attempts=row["attempts"],
                            errcode=row["last_errcode"],
                            errmsg=row["last_errmsg"],
                            reason=row["failed_reason"],
                        ),
                    )
                )
        await cur.execute(
            "SELECT operator, role, action, reason, state_before, state_after, outcome, detail,"
            " created_at FROM paylane_operator_audit WHERE out_trade_no = %s",
            (no,),
        )
        for row in await cur.fetchall():
            found.append(audit_event(row))
    deliveries = await webhook_deliveries(pool, no)
    for d in deliveries:
        found.append(
            Event(
                d["created_at"],
                f"webhook {d['event_type']} queued",
                "webhook",
                _words(delivery=d["id"], url=d["url"], status=d["status"]),
            )
        )
    if deliveries:
        async with transaction(pool) as cur:
            marks = ", ".join(["%s"] * len(deliveries))
            await cur.execute(
                "SELECT delivery_id, attempted_at, status, latency_ms, error FROM webhook_attempts"
                f" WHERE delivery_id IN ({marks})",
                tuple(d["id"] for d in deliveries),
            )
            for row in await cur.fetchall():
                answer = row["status"] if row["status"] is not None else row["error"]
                found.append(
                    Event(
                        row["attempted_at"],
                        f"webhook attempt: {answer}",
                        "webhook",
                        _words(delivery=row["delivery_id"], ms=row["latency_ms"]),
                    )
                )
    for at, what, origin, parts in await console_records.of_order(pool, no):
        found.append(Event(at, what, origin, _words(**parts)))
    never = datetime.max
    return sorted(found, key=lambda e: e.at or never)


async def webhook_deliveries(pool: aiomysql.Pool, out_trade_no: str) -> list[dict[str, Any]]:
    """The webhook deliveries of events about the order (their payload names it)."""
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT d.id, d.event_id, d.event_type, d.endpoint_id, e.url,"
            " e.status AS endpoint_status, d.status, d.attempts, d.last_status, d.last_error,"
            " d.created_at FROM webhook_deliveries d"
            " JOIN webhook_endpoints e ON e.id = d.endpoint_id"
            " WHERE d.payload LIKE %s ORDER BY d.created_at, d.id",
            (f'%"{_like(out_trade_no)}"%',),
        )
        return list(await cur.fetchall())


def audit_event(row: dict[str, Any]) -> Event:
    return Event(
        row["created_at"],
        f"{row['action']} by {row['operator']} ({row['outcome']})",
        "operator",
        _words(
            reason=row["reason"],
            before=row["state_before"],
            after=row["state_after"],
            detail=row["detail"],
        ),
    )


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def recent_audit(pool: aiomysql.Pool, limit: int = 100) -> list[dict[str, Any]]:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT operator, role, action, out_trade_no, reason, state_before, state_after,"
            " outcome, detail, created_at FROM paylane_operator_audit"
            " ORDER BY created_at DESC, id DESC LIMIT %s",
            (limit,),
        )
        return list(await cur.fetchall())


@dataclass(frozen=True)
class QueueDepth:
    name: str
    messages: int | None
    consumers: int | None


async def queue_depths(connection: AbstractRobustConnection | None) -> list[QueueDepth]:
    """Each consumer queue and its DLQ, asked of the broker now (a passive declaration,
    as the queue watch does); None where the broker did not answer."""
    names = [name for spec in QUEUES for name in (spec.name, spec.dlq)]
    depths = []
    for name in names:
        messages = consumers = None
        if connection is not None:
            try:
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(name, passive=True, robust=False)
                    messages = queue.declaration_result.message_count or 0
                    consumers = queue.declaration_result.consumer_count or 0
                finally:
                    await close_quietly(channel, "console channel")
            except Exception:  # a missing queue, the broker away: shown as unknown
                pass
        depths.append(QueueDepth(name, messages, consumers))
    return depths


def _gauge_time(gauge: Gauge) -> datetime | None:
    value = next(iter(gauge.collect())).samples[0].value
    return datetime.fromtimestamp(value, UTC).replace(tzinfo=None) if value > 0 else None


@dataclass(frozen=True)
class Health:
    queues: list[QueueDepth]
    #: (what, when: naive UTC or None, where the time comes from)
    runs: list[tuple[str, datetime | None, str]]
    differences: list[dict[str, Any]]
    needs_review: int
    #: Webhook endpoints disabled, or failing since a time, with their failed deliveries.
    failing_endpoints: list[dict[str, Any]]
    #: The latest notifications ingress rejected (most name no order).
    rejections: list[dict[str, Any]] = field(default_factory=list)


async def health(pool: aiomysql.Pool, connection: AbstractRobustConnection | None) -> Health:
    today = datetime.now(CHINA).replace(hour=0, minute=0, second=0, microsecond=0)
    since = today.astimezone(UTC).replace(tzinfo=None)
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT MAX(value) AS finished FROM paylane_meta WHERE name LIKE %s",
            ("bills_reconciled:%",),
        )
        finished = (await cur.fetchone())["finished"]
        await cur.execute("SELECT MAX(reconciled_at) AS at FROM payment_orders")
        reconciled = (await cur.fetchone())["at"]
        await cur.execute(
            "SELECT out_trade_no, out_refund_no, detail, created_at FROM payment_logs"
            " WHERE type = 'bill_difference' AND created_at >= %s ORDER BY created_at",
            (since,),
        )
        differences = list(await cur.fetchall())
        await cur.execute("SELECT COUNT(*) AS n FROM payment_orders WHERE status = 'needs_review'")
        review = int((await cur.fetchone())["n"])
        await cur.execute(
            "SELECT e.id, e.url, e.status, e.disabled_reason, e.failing_since,"
            " (SELECT COUNT(*) FROM webhook_deliveries d"
            "  WHERE d.endpoint_id = e.id AND d.status = 'failed') AS failed"
            " FROM webhook_endpoints e WHERE e.deleted_at IS NULL"
            " AND (e.status = 'disabled' OR e.failing_since IS NOT NULL) ORDER BY e.created_at"
        )
        failing = list(await cur.fetchall())
    bills_at = datetime.strptime(finished, "%Y-%m-%d %H:%M:%S.%f") if finished else None
    runs = [
        ("reconciler pass", _gauge_time(metrics.RECONCILER_LAST_SUCCESS), "this replica"),
        ("reconciler's latest look at an order", reconciled, "any replica"),
        ("effects sweep", _gauge_time(metrics.SWEEP_LAST_SUCCESS), "this replica"),
        ("daily bills", bills_at, "any replica"),
    ]
    rejections = await console_records.recent_rejections(pool)
    return Health(await queue_depths(connection), runs, differences, review, failing, rejections)


def yuan_of(amount: Decimal | int | None) -> str:
    return "" if amount is None else f"{Decimal(int(amount)).scaleb(-2):.2f}"
