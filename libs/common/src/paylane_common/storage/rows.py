"""The rows of the shared tables as the services read them, typed.

aiomysql's ``DictCursor`` answers ``dict[str, Any]``: a row read that way is typed
nowhere, and a yuan ``Decimal`` or a fen ``int`` of it can go anywhere unchecked. So a
row is cast once, where it is fetched (:func:`fetch_one`, :func:`fetch_all`), to the
``TypedDict`` of what its ``SELECT`` gives, and typed everywhere after.

- :class:`UserRow`, :class:`OrderRow`, :class:`RefundRow`: every column of ``users``,
  ``payment_orders`` and ``refunds`` (the shared tables as migration 0001 makes them,
  and paylane's additions of ``schema.py``), what a ``SELECT *`` gives.
- A ``SELECT`` of some columns is typed by a ``TypedDict`` of exactly those, declared
  beside its query in the module that makes it. Each column has the one type it has
  here, whatever the query (``tests/integration/test_rows.py`` holds them to it): a
  function that needs a few columns takes a ``TypedDict`` of those few, and every row
  that has them is one (``TypedDict`` is structural).

A value's type is the column's: ``DECIMAL`` yuan (``amount``, ``refund_amount``,
``total_amount``) is :class:`~decimal.Decimal`, the generated fen columns
(``amount_total``, ``amount_refund``) are ``int``, ``TIMESTAMP`` and ``DATETIME`` are
naive UTC ``datetime``, an ``ENUM`` is its ``Literal``. A column that may be NULL is
``| None`` here, even where a default fills it: the other writers of the shared tables
may write NULL into anything the schema allows. The generated fen columns are never
NULL: they are computed from a ``NOT NULL`` yuan column.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypedDict, TypeVar, cast

from paylane_common.contract.catalog import PaymentStatus

#: ``payment_orders.status``: the existing system's words plus paylane's ``needs_review``.
OrderStatus = Literal["pending", "paid", "failed", "refunded", "needs_review"]
#: ``refunds.status``.
RefundStatus = Literal["pending", "success", "closed", "abnormal"]
#: ``payment_orders.package_type`` (the catalog sells ``basic`` and ``premium``; a
#: business order is ``free``: it changes no plan).
PackageType = Literal["free", "basic", "premium"]
#: ``payment_orders.fulfilment_status`` (paylane's, migration 0010): a business order's
#: effect, pending until the backend reports it done or not.
FulfilmentStatus = Literal["pending", "success", "failed"]

__all__ = [
    "FulfilmentStatus",
    "OrderRow",
    "OrderStatus",
    "PackageType",
    "PaymentStatus",
    "RefundRow",
    "RefundStatus",
    "UserRow",
    "fetch_all",
    "fetch_one",
]


class UserRow(TypedDict):
    """``users``: one per openid; paylane writes ``payment_status`` and
    ``regenerate_count`` (both may be NULL in a row another writer made)."""

    id: str
    openid: str | None
    unionid: str | None
    nickname: str | None
    avatar_url: str | None
    phone: str | None
    payment_status: PaymentStatus | None
    regenerate_count: int | None
    last_login_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


class OrderRow(TypedDict):
    """``payment_orders``: ``amount`` in yuan as every writer writes it; ``amount_total``
    (fen) generated from it; ``amount_refunded`` (fen) paylane's."""

    id: str
    user_id: str
    #: ``''`` when the order unlocks no generation.
    generation_id: str
    out_trade_no: str
    transaction_id: str | None
    amount: Decimal
    package_type: PackageType
    payment_method: str | None
    trade_type: str | None
    status: OrderStatus | None
    paid_at: datetime | None
    refund_reason: str | None
    remark: str | None
    _openid: str | None
    created_at: datetime | None
    updated_at: datetime | None
    # paylane's additions (schema.COLUMNS)
    amount_total: int
    currency: str
    mchid: str | None
    appid: str | None
    prepay_id: str | None
    code_url: str | None
    h5_url: str | None
    idempotency_key: str | None
    amount_refunded: int
    review_reason: str | None
    closed_at: datetime | None
    refunded_at: datetime | None
    expires_at: datetime | None
    reconciled_at: datetime | None
    queried_at: datetime | None
    paid_event_at: datetime | None
    refund_event_at: datetime | None
    # business orders and their fulfilment (schema.BUSINESS_ORDER_COLUMNS)
    description: str | None
    external_id: str | None
    attach: str | None
    fulfilment_status: FulfilmentStatus | None
    fulfilment_detail: str | None
    fulfilled_at: datetime | None
    #: Cloud Hosting's signed JSAPI pay parameters (JSON), kept as answered.
    pay_params: str | None


class RefundRow(TypedDict):
    """``refunds``: ``refund_amount`` and ``total_amount`` in yuan; ``amount_refund`` and
    ``amount_total`` (fen) generated from them."""

    id: str
    out_refund_no: str
    refund_id: str | None
    out_trade_no: str
    transaction_id: str | None
    refund_amount: Decimal
    total_amount: Decimal
    status: RefundStatus | None
    reason: str | None
    refunded_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None
    # paylane's additions (schema.COLUMNS, schema.REFUND_REMEDY_COLUMNS)
    amount_refund: int
    amount_total: int
    reconciled_at: datetime | None
    abnormal_at: datetime | None
    remedy: str | None
    remedy_at: datetime | None
    remedy_result: str | None


R = TypeVar("R")


async def fetch_one(cur: Any, shape: type[R]) -> R | None:
    """The next row of ``cur`` (a ``DictCursor`` that ran a ``SELECT`` giving ``shape``'s
    columns), typed as ``shape``; None when there is none."""
    return cast("R | None", await cur.fetchone())


async def fetch_all(cur: Any, shape: type[R]) -> list[R]:
    """The remaining rows of ``cur``, typed as ``shape`` (see :func:`fetch_one`)."""
    return cast("list[R]", list(await cur.fetchall()))
