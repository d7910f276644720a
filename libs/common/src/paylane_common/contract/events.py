"""Event envelope and per-type data models (docs/events.md), validated on both ends."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from paylane_common.runtime.exceptions import EventValidationError

SCHEMA_VERSION = 1

PAYMENT_SUCCEEDED = "payment.succeeded"
REFUND_SUCCEEDED = "refund.succeeded"
REFUND_CLOSED = "refund.closed"
REFUND_ABNORMAL = "refund.abnormal"
#: The ``refund.*`` event of a refund's final status.
REFUND_EVENTS = {
    "SUCCESS": REFUND_SUCCEEDED,
    "CLOSED": REFUND_CLOSED,
    "ABNORMAL": REFUND_ABNORMAL,
}
ORDER_PAID = "order.paid"
ORDER_REFUNDED = "order.refunded"
#: An order whose payment was granted and then found wanting (``needs_review``): what it
#: granted is taken back until an operator decides.
ORDER_REVOKED = "order.revoked"
#: An order that ended ``failed`` unpaid (closed, expired, or refused by WeChat Pay): the
#: paying client is told (the notifier), so it stops waiting for a payment.
ORDER_FAILED = "order.failed"
#: The backend confirmed a paid business order's effect (``POST /orders/{no}/fulfilment``):
#: delivered, or not (then it may be refunded in the same call).
FULFILMENT_SUCCEEDED = "fulfilment.succeeded"
FULFILMENT_FAILED = "fulfilment.failed"
FULFILMENT_EVENTS: tuple[str, ...] = (FULFILMENT_SUCCEEDED, FULFILMENT_FAILED)
ENTITLEMENT_GRANTED = "entitlement.granted"
ENTITLEMENT_REVOKED = "entitlement.revoked"
#: An order the cloud function placed at WeChat Pay but could not write to
#: ``payment_orders`` (``POST /api/payment/internal/order-created``); the order service
#: writes it.
ORDER_CREATED = "order.created"
#: A notification ingress refused (a bad signature, a stale timestamp, undecryptable …):
#: a record for the operators' console, not an event anything acts on. Ingress publishes
#: it in the background, capped; the order service writes ``notifications_rejected``.
NOTIFICATION_REJECTED = "notification.rejected"
#: What paylane is told from outside (ingress publishes them): the only events the stream
#: ``paylane.log`` keeps. Every other event is derived and kept in its producer's outbox.
EXTERNAL_EVENTS: tuple[str, ...] = (
    PAYMENT_SUCCEEDED,
    REFUND_SUCCEEDED,
    REFUND_CLOSED,
    REFUND_ABNORMAL,
    ORDER_CREATED,
)


# A row of the shared ``users`` table: a string id such as ``user-1706345678901-xyz789``.
UserId = Annotated[str, Field(min_length=1, max_length=36)]


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class WechatNotification(_Data):
    """A WeChat Pay notification as ingress received it: the raw body, the ``Wechatpay-*``
    headers and when it arrived (unix seconds). The order service checks the signature
    and decrypts the body itself (paylane_order.gate): the event's other fields are only
    what ingress says the notification said."""

    body: str = Field(min_length=1, max_length=64 * 1024)
    headers: dict[str, str]
    received_at: int = Field(gt=0)


#: Who said a payment happened: WeChat Pay's notification (through ingress), the cloud
#: function's internal notify, paylane's own query (reconciler, sweep), the query
#: ``GET /orders/{no}`` of a pending order made (the order service's status_query.py), or
#: WeChat Cloud Hosting's container callback (ingress's ``/notify/cloudhosting``).
PaymentSource = Literal["wechatpay", "internal", "reconcile", "query", "cloudhosting"]


class PaymentSucceeded(_Data):
    out_trade_no: str = Field(min_length=1, max_length=32)
    transaction_id: str = Field(min_length=1, max_length=64)
    #: Fen. ``None`` only for an internal notify without amount: it must be verified
    #: by querying WeChat Pay before anything is granted.
    amount_total: int | None = Field(default=None, ge=0)
    payer_total: int | None = Field(default=None, ge=0)
    currency: str = "CNY"
    openid: str | None = None
    trade_type: str | None = None
    success_time: str | None = None
    mchid: str | None = None
    appid: str | None = None
    source: PaymentSource = "wechatpay"
    #: From an internal notify: the generation the payment unlocks, for an order whose
    #: row has none yet (one written from ``order.created``).
    generation_id: str | None = Field(default=None, max_length=36)
    #: From ingress: the notification this payment was read from, as received.
    notification: WechatNotification | None = None


def payment_from_transaction(
    tx: dict[str, Any], source: PaymentSource, notification: WechatNotification | None = None
) -> PaymentSucceeded:
    """A ``payment.succeeded`` from WeChat Pay's transaction object (a decrypted
    ``TRANSACTION.SUCCESS`` resource, or the answer to a query: the same shape)."""
    amount = tx.get("amount") or {}
    payer = tx.get("payer") or {}
    if not isinstance(amount, dict) or not isinstance(payer, dict):
        raise ValueError("transaction 'amount' and 'payer' must be objects")
    return PaymentSucceeded(
        out_trade_no=tx["out_trade_no"],
        transaction_id=tx["transaction_id"],
        amount_total=amount.get("total"),
        payer_total=amount.get("payer_total"),
        currency=amount.get("currency") or "CNY",
        openid=payer.get("openid"),
        trade_type=tx.get("trade_type"),
        success_time=tx.get("success_time"),
        mchid=tx.get("mchid"),
        appid=tx.get("appid"),
        source=source,
        notification=notification,
    )


#: Who said a refund ended: WeChat Pay (a notification whose signature ingress checked),
#: paylane's own query (the reconciler), or WeChat Cloud Hosting's container callback
#: (ingress's ``/notify/cloudhosting``: unsigned, so a claim the order service confirms
#: with ``queryrefund`` before applying it).
RefundSource = Literal["wechatpay", "reconcile", "cloudhosting"]


class RefundEvent(_Data):
    out_trade_no: str = Field(min_length=1, max_length=32)
    out_refund_no: str = Field(min_length=1, max_length=64)
    refund_id: str | None = None
    amount_refund: int = Field(ge=0)
    amount_total: int = Field(ge=0)
    status: Literal["SUCCESS", "CLOSED", "ABNORMAL", "PROCESSING"]
    success_time: str | None = None
    source: RefundSource = "wechatpay"


#: How the event id ingress gives a Cloud Hosting refund result begins
#: (``cloudhosting-refund-<out_refund_no>-<status>``).
CLOUDHOSTING_REFUND_PREFIX = "cloudhosting-refund-"


def is_refund_claim(event_id: str, data: Any) -> bool:
    """A refund result nobody signed (Cloud Hosting's container callback): applied, and
    forwarded to webhooks, only as WeChat Pay answers a query about it. Known by its
    ``source``, or by its event id for an event published before ``source`` existed."""
    return isinstance(data, RefundEvent) and (
        data.source == "cloudhosting" or event_id.startswith(CLOUDHOSTING_REFUND_PREFIX)
    )


def refund_from_answer(
    answer: dict[str, Any], out_refund_no: str, source: RefundSource
) -> RefundEvent:
    """A ``refund.*`` event's data from WeChat Pay's answer to a refund query (its
    ``status``; a ``REFUND.*`` notification's resource says ``refund_status`` instead)."""
    amount = answer.get("amount") or {}
    if not isinstance(amount, dict):
        raise ValueError("refund 'amount' must be an object")
    return RefundEvent(
        out_trade_no=answer["out_trade_no"],
        out_refund_no=out_refund_no,
        refund_id=answer.get("refund_id"),
        amount_refund=amount.get("refund", 0),
        amount_total=amount.get("total", 0),
        status=answer["status"],
        success_time=answer.get("success_time"),
        source=source,
    )


class OrderCreated(_Data):
    """The body of ``POST /api/payment/internal/order-created`` (docs/cloud-function.md)."""

    out_trade_no: str = Field(min_length=1, max_length=32)
    order_id: str | None = Field(default=None, min_length=1, max_length=36)
    user_id: UserId
    openid: str | None = Field(default=None, max_length=100)
    #: Fen, as the cloud function sends it; the row stores yuan.
    amount_total: int = Field(gt=0)
    package_type: Literal["basic", "premium"]
    trade_type: str = Field(default="JSAPI", max_length=20)
    reason: str | None = Field(default=None, max_length=64)


class OrderPaid(_Data):
    out_trade_no: str
    user_id: UserId
    package_type: str
    amount_total: int
    paid_at: str
    #: The generation the payment unlocks (``payment_orders.generation_id``), if any: the
    #: application unlocks it (paylane never writes the application's own tables).
    generation_id: str | None = None


class OrderRefunded(_Data):
    out_trade_no: str
    user_id: UserId
    package_type: str
    amount_refund: int
    full: bool


class OrderRevoked(_Data):
    """A granted order moved to ``needs_review``: take back what it granted."""

    out_trade_no: str
    user_id: UserId
    package_type: str
    reason: str


#: Why an order ended ``failed`` without a payment: ``closed`` (by its owner or the
#: backend, or at WeChat Pay), ``expired`` (unpaid past its ``time_expire``), ``failed``
#: (WeChat Pay refused to place it, or the payment failed: PAYERROR).
FailedReason = Literal["closed", "expired", "failed"]


class OrderFailed(_Data):
    """An unpaid order became ``failed``: its client stops waiting."""

    out_trade_no: str
    user_id: UserId
    package_type: str
    reason: FailedReason


class FulfilmentSettled(_Data):
    """``fulfilment.succeeded`` / ``fulfilment.failed``: a business order's effect, as the
    backend reported it. What shipping to WeChat needs is here (``trade_type``,
    ``transaction_id``); the order's row has the rest."""

    out_trade_no: str
    user_id: UserId
    trade_type: str | None = None
    transaction_id: str | None = None
    amount_total: int
    description: str | None = None
    external_id: str | None = None
    status: Literal["success", "failed"]
    detail: str | None = None
    fulfilled_at: str


class PaidOrder(_Data):
    """The ``order.paid`` a grant answers, as the client was told it (event id, time,
    generation): the notifier pushes it from the grant, so a payment costs it one
    delivery, not two."""

    event_id: str
    occurred_at: datetime
    generation_id: str | None = None


#: Why an ``entitlement.revoked``: the order was refunded, or went to ``needs_review``.
RevokedFor = Literal["refund", "review"]


class Entitlement(_Data):
    user_id: UserId
    out_trade_no: str
    payment_status: Literal["free", "basic", "premium"]
    regenerate_count: int
    #: ``entitlement.granted``: the ``order.paid`` it answers (absent in events from before).
    paid: PaidOrder | None = None
    #: ``entitlement.revoked``: why (absent in events from before: a refund).
    revoked_for: RevokedFor | None = None


class NotificationRejected(_Data):
    """What ingress could read of a notification it refused, and why. Never the body,
    nor anything of the payer's: the notification's id and type (as the body said, signed
    or not), the order's and the transaction's numbers when the resource decrypted (or, on
    ``/notify/cloudhosting``, as the unsigned body said), the ``Wechatpay-Serial``."""

    #: wechatpay (``/notify/wechatpay`` and its alias) or cloudhosting.
    route: str = Field(min_length=1, max_length=16)
    #: The rejection's reason, as ``paylane_ingress_notifications_rejected_total`` counts it.
    reason: str = Field(min_length=1, max_length=32)
    #: The HTTP status ingress answered.
    status: int = Field(ge=100, le=599)
    event_id: str | None = Field(default=None, max_length=64)
    event_type: str | None = Field(default=None, max_length=64)
    out_trade_no: str | None = Field(default=None, max_length=64)
    transaction_id: str | None = Field(default=None, max_length=64)
    serial: str | None = Field(default=None, max_length=128)
    received_at: datetime


DATA_MODELS: dict[str, type[_Data]] = {
    PAYMENT_SUCCEEDED: PaymentSucceeded,
    REFUND_SUCCEEDED: RefundEvent,
    REFUND_CLOSED: RefundEvent,
    REFUND_ABNORMAL: RefundEvent,
    ORDER_CREATED: OrderCreated,
    ORDER_PAID: OrderPaid,
    ORDER_REFUNDED: OrderRefunded,
    ORDER_REVOKED: OrderRevoked,
    ORDER_FAILED: OrderFailed,
    FULFILMENT_SUCCEEDED: FulfilmentSettled,
    FULFILMENT_FAILED: FulfilmentSettled,
    ENTITLEMENT_GRANTED: Entitlement,
    ENTITLEMENT_REVOKED: Entitlement,
    NOTIFICATION_REJECTED: NotificationRejected,
}


class Envelope(BaseModel):
    """``{event_id, type, occurred_at, schema_version, data}``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: str = Field(min_length=1, max_length=128)
    type: str
    occurred_at: datetime
    schema_version: int = SCHEMA_VERSION
    data: dict[str, Any]

    def typed_data(self) -> Any:
        """The data validated against the model of ``type``."""
        model = DATA_MODELS.get(self.type)
        if model is None:
            raise EventValidationError(f"unknown event type {self.type!r}")
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            raise EventValidationError(
                f"invalid {self.type} data: {validation_summary(exc)}"
            ) from None

    @property
    def correlation_id(self) -> str | None:
        value = self.data.get("out_trade_no")
        return str(value) if value is not None else None

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def make_event(event_type: str, data: _Data, event_id: str | None = None) -> Envelope:
    """A new envelope; ``data`` must be the model registered for ``event_type``."""
    model = DATA_MODELS.get(event_type)
    if model is None or not isinstance(data, model):
        raise EventValidationError(f"{type(data).__name__} is not the data of {event_type!r}")
    return Envelope(
        event_id=event_id or uuid.uuid4().hex,
        type=event_type,
        occurred_at=datetime.now(UTC),
        data=data.model_dump(mode="json"),
    )


def parse_event(body: bytes) -> tuple[Envelope, Any]:
    """Validate an envelope and its data; raise EventValidationError with the reason."""
    try:
        envelope = Envelope.model_validate_json(body)
    except ValidationError as exc:
        raise EventValidationError(f"invalid envelope: {validation_summary(exc)}") from None
    if envelope.schema_version != SCHEMA_VERSION:
        raise EventValidationError(f"unsupported schema_version {envelope.schema_version}")
    return envelope, envelope.typed_data()


def validation_summary(exc: ValidationError) -> str:
    """Up to five ``field: problem`` pairs, for error messages and dead-letter reasons."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
    )
