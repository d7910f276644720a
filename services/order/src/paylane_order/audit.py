"""``payment_logs``, the audit trail, in the existing system's words: its one writer.

The cloud function and the Node backend write ``payment_logs`` rows of four types, and
their reports read them: ``order_create`` (an order placed at WeChat Pay),
``payment_callback`` (WeChat Pay telling a payment, ``event_type`` ``TRANSACTION.SUCCESS``),
``refund_create`` (a refund requested) and ``refund_callback`` (WeChat Pay telling a
refund's result, ``REFUND.SUCCESS`` / ``REFUND.CLOSED`` / ``REFUND.ABNORMAL``), each with
``amount_total`` (fen) and the request and response as JSON. paylane writes the same
types and columns; what exactly happened goes to its own column ``kind`` (``paid``,
``paid_elsewhere``, ``duplicate_notification`` …: docs/database.md has the table), with
``source``, ``detail``, ``event_id`` and ``transaction_id``. What the existing system never
logged has a type of paylane's, in the same style: ``order_close`` (an order that timed
out, was closed or failed), ``refund_remedy`` and ``bill_difference``.

Every row goes through :func:`write`, and every ``request_data`` / ``response_data``
through :func:`redact`: no payer data (openid, client IP, bank account, name), no secret
(keys, signatures, tokens, ciphertext) ever reaches the table.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiomysql
import orjson

from paylane_common.contract.events import PaymentSucceeded, RefundEvent
from paylane_common.contract.ids import new_row_id

# The existing system's types.
ORDER_CREATE = "order_create"
PAYMENT_CALLBACK = "payment_callback"
REFUND_CREATE = "refund_create"
REFUND_CALLBACK = "refund_callback"
# paylane's own, for what the existing system never logged.
ORDER_CLOSE = "order_close"
REFUND_REMEDY = "refund_remedy"
BILL_DIFFERENCE = "bill_difference"

TRANSACTION_SUCCESS = "TRANSACTION.SUCCESS"
#: ``event_type`` of a refund's result, by WeChat Pay's refund status.
REFUND_EVENT_TYPES = {
    "SUCCESS": "REFUND.SUCCESS",
    "CLOSED": "REFUND.CLOSED",
    "ABNORMAL": "REFUND.ABNORMAL",
}

#: What a redacted value reads as.
REDACTED = "[redacted]"
#: A key naming any of these is payer data or a secret: its value is redacted, whatever
#: it holds (an object as a whole). ``payer`` is matched whole (``payer_total`` is money).
_SENSITIVE_PARTS = (
    "openid",
    "client_ip",
    "account",
    "real_name",
    "phone",
    "secret",
    "key",
    "sign",
    "token",
    "password",
    "authorization",
    "cipher",
)
_SENSITIVE_KEYS = frozenset({"payer", "ip"})
#: A text holding one of these is a key or a certificate, wherever it is.
_SECRET_MARKERS = ("-----BEGIN",)


@functools.lru_cache(maxsize=1024)  # the keys of WeChat Pay's objects: a few dozen
def _sensitive(key: str) -> bool:
    lowered = key.lower()
    return lowered in _SENSITIVE_KEYS or any(part in lowered for part in _SENSITIVE_PARTS)


def redact(value: Any) -> Any:
    """``value`` as JSON data, with every payer datum and secret replaced by
    :data:`REDACTED`: the one rule for ``request_data`` and ``response_data``."""
    # Exact types first: what a notification and WeChat Pay's answers hold, without the
    # ABC checks below (a Mapping check is the dearest part of a payment's audit row).
    kind = type(value)
    if kind is str:
        return REDACTED if any(marker in value for marker in _SECRET_MARKERS) else value
    if kind is dict:
        return {str(k): REDACTED if _sensitive(str(k)) else redact(v) for k, v in value.items()}
    if value is None or kind is int or kind is bool or kind is float:
        return value
    if isinstance(value, Mapping):
        return {str(k): REDACTED if _sensitive(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)  # Decimal, datetime …
    return REDACTED if any(marker in text for marker in _SECRET_MARKERS) else text


def _json(value: Any) -> str | None:
    if value is None:
        return None
    redacted = redact(value)
    try:
        # Compact UTF-8 as json.dumps(ensure_ascii=False, separators=(",", ":")) writes it.
        return orjson.dumps(redacted).decode()
    except TypeError:  # orjson refuses an integer beyond 64 bits and a lone surrogate
        return json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Entry:
    """One ``payment_logs`` row: the existing columns, then paylane's."""

    type: str
    kind: str
    out_trade_no: str | None
    out_refund_no: str | None = None
    event_type: str | None = None
    #: Fen.
    amount_total: int | None = None
    request: Any = None
    response: Any = None
    event_id: str | None = None
    transaction_id: str | None = None
    #: Who told paylane: ``wechatpay``, ``internal``, ``reconcile``, ``sweep``, ``api``.
    source: str | None = None
    detail: str | None = None

    def row(self) -> tuple[Any, ...]:
        return (
            new_row_id("log"),
            self.type,
            self.kind,
            self.out_trade_no,
            self.out_refund_no,
            self.event_type,
            self.amount_total,
            _json(self.request),
            _json(self.response),
            self.event_id,
            self.transaction_id,
            self.source,
            None if self.detail is None else self.detail[:1000],
        )


_INSERT = (
    "INSERT INTO payment_logs (id, type, kind, out_trade_no, out_refund_no, event_type,"
    " amount_total, request_data, response_data, event_id, transaction_id, source, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


async def write(cur: aiomysql.Cursor, *entries: Entry) -> None:
    """The rows, in the caller's transaction."""
    if len(entries) == 1:
        await cur.execute(_INSERT, entries[0].row())
    elif entries:
        await cur.executemany(_INSERT, [entry.row() for entry in entries])


# -- one function a type -------------------------------------------------------------------


def order_create(
    kind: str,
    out_trade_no: str,
    amount_total: int | None,
    *,
    request: Any,
    response: Any,
    source: str,
    event_id: str | None = None,
    detail: str | None = None,
) -> Entry:
    """An order placed at WeChat Pay (``request``: the body sent, ``response``: its
    answer or error), or written for the cloud function (``order.created``)."""
    return Entry(
        ORDER_CREATE,
        kind,
        out_trade_no,
        amount_total=amount_total,
        request=request,
        response=response,
        event_id=event_id,
        source=source,
        detail=detail,
    )


def payment_callback(
    kind: str,
    payment: PaymentSucceeded,
    *,
    event_id: str | None,
    order_status: str | None = None,
    detail: str | None = None,
    source: str | None = None,
) -> Entry:
    """A payment WeChat Pay told (its notification, the cloud function's internal notify,
    or its answer to a query: ``source``). ``request``: the notification's envelope and the
    transaction; ``response``: the order's status after it."""
    request: dict[str, Any] = {}
    envelope = _notification(payment)
    if envelope:
        request["notification"] = envelope
    request["transaction"] = {
        "out_trade_no": payment.out_trade_no,
        "transaction_id": payment.transaction_id,
        "trade_type": payment.trade_type,
        "success_time": payment.success_time,
        "amount": {
            "total": payment.amount_total,
            "payer_total": payment.payer_total,
            "currency": payment.currency,
        },
        "mchid": payment.mchid,
        "appid": payment.appid,
    }
    return Entry(
        PAYMENT_CALLBACK,
        kind,
        payment.out_trade_no,
        event_type=str(envelope.get("event_type") or TRANSACTION_SUCCESS),
        amount_total=payment.amount_total,
        request=request,
        response=None if order_status is None else {"order_status": order_status},
        event_id=event_id,
        transaction_id=payment.transaction_id,
        source=source or payment.source,
        detail=detail,
    )


def _notification(payment: PaymentSucceeded) -> dict[str, Any]:
    """The notification's envelope (its id, time, type, summary), never its resource."""
    if payment.notification is None:
        return {}
    try:
        body = orjson.loads(payment.notification.body)
    except ValueError:
        return {}
    if not isinstance(body, dict):
        return {}
    fields = ("id", "create_time", "event_type", "resource_type", "summary")
    return {name: body[name] for name in fields if name in body}


def refund_create(
    kind: str,
    out_trade_no: str,
    out_refund_no: str,
    amount_refund: int,
    *,
    request: Any,
    response: Any,
    source: str = "api",
) -> Entry:
    """A refund requested at WeChat Pay (``request``: the body sent, ``response``: its
    answer or error)."""
    return Entry(
        REFUND_CREATE,
        kind,
        out_trade_no,
        out_refund_no,
        amount_total=amount_refund,
        request=request,
        response=response,
        source=source,
    )


def refund_callback(
    kind: str,
    out_trade_no: str,
    out_refund_no: str | None,
    amount_refund: int | None,
    *,
    status: str | None,
    request: Any,
    response: Any = None,
    event_id: str | None = None,
    source: str | None = None,
    detail: str | None = None,
) -> Entry:
    """A refund's result as WeChat Pay told it (``status``: its refund status), or as
    paylane concluded it (``status`` None: no ``event_type``)."""
    return Entry(
        REFUND_CALLBACK,
        kind,
        out_trade_no,
        out_refund_no,
        event_type=REFUND_EVENT_TYPES.get(status or ""),
        amount_total=amount_refund,
        request=request,
        response=response,
        event_id=event_id,
        source=source,
        detail=detail,
    )


def refund_event(
    kind: str,
    data: RefundEvent,
    *,
    event_id: str,
    order_status: str | None = None,
    detail: str | None = None,
    source: str | None = None,
) -> Entry:
    """:func:`refund_callback` of a ``refund.*`` event; ``source`` (who told paylane)
    defaults to the event's."""
    return refund_callback(
        kind,
        data.out_trade_no,
        data.out_refund_no,
        data.amount_refund,
        status=data.status,
        request={
            "out_trade_no": data.out_trade_no,
            "out_refund_no": data.out_refund_no,
            "refund_id": data.refund_id,
            "status": data.status,
            "success_time": data.success_time,
            "amount": {"refund": data.amount_refund, "total": data.amount_total},
        },
        response=None if order_status is None else {"order_status": order_status},
        event_id=event_id,
        # Events from before RefundEvent had a source say it by their id.
        source=source or ("reconcile" if event_id.startswith("reconcile-") else data.source),
        detail=f"{data.out_refund_no} {data.status}" + (f": {detail}" if detail else ""),
    )


def order_close(
    kind: str,
    out_trade_no: str,
    amount_total: int | None,
    *,
    source: str,
    request: Any = None,
    response: Any = None,
    detail: str | None = None,
) -> Entry:
    """An order that became ``failed``: closed, expired, or closed at WeChat Pay."""
    return Entry(
        ORDER_CLOSE,
        kind,
        out_trade_no,
        amount_total=amount_total,
        request=request,
        response=response,
        source=source,
        detail=detail,
    )


def refund_remedy(
    kind: str,
    out_trade_no: str,
    out_refund_no: str,
    amount_refund: int,
    *,
    request: Any,
    response: Any,
    detail: str,
) -> Entry:
    """An ABNORMAL refund's remedy asked of WeChat Pay (abnormal.py)."""
    return Entry(
        REFUND_REMEDY,
        kind,
        out_trade_no,
        out_refund_no,
        amount_total=amount_refund,
        request=request,
        response=response,
        detail=detail,
    )


def bill_difference(
    kind: str, out_trade_no: str, out_refund_no: str | None, amount: int | None, detail: str
) -> Entry:
    """A difference between WeChat Pay's daily bill and the database (bills.py)."""
    return Entry(
        BILL_DIFFERENCE,
        kind,
        out_trade_no,
        out_refund_no,
        amount_total=amount,
        source="reconcile",
        detail=detail,
    )
