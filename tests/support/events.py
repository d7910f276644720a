"""Events as the services publish them, for tests that publish one or hand one to a
handler: ``payment.succeeded``, ``refund.succeeded`` (``refund.abnormal``), ``order.paid``,
``order.refunded``.

A builder takes what tests usually care about and makes up the rest (a new order number,
event id and user, the catalog price, the kit's payment time); ``fields`` set any other
field of the event's data. It returns a :class:`Delivery`: ``applier(*delivery)`` as the
consumer calls its handler, ``delivery.envelope`` to publish.

A payment from WeChat Pay (``source`` "wechatpay", with an amount) carries its
notification as ingress passes it on, signed by the kit's WeChat Pay
(``tests.support.wechat.KIT``), so that the order service's payment gate accepts it;
``signed=False`` builds a claim with no evidence, as a forger would.
"""

from __future__ import annotations

import time
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from pydantic import BaseModel

from paylane_common.contract import events
from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_common.contract.events import (
    Envelope,
    FailedReason,
    FulfilmentSettled,
    OrderFailed,
    OrderPaid,
    OrderRefunded,
    PaymentSucceeded,
    RefundEvent,
    WechatNotification,
    make_event,
    payment_from_transaction,
)
from paylane_common.contract.ids import new_row_id
from paylane_common.wechatpay.testing import (
    PAYER_OPENID,
    SUCCESS_TIME,
    new_event_id,
    new_refund_id,
    transaction_resource,
)
from tests.support.cloud_function import new_out_trade_no
from tests.support.wechat import KIT

D = TypeVar("D", bound=BaseModel)

#: The transaction id of :func:`payment_succeeded` unless given: two payments of one
#: order built without one are the same payment delivered twice (as two event ids).
TRANSACTION_ID = "4200001"


class Delivery(NamedTuple, Generic[D]):
    """An event as a consumer hands it to its handler: the envelope and its typed data."""

    envelope: Envelope
    data: D


def payment_succeeded(
    out_trade_no: str | None = None,
    amount_total: int | None = None,
    transaction_id: str = TRANSACTION_ID,
    *,
    event_id: str | None = None,
    signed: bool = True,
    **fields: Any,
) -> Delivery[PaymentSucceeded]:
    """A payment of ``out_trade_no`` (a new order number unless given); no amount unless
    given, as the model has it. From WeChat Pay (the default source) with an amount, it
    carries its signed notification unless ``signed`` is false; the notification says
    the kit's merchant and app unless ``mchid`` / ``appid`` say otherwise (None: absent)."""
    out_trade_no = out_trade_no or new_out_trade_no()
    event_id = event_id or new_event_id()
    if signed and amount_total is not None and fields.get("source", "wechatpay") == "wechatpay":
        data = signed_payment(out_trade_no, amount_total, transaction_id, event_id, **fields)
    else:
        data = PaymentSucceeded(
            out_trade_no=out_trade_no,
            transaction_id=transaction_id,
            amount_total=amount_total,
            **fields,
        )
    return Delivery(make_event(events.PAYMENT_SUCCEEDED, data, event_id), data)


def signed_payment(
    out_trade_no: str,
    amount_total: int,
    transaction_id: str,
    event_id: str | None = None,
    **fields: Any,
) -> PaymentSucceeded:
    """A payment as ingress publishes it: read from a notification the kit's WeChat Pay
    signed (and carrying it). ``fields``: the payer's ``openid``, ``mchid``, ``appid``,
    ``trade_type``, ``success_time``, ``currency``, ``payer_total``, and any field of
    the event's own (``generation_id``)."""
    resource = transaction_resource(
        out_trade_no,
        amount_total,
        transaction_id,
        appid=fields.pop("appid", KIT.appid),
        mchid=fields.pop("mchid", KIT.mchid),
        openid=fields.pop("openid", PAYER_OPENID),
        trade_type=fields.pop("trade_type", "JSAPI"),
        success_time=fields.pop("success_time", SUCCESS_TIME),
    )
    for key in ("currency", "payer_total"):
        if key in fields:
            resource["amount"][key] = fields.pop(key)
    headers, body = KIT.notify(resource, event_id=event_id)
    headers.pop("Content-Type", None)
    received = WechatNotification(body=body.decode(), headers=headers, received_at=int(time.time()))
    data = payment_from_transaction(resource, "wechatpay", received)
    return data.model_copy(update=fields) if fields else data


#: The event each final refund status is published as.
REFUND_EVENT_TYPES = {
    "SUCCESS": events.REFUND_SUCCEEDED,
    "ABNORMAL": events.REFUND_ABNORMAL,
    "CLOSED": events.REFUND_CLOSED,
}


def refund_succeeded(
    out_trade_no: str,
    out_refund_no: str,
    amount_refund: int,
    amount_total: int,
    *,
    event_id: str | None = None,
    **fields: object,
) -> Delivery[RefundEvent]:
    """A refund WeChat Pay reports done (``status`` SUCCESS, or the one given, which picks
    the event type), with a new refund id unless ``refund_id`` is given."""
    values: dict[str, object] = {"refund_id": new_refund_id(), "status": "SUCCESS", **fields}
    data = RefundEvent(
        out_trade_no=out_trade_no,
        out_refund_no=out_refund_no,
        amount_refund=amount_refund,
        amount_total=amount_total,
        **values,
    )
    return Delivery(make_event(REFUND_EVENT_TYPES[data.status], data, event_id), data)


def refund_abnormal(
    out_trade_no: str, out_refund_no: str, amount_refund: int, amount_total: int, **fields: Any
) -> Delivery[RefundEvent]:
    """A refund WeChat Pay reports ABNORMAL (the payer's account cannot take it back)."""
    return refund_succeeded(
        out_trade_no, out_refund_no, amount_refund, amount_total, status="ABNORMAL", **fields
    )


def order_paid(
    user_id: str | None = None,
    package_type: str = "basic",
    out_trade_no: str | None = None,
    *,
    amount_total: int | None = None,
    paid_at: str = SUCCESS_TIME,
    event_id: str | None = None,
    **fields: object,
) -> Delivery[OrderPaid]:
    """``user_id``'s order of ``package_type`` paid (a new user id and order number unless
    given), at the package's catalog price unless ``amount_total`` is given."""
    data = OrderPaid(
        out_trade_no=out_trade_no or new_out_trade_no(),
        user_id=user_id or new_row_id("user"),
        package_type=package_type,
        amount_total=_price(package_type) if amount_total is None else amount_total,
        paid_at=paid_at,
        **fields,
    )
    return Delivery(make_event(events.ORDER_PAID, data, event_id), data)


def order_refunded(
    user_id: str,
    out_trade_no: str,
    amount_refund: int | None = None,
    *,
    package_type: str = "basic",
    full: bool = True,
    event_id: str | None = None,
) -> Delivery[OrderRefunded]:
    """``user_id``'s order refunded, by the package's catalog price unless
    ``amount_refund`` is given; ``full`` when nothing of it is left."""
    data = OrderRefunded(
        out_trade_no=out_trade_no,
        user_id=user_id,
        package_type=package_type,
        amount_refund=_price(package_type) if amount_refund is None else amount_refund,
        full=full,
    )
    return Delivery(make_event(events.ORDER_REFUNDED, data, event_id), data)


def order_failed(
    user_id: str,
    out_trade_no: str,
    reason: FailedReason = "expired",
    *,
    package_type: str = "basic",
) -> Delivery[OrderFailed]:
    """``user_id``'s order ended unpaid for ``reason``."""
    data = OrderFailed(
        out_trade_no=out_trade_no, user_id=user_id, package_type=package_type, reason=reason
    )
    return Delivery(make_event(events.ORDER_FAILED, data), data)


def fulfilment_settled(
    user_id: str,
    out_trade_no: str,
    status: Literal["success", "failed"] = "success",
    *,
    amount_total: int = 1234,
) -> Delivery[FulfilmentSettled]:
    """The backend reported ``user_id``'s business order fulfilled (or not)."""
    data = FulfilmentSettled(
        out_trade_no=out_trade_no,
        user_id=user_id,
        trade_type="JSAPI",
        amount_total=amount_total,
        status=status,
        fulfilled_at="2026-12-01T10:00:00+00:00",
    )
    kind = events.FULFILMENT_SUCCEEDED if status == "success" else events.FULFILMENT_FAILED
    return Delivery(make_event(kind, data), data)


def _price(package_type: str) -> int:
    return DEFAULT_CATALOG[package_type].price_fen
