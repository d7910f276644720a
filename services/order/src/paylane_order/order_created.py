"""``order.created`` → a ``pending`` row in ``payment_orders``, in one MySQL transaction.

The cloud function placed the order at WeChat Pay, then failed to insert its row and
called ``POST /api/payment/internal/order-created`` instead (docs/adoption.md); ingress
published this event. Here: inbox claim + the user (created under the given id when
missing) + the order row (the shared table's shape: ``amount`` in yuan, ``_openid``,
``generation_id`` ``''``) + a ``payment_logs`` row ``order_create``. A row already there
for the ``out_trade_no`` (the cloud function's insert went through after all) is left as
it is. A ``payment.succeeded`` for the order then settles it like any other.

``userId`` is authoritative: the cloud function found or created the user by openid
before placing the order. When that id does not exist and the openid already belongs to
another user, the user cannot be created as named (openid is unique) and nothing decides
for us whose order it is: the event is dead-lettered with both ids for an operator.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import aiomysql
import structlog

from paylane_common.contract.events import Envelope, OrderCreated
from paylane_common.contract.ids import new_row_id
from paylane_common.contract.money import yuan
from paylane_common.delivery import inbox
from paylane_common.delivery.consumer import Reject
from paylane_common.storage.db import is_duplicate_key, transaction
from paylane_common.storage.rows import OrderStatus, fetch_one

from . import INBOX_CONSUMER, audit

log = structlog.get_logger(__name__)


class _UserId(TypedDict):
    id: str


class _ExistingOrder(TypedDict):
    """The row already there for an ``out_trade_no``."""

    id: str
    user_id: str
    amount_total: int
    status: OrderStatus | None


#: ``payment_logs.kind`` of the ``order_create`` row written with the order.
LOG_KIND = "order_created_call"


class OrderCreatedApplier:
    """Applies one ``order.created``; returns the outcome label for metrics:
    ``created`` (the row written), ``exists`` (a row was there), ``duplicate`` (event
    seen before)."""

    def __init__(
        self,
        pool: aiomysql.Pool,
        *,
        order_ttl_s: int | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.pool = pool
        self._order_ttl_s = order_ttl_s
        self._clock = clock

    async def __call__(self, envelope: Envelope, data: OrderCreated) -> str:
        async with transaction(self.pool) as cur:
            if not await inbox.claim(cur, INBOX_CONSUMER, envelope.event_id):
                return "duplicate"
            existing = await _order(cur, data.out_trade_no)
            if existing is not None:
                _note_existing(existing, data)
                return "exists"
            await self._ensure_user(cur, data)
            order_id = data.order_id or new_row_id("order")
            if not await self._insert_order(cur, order_id, data):
                return "exists"
            entry = audit.order_create(
                LOG_KIND,
                data.out_trade_no,
                data.amount_total,
                request={
                    "orderId": order_id,
                    "outTradeNo": data.out_trade_no,
                    "userId": data.user_id,
                    "amount": data.amount_total,
                    "packageType": data.package_type,
                    "tradeType": data.trade_type,
                    "reason": data.reason,
                },
                response={"orderId": order_id, "status": "pending"},
                source="internal",
                event_id=envelope.event_id,
                detail=data.reason or "order-created call",
            )
            await audit.write(cur, entry)
        log.info(
            "order_created",
            order_id=order_id,
            user_id=data.user_id,
            amount_total=data.amount_total,
            package_type=data.package_type,
            reason=data.reason,
        )
        return "created"

    async def _ensure_user(self, cur: aiomysql.Cursor, data: OrderCreated) -> None:
        """The user ``data.user_id``, created (with the openid) when missing."""
        if await _user(cur, data.user_id) is not None:
            return
        try:
            await cur.execute(
                "INSERT INTO users (id, openid) VALUES (%s, %s)", (data.user_id, data.openid)
            )
        except Exception as exc:
            if not is_duplicate_key(exc):
                raise
        else:
            log.info("order_created_user_created", user_id=data.user_id)
            return
        # Made meanwhile under this id (as good), or the openid is another user's.
        if await _user(cur, data.user_id, lock=True) is not None:
            return
        await cur.execute("SELECT id FROM users WHERE openid = %s", (data.openid,))
        other = await fetch_one(cur, _UserId)
        owner = f"user {other['id']}" if other else "another user"
        raise Reject(
            f"user {data.user_id} does not exist and cannot be created: its openid belongs"
            f" to {owner}; order {data.out_trade_no} not written"
        )

    async def _insert_order(self, cur: aiomysql.Cursor, order_id: str, data: OrderCreated) -> bool:
        """True when the row was written; False when one for the out_trade_no appeared
        meanwhile (the cloud function's own insert, committed since we looked)."""
        expires_at = None
        if self._order_ttl_s is not None:
            moment = self._clock() + timedelta(seconds=self._order_ttl_s)
            expires_at = moment.astimezone(UTC).replace(tzinfo=None)
        try:
            await cur.execute(
                "INSERT INTO payment_orders (id, user_id, generation_id, out_trade_no, amount,"
                " package_type, trade_type, status, _openid, expires_at)"
                " VALUES (%s, %s, '', %s, %s, %s, %s, 'pending', %s, %s)",
                (
                    order_id,
                    data.user_id,
                    data.out_trade_no,
                    yuan(data.amount_total),
                    data.package_type,
                    data.trade_type,
                    data.openid,
                    expires_at,
                ),
            )
        except Exception as exc:
            if not is_duplicate_key(exc):
                raise
            existing = await _order(cur, data.out_trade_no, lock=True)
            if existing is None:
                raise Reject(
                    f"order id {order_id} already names another order;"
                    f" order {data.out_trade_no} not written"
                ) from None
            _note_existing(existing, data)
            return False
        return True


# ``lock``: a locking read sees what committed since this transaction's snapshot (the row
# a concurrent writer made, which our insert just ran into).
_SHARED = " LOCK IN SHARE MODE"


async def _user(cur: aiomysql.Cursor, user_id: str, lock: bool = False) -> _UserId | None:
    await cur.execute("SELECT id FROM users WHERE id = %s" + (_SHARED if lock else ""), (user_id,))
    return await fetch_one(cur, _UserId)


async def _order(
    cur: aiomysql.Cursor, out_trade_no: str, lock: bool = False
) -> _ExistingOrder | None:
    await cur.execute(
        "SELECT id, user_id, amount_total, status FROM payment_orders WHERE out_trade_no = %s"
        + (_SHARED if lock else ""),
        (out_trade_no,),
    )
    return await fetch_one(cur, _ExistingOrder)


def _note_existing(order: _ExistingOrder, data: OrderCreated) -> None:
    """The row is the cloud function's: kept; a difference is worth a look, not a change."""
    differs = [
        name
        for name, ours, theirs in (
            ("user_id", data.user_id, order["user_id"]),
            ("amount_total", data.amount_total, order["amount_total"]),
            ("id", data.order_id, order["id"]),
        )
        if ours is not None and ours != theirs
    ]
    if differs:
        log.warning(
            "order_created_row_differs",
            order_id=order["id"],
            differs=differs,
            status=order["status"],
        )
    else:
        log.info("order_created_row_exists", order_id=order["id"], status=order["status"])
