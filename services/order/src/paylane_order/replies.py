"""What the order API answers, as models: the OpenAPI document's response schemas
(``api.ORDER_API``), and what the handlers build their answers from (``extra="forbid"``:
a key a handler adds but the model lacks fails at once).

Times are ISO 8601 UTC (``…Z``); money in fen is an integer, in yuan a string with two
decimals, except in the seed's part of :class:`Prices` (``data.packages``): yuan as JSON
numbers, held as Decimals and written as they read (``29.90``) by
``paylane_common.contract.prices.answer_text``, which ``GET /prices/current`` answers with. A
column that may be NULL (rows written by the existing system, an order not yet paid) is
nullable here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from paylane_common.contract.catalog import PaymentStatus
from paylane_common.contract.prices import PriceAnswer
from paylane_common.storage.rows import FulfilmentStatus, OrderStatus, RefundStatus


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Error(_Reply):
    """Every error of the order API."""

    error: str = Field(description="a stable code, e.g. `invalid_request`, `not_found`")
    message: str
    wechatpay_request_id: str | None = Field(
        default=None, description="WeChat Pay's `Request-ID` when its answer caused this"
    )


class Token(_Reply):
    """A session token: ``Authorization: Bearer`` on this API (not on the notifier)."""

    token: str
    token_type: Literal["Bearer"]
    expires_in: int = Field(description="seconds")
    user_id: str


class StreamTicket(_Reply):
    """A short-lived ticket for one of the notifier's streams (`GET /ws?ticket=`,
    `GET /events?ticket=`); this API refuses it."""

    ticket: str
    expires_in: int = Field(description="seconds: open the stream before then")
    user_id: str


class SessionsRevoked(_Reply):
    user_id: str
    version: int = Field(description="the user's session version now; older tokens are refused")


class JsapiPay(_Reply):
    """``wx.requestPayment`` / ``WeixinJSBridge`` parameters (JSAPI)."""

    appId: str
    timeStamp: str
    nonceStr: str
    package: str
    #: RSA when paylane signs (direct); MD5 when WeChat Cloud Hosting signed (cloudhosting).
    signType: Literal["RSA", "MD5"]
    paySign: str


class AppPay(_Reply):
    """The APP SDK's ``PayReq`` (APP)."""

    appid: str
    partnerid: str
    prepayid: str
    package: Literal["Sign=WXPay"]
    noncestr: str
    timestamp: str
    sign: str


class NativePay(_Reply):
    code_url: str | None


class H5Pay(_Reply):
    h5_url: str | None


class Unplaced(_Reply):
    """A JSAPI or APP order WeChat Pay never answered for (the placement failed)."""


#: What the client pays with, by trade type (none when the placement failed).
Pay = JsapiPay | AppPay | NativePay | H5Pay | Unplaced
PAY: TypeAdapter[Pay] = TypeAdapter(Pay)


class PlacedOrder(_Reply):
    out_trade_no: str
    user_id: str
    amount_total: int = Field(description="fen")
    status: OrderStatus
    client_token: str = Field(
        description="a session token of the order's user: `Authorization: Bearer` for"
        " `GET /orders/{no}` and `POST /stream-tickets`"
    )
    stream_ticket: str = Field(
        description="a short-lived ticket (`stream_ticket_expires_in`) for the notifier's"
        " `/ws?ticket=` or `/events?ticket=`; a later stream takes a fresh one"
        " (`POST /stream-tickets`)"
    )
    stream_ticket_expires_in: int = Field(description="seconds")
    pay: Pay


class PaidAgain(PlacedOrder):
    placed_again: bool = Field(
        description="false: the prepay answer WeChat Pay still holds, signed anew; true:"
        " the order placed again (same `out_trade_no`, same body) for a fresh one"
    )


class OrderRefund(_Reply):
    out_refund_no: str
    refund_id: str | None
    amount_refund: int | None = Field(description="fen")
    reason: str | None
    status: RefundStatus | None
    refunded_at: datetime | None
    created_at: datetime | None


class OrderShipping(_Reply):
    """The order's shipping declared to WeChat (发货信息管理, ``SHIPPING_UPLOAD``)."""

    state: Literal["pending", "uploaded", "failed"] = Field(
        description="`pending`: queued or being retried; `uploaded`: WeChat has it;"
        " `failed`: WeChat refused it (see `failed_reason`)"
    )
    attempts: int
    queued_at: datetime
    next_attempt_at: datetime | None = Field(description="while `pending`: the next try")
    uploaded_at: datetime | None
    last_errcode: int | None = Field(description="WeChat's errcode of the last answer")
    last_errmsg: str | None
    failed_reason: str | None


class OrderView(_Reply):
    out_trade_no: str
    user_id: str
    package_type: str
    trade_type: str | None
    amount: str = Field(description="yuan, two decimals", examples=["29.90"])
    amount_total: int | None = Field(description="fen")
    amount_refunded: int | None = Field(description="fen")
    generation_id: str | None
    status: OrderStatus | None
    transaction_id: str | None
    paid_at: datetime | None
    closed_at: datetime | None
    refunded_at: datetime | None
    expires_at: datetime | None
    created_at: datetime | None
    payment_status: PaymentStatus | None = Field(description="the user's plan")
    regenerate_count: int | None = Field(description="the user's regenerations left")
    refunds: list[OrderRefund]
    review_reason: str | None = Field(description="why a `needs_review` order needs it")
    remark: str | None = Field(
        description="the backend's note (`PATCH /orders/{no}`); shown to the backend only"
    )
    refund_reason: str | None = Field(description="the reason of its latest refund request")
    business: bool = Field(
        description="a business order (`amount_fen` and `description`): it changes no plan,"
        " and the backend reports its fulfilment"
    )
    description: str | None = Field(description="a business order's, as WeChat Pay shows it")
    external_id: str | None = Field(description="the backend's own id of a business order")
    attach: str | None = Field(description="a business order's `attach` at WeChat Pay")
    fulfilment_status: FulfilmentStatus | None = Field(
        description="a business order's effect: `pending` until the backend reports"
        " `success` or `failed` (`POST /orders/{no}/fulfilment`); null for a package"
    )
    fulfilment_detail: str | None = Field(description="the backend's word on its fulfilment")
    fulfilled_at: datetime | None = Field(description="when its fulfilment became final")
    shipping: OrderShipping | None = Field(
        description="its shipping declared to WeChat (JSAPI orders, `SHIPPING_UPLOAD`);"
        " null: not declared"
    )


class OrderSummary(_Reply):
    """An order in a list: its row, without refunds or the user's plan."""

    out_trade_no: str
    user_id: str
    package_type: str
    trade_type: str | None
    amount: str = Field(description="yuan, two decimals", examples=["29.90"])
    amount_total: int = Field(description="fen")
    amount_refunded: int | None = Field(description="fen")
    status: OrderStatus | None
    transaction_id: str | None
    generation_id: str | None
    remark: str | None = Field(description="the backend's note; shown to the backend only")
    created_at: datetime | None
    paid_at: datetime | None
    closed_at: datetime | None
    refunded_at: datetime | None
    expires_at: datetime | None


class OrderPage(_Reply):
    orders: list[OrderSummary] = Field(description="newest first")
    next_cursor: str | None = Field(description="the next page's `cursor`; null: the last page")


class RefundRequested(_Reply):
    out_refund_no: str
    amount: int = Field(description="fen")
    status: RefundStatus


class AbnormalRefund(_Reply):
    out_refund_no: str
    out_trade_no: str
    refund_id: str | None
    amount_refund: int | None = Field(description="fen")
    status: RefundStatus | None
    reason: str | None
    created_at: datetime | None
    abnormal_at: datetime | None
    remedy: str | None
    remedy_at: datetime | None
    remedy_result: str | None


class AbnormalRefunds(_Reply):
    refunds: list[AbnormalRefund]


class Grant(_Reply):
    payment_status: PaymentStatus
    regenerate_count: int


class Prices(PriceAnswer):
    """Its own fields, and the seed's ``success`` / ``data`` (yuan as JSON numbers)."""

    currency: Literal["CNY"]
    packages: dict[str, str] = Field(description="yuan, two decimals")
    packages_fen: dict[str, int]
    grants: dict[str, Grant]


class FulfilmentRecorded(_Reply):
    """What ``POST /orders/{no}/fulfilment`` answers."""

    changed: bool = Field(
        description="false: the order had this fulfilment already (a retry), nothing changed"
    )
    order: OrderView
    refund: RefundRequested | None = Field(
        description="the refund requested with `refund: true` (the same one on a retry)"
    )
