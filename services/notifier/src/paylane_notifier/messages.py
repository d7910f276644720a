"""What a client receives: one JSON object per push (docs/notifier.md, "Messages").

Every message has the same keys, ``null`` where its source does not carry a field::

    {"type": "order.paid" | "order.refunded" | "order.failed" | "entitlement.granted"
             | "entitlement.revoked" | "fulfilment.succeeded" | "fulfilment.failed"
             | "order.state",
     "out_trade_no", "status", "payment_status", "regenerate_count", "amount_refund",
     "generation_id", "reason", "event_id", "occurred_at"}

``status`` is the order's status as the client should see it: ``"paid"`` for
``order.paid`` / ``entitlement.granted`` and for a partial refund (``amount_refund`` then
says how much came back), ``"refunded"`` for a full refund / ``entitlement.revoked``,
``"failed"`` for ``order.failed`` (an order that ended unpaid; ``reason``: ``closed``,
``expired`` or ``failed``), and the row's own status for ``order.state``: one of
:data:`ORDER_STATUSES`, the shared ``payment_orders.status`` (``failed``: timed out or
cancelled; ``needs_review``: paylane's, a payment that did not match its order).
``fulfilment.succeeded`` / ``fulfilment.failed`` (a business order's effect, as the
backend reported it) say ``"paid"``: the order's status is unchanged by it (a refund of a
failed one comes as ``order.refunded``).
``generation_id`` names the generation a paid order unlocks (``order.paid`` and
``order.state``), when the order has one.
An ``entitlement.granted`` carries the ``order.paid`` it answers (``paid``): from it the
client gets both pushes, ``order.paid`` (with that event's id and time) then
``entitlement.granted``, so the notifier needs one delivery per payment (it is not bound
to ``order.paid``; an ``order.paid`` that reaches it all the same is still pushed).
``occurred_at`` is ISO 8601 UTC; :attr:`ClientMessage.id` is the same instant in integer
milliseconds since the epoch (the SSE ``id``, see :mod:`paylane_notifier.snapshot`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from paylane_common.contract import events
from paylane_common.contract.events import (
    Entitlement,
    Envelope,
    FulfilmentSettled,
    OrderFailed,
    OrderPaid,
    OrderRefunded,
    PaidOrder,
)

ORDER_STATE = "order.state"
#: What ``status`` of an ``order.state`` may be: the values of ``payment_orders.status``.
ORDER_STATUSES = ("pending", "paid", "failed", "refunded", "needs_review")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(moment: datetime) -> int:
    """Integer milliseconds since the epoch (floor); a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


@dataclass(frozen=True)
class ClientMessage:
    type: str
    out_trade_no: str | None
    status: str | None
    payment_status: str | None
    regenerate_count: int | None
    event_id: str | None
    occurred_at: datetime
    amount_refund: int | None = None
    generation_id: str | None = None
    #: ``order.failed``: why the order ended unpaid (``closed``, ``expired``, ``failed``).
    reason: str | None = None

    @property
    def id(self) -> str:
        """``occurred_at`` in integer ms since the epoch: the SSE id / Last-Event-ID."""
        return str(epoch_ms(self.occurred_at))

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "out_trade_no": self.out_trade_no,
            "status": self.status,
            "payment_status": self.payment_status,
            "regenerate_count": self.regenerate_count,
            "amount_refund": self.amount_refund,
            "generation_id": self.generation_id,
            "reason": self.reason,
            "event_id": self.event_id,
            "occurred_at": self.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }

    def to_json(self) -> str:
        # orjson: compact UTF-8, as json.dumps(ensure_ascii=False, separators=(",", ":"))
        # wrote it, at a fraction of the cost (two of these a payment, on every push).
        return orjson.dumps(self.as_dict()).decode()


#: A business order's package_type: its payment grants nothing, so its ``order.paid`` is
#: pushed as it comes (a package's comes with ``entitlement.granted``).
BUSINESS_PACKAGE = "free"


def from_event(envelope: Envelope, data: Any) -> tuple[str, tuple[ClientMessage, ...]] | None:
    """The user an event concerns and the messages to push, in order, or None for other
    events."""
    routed = _message(envelope, data)
    if routed is None:
        return None
    user_id, message = routed
    if isinstance(data, Entitlement) and data.paid is not None:
        return user_id, (_order_paid(data, data.paid), message)
    return user_id, (message,)


def _order_paid(data: Entitlement, paid: PaidOrder) -> ClientMessage:
    """The ``order.paid`` push of a grant's order, as its own event would give it."""
    return ClientMessage(
        type=events.ORDER_PAID,
        out_trade_no=data.out_trade_no,
        status="paid",
        payment_status=None,
        regenerate_count=None,
        generation_id=paid.generation_id,
        event_id=paid.event_id,
        occurred_at=paid.occurred_at,
    )


def _entitlement_status(event_type: str, data: Entitlement) -> str:
    """The order's status an entitlement event implies: a revocation is a refund's unless
    the order went to review (what it granted is taken back until an operator decides)."""
    if event_type == events.ENTITLEMENT_GRANTED:
        return "paid"
    return "needs_review" if data.revoked_for == "review" else "refunded"


def _message(envelope: Envelope, data: Any) -> tuple[str, ClientMessage] | None:
    common: dict[str, Any] = {"event_id": envelope.event_id, "occurred_at": envelope.occurred_at}
    if envelope.type == events.ORDER_PAID and isinstance(data, OrderPaid):
        if data.package_type != BUSINESS_PACKAGE:
            return None  # pushed with its grant (entitlement.granted carries it)
        return data.user_id, ClientMessage(
            type=envelope.type,
            out_trade_no=data.out_trade_no,
            status="paid",
            payment_status=None,
            regenerate_count=None,
            generation_id=data.generation_id,
            **common,
        )
    if envelope.type == events.ORDER_REFUNDED and isinstance(data, OrderRefunded):
        return data.user_id, ClientMessage(
            type=envelope.type,
            out_trade_no=data.out_trade_no,
            status="refunded" if data.full else "paid",
            payment_status=None,
            regenerate_count=None,
            amount_refund=data.amount_refund,
            **common,
        )
    if envelope.type == events.ORDER_FAILED and isinstance(data, OrderFailed):
        return data.user_id, ClientMessage(
            type=envelope.type,
            out_trade_no=data.out_trade_no,
            status="failed",
            payment_status=None,
            regenerate_count=None,
            reason=data.reason,
            **common,
        )
    if envelope.type in events.FULFILMENT_EVENTS and isinstance(data, FulfilmentSettled):
        return data.user_id, ClientMessage(
            type=envelope.type,
            out_trade_no=data.out_trade_no,
            status="paid",
            payment_status=None,
            regenerate_count=None,
            **common,
        )
    if envelope.type in (events.ENTITLEMENT_GRANTED, events.ENTITLEMENT_REVOKED) and isinstance(
        data, Entitlement
    ):
        return data.user_id, ClientMessage(
            type=envelope.type,
            out_trade_no=data.out_trade_no,
            status=_entitlement_status(envelope.type, data),
            payment_status=data.payment_status,
            regenerate_count=data.regenerate_count,
            **common,
        )
    return None
