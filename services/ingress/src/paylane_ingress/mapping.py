"""From a decrypted WeChat Pay resource to a paylane event (docs/ingress.md step 7,
docs/events.md)."""

from __future__ import annotations

from typing import Any

from paylane_common.contract import events
from paylane_common.contract.events import (
    Envelope,
    RefundEvent,
    WechatNotification,
    make_event,
    payment_from_transaction,
)

REFUND_TYPES = {
    "REFUND.SUCCESS": events.REFUND_SUCCEEDED,
    "REFUND.CLOSED": events.REFUND_CLOSED,
    "REFUND.ABNORMAL": events.REFUND_ABNORMAL,
}


class Ignored(Exception):
    """Acknowledged and logged, not published (SECURITY_ECHO.*, unknown types, …)."""


def to_event(
    event_id: str,
    event_type: str,
    resource: dict[str, Any],
    notification: WechatNotification | None = None,
) -> Envelope:
    """Raise Ignored for what is not published, ValueError for a malformed resource.

    A payment carries ``notification`` (the body and headers as received), so that the
    order service can check WeChat Pay's signature itself before granting anything."""
    if event_type == "TRANSACTION.SUCCESS":
        if resource.get("trade_state", "SUCCESS") != "SUCCESS":
            raise Ignored(f"trade_state {resource.get('trade_state')!r}")
        _object(resource, "amount")["total"]
        _object(resource, "payer")
        data = payment_from_transaction(resource, "wechatpay", notification)
        return make_event(events.PAYMENT_SUCCEEDED, data, event_id)
    if event_type in REFUND_TYPES:
        amount = _object(resource, "amount")
        refund = RefundEvent(
            out_trade_no=resource["out_trade_no"],
            out_refund_no=resource["out_refund_no"],
            refund_id=resource.get("refund_id"),
            amount_refund=amount["refund"],
            amount_total=amount["total"],
            status=resource.get("refund_status") or event_type.split(".", 1)[1],
            success_time=resource.get("success_time"),
        )
        return make_event(REFUND_TYPES[event_type], refund, event_id)
    raise Ignored(f"event_type {event_type!r} is not published")


def _object(resource: dict[str, Any], key: str) -> dict[str, Any]:
    value = resource.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"resource field {key!r} is not an object")
    return value
