"""The sandbox's WeChat Pay state, in memory: orders, payments and refunds, and their rules.

Merchant-facing operations raise :class:`ApiError` with WeChat Pay's codes; the control
operations (``pay``, ``fail``, ``expire``, ``complete_refund``) raise :class:`ControlError`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from paylane_common.contract.china_time import CHINA

from .errors import ApiError, ControlError, param_error
from .timefmt import parse_rfc3339
from .validation import TRADE_TYPES

#: Refund statuses whose amount is spoken for (a CLOSED refund gives its amount back).
REFUND_HOLDS = frozenset({"PROCESSING", "SUCCESS", "ABNORMAL"})
PAID_STATES = frozenset({"SUCCESS", "REFUND"})


def _digits(n: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(n))


@dataclass
class Order:
    out_trade_no: str
    kind: str  # jsapi | native | h5 | app (the URL)
    request: dict[str, Any]  # the place-order body, for idempotency
    prepay: dict[str, str]  # what placing answered
    created_at: float
    trade_state: str = "NOTPAY"
    time_expire: float | None = None
    transaction_id: str | None = None
    transaction_ids: list[str] = field(default_factory=list)
    paid_total: int | None = None
    paid_openid: str | None = None
    success_time: float | None = None
    #: Placed through Cloud Hosting's open interface: where its result is delivered
    #: (``env_id``, ``service``, ``path``; cloud_hosting.py).
    cloud: dict[str, Any] | None = None

    @property
    def trade_type(self) -> str:
        return TRADE_TYPES[self.kind]

    @property
    def total(self) -> int:
        return int(self.request["amount"]["total"])

    @property
    def notify_url(self) -> str:
        return str(self.request["notify_url"])

    @property
    def payer_openid(self) -> str | None:
        payer = self.request.get("payer")
        return str(payer["openid"]) if isinstance(payer, dict) and "openid" in payer else None

    def expired(self, now: float) -> bool:
        return self.time_expire is not None and self.time_expire <= now


@dataclass(frozen=True)
class AbnormalRefund:
    """Where the merchant sent an ABNORMAL refund's money instead (decrypted fields)."""

    type: str  # USER_BANK_CARD | MERCHANT_BANK_CARD
    bank_type: str | None = None
    bank_account: str | None = None
    real_name: str | None = None


@dataclass
class Refund:
    out_refund_no: str
    refund_id: str
    out_trade_no: str
    transaction_id: str
    request: dict[str, Any]
    notify_url: str | None  # the request's own; None: the merchant-level refund callback
    refund: int
    total: int
    created_at: float
    status: str = "PROCESSING"
    success_time: float | None = None
    abnormal_refund: AbnormalRefund | None = None
    #: (when, status) of every change since the PROCESSING it was created in: a bill made
    #: before a change shows the status the refund had then (bills.py).
    changes: list[tuple[float, str]] = field(default_factory=list)
    #: Requested through Cloud Hosting's open interface: where its result is delivered.
    cloud: dict[str, Any] | None = None

    def move(self, status: str, now: float) -> None:
        self.status = status
        self.changes.append((now, status))

    def status_at(self, moment: float) -> str:
        """The status the refund had at ``moment`` (PROCESSING before any change)."""
        return next(
            (status for when, status in reversed(self.changes) if when <= moment), "PROCESSING"
        )


class Ledger:
    def __init__(self, mchid: str, allowed_appids: frozenset[str]) -> None:
        self.mchid = mchid
        self.allowed_appids = allowed_appids
        self.orders: dict[str, Order] = {}
        self.refunds: dict[str, Refund] = {}
        self._by_transaction: dict[str, Order] = {}

    def reset(self) -> None:
        self.orders.clear()
        self.refunds.clear()
        self._by_transaction.clear()

    # --- merchant API ---------------------------------------------------------------------

    def place(self, kind: str, body: dict[str, Any], now: float) -> Order:
        """Place (or, for an identical body, return again) an order; body already checked."""
        if body["mchid"] != self.mchid:
            raise param_error("/mchid", "与请求头商户号不一致 (not the signing merchant)")
        if self.allowed_appids and body["appid"] not in self.allowed_appids:
            raise ApiError(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        existing = self.orders.get(body["out_trade_no"])
        if existing is not None:
            if existing.kind != kind or existing.request != body:
                raise ApiError(403, "OUT_TRADE_NO_USED", "商户订单号重复")
            if existing.trade_state == "CLOSED":
                raise ApiError(400, "ORDER_CLOSED", "订单已关闭")
            if existing.trade_state in PAID_STATES:
                raise ApiError(403, "TRADE_ERROR", "订单已支付 (order already paid)")
            return existing
        time_expire = body.get("time_expire")
        order = Order(
            out_trade_no=body["out_trade_no"],
            kind=kind,
            request=body,
            prepay=_prepay(kind, now),
            created_at=now,
            time_expire=parse_rfc3339(time_expire) if time_expire else None,
        )
        self.orders[order.out_trade_no] = order
        return order

    def order(self, out_trade_no: str) -> Order:
        order = self.orders.get(out_trade_no)
        if order is None:
            raise ApiError(404, "ORDER_NOT_EXIST", "订单不存在")
        return order

    def order_by_transaction(self, transaction_id: str) -> Order:
        order = self._by_transaction.get(transaction_id)
        if order is None:
            raise ApiError(404, "ORDER_NOT_EXIST", "订单不存在")
        return order

    def close(self, out_trade_no: str) -> None:
        """NOTPAY → CLOSED; closing a closed order again is a no-op (204)."""
        order = self.order(out_trade_no)
        if order.trade_state in PAID_STATES:
            raise ApiError(403, "TRADE_ERROR", "订单已支付，不能关闭 (order already paid)")
        order.trade_state = "CLOSED"

    def create_refund(self, body: dict[str, Any], now: float) -> tuple[Refund, bool]:
        """``(refund, created)``; an identical retry returns the existing refund."""
        existing = self.refunds.get(body["out_refund_no"])
        if existing is not None:
            if existing.request != body:
                raise ApiError(
                    400, "INVALID_REQUEST", "订单金额或退款金额与之前请求不一致，请核实后再试"
                )
            return existing, False
        order = self._refundable_order(body)
        assert order.transaction_id is not None and order.paid_total is not None
        amount = body["amount"]
        if amount["total"] != order.paid_total:
            raise param_error(
                "/amount/total", f"与订单金额{order.paid_total}不一致 (order total differs)"
            )
        held = sum(
            r.refund
            for r in self.refunds.values()
            if r.out_trade_no == order.out_trade_no and r.status in REFUND_HOLDS
        )
        if amount["refund"] > order.paid_total - held:
            raise ApiError(
                400,
                "INVALID_REQUEST",
                f"申请退款金额超过订单可退金额 (refundable: {order.paid_total - held} fen)",
            )
        refund = Refund(
            out_refund_no=body["out_refund_no"],
            refund_id="50" + _digits(27),
            out_trade_no=order.out_trade_no,
            transaction_id=body.get("transaction_id") or order.transaction_id,
            request=body,
            notify_url=body.get("notify_url") or None,
            refund=amount["refund"],
            total=amount["total"],
            created_at=now,
        )
        self.refunds[refund.out_refund_no] = refund
        order.trade_state = "REFUND"
        return refund, True

    def _refundable_order(self, body: dict[str, Any]) -> Order:
        transaction_id = body.get("transaction_id")
        if transaction_id:
            order = self._by_transaction.get(transaction_id)
            if order is not None and body.get("out_trade_no") not in (None, order.out_trade_no):
                raise param_error("/out_trade_no", "与transaction_id不属于同一订单")
        else:
            order = self.orders.get(body["out_trade_no"])
        if order is None or order.trade_state not in PAID_STATES:
            # WeChat Pay's refund side only knows paid orders: an unpaid one "does not exist".
            raise ApiError(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        return order

    def refund(self, out_refund_no: str) -> Refund:
        refund = self.refunds.get(out_refund_no)
        if refund is None:
            raise ApiError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        return refund

    def refund_by_id(self, refund_id: str, out_refund_no: str) -> Refund:
        """The refund a ``refund_id`` path names; its ``out_refund_no`` must be the body's."""
        refund = next((r for r in self.refunds.values() if r.refund_id == refund_id), None)
        if refund is None:
            raise ApiError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
        if refund.out_refund_no != out_refund_no:
            raise param_error(
                "/out_refund_no", "与refund_id不属于同一退款单 (not this refund's out_refund_no)"
            )
        return refund

    def apply_abnormal_refund(self, refund: Refund, remedy: AbnormalRefund, now: float) -> bool:
        """ABNORMAL → PROCESSING, to be paid out as ``remedy`` says. True when applied now;
        False for the same remedy again (idempotent); another status is INVALID_REQUEST."""
        if refund.abnormal_refund is not None and refund.status != "ABNORMAL":
            if refund.abnormal_refund == remedy:
                return False
            raise ApiError(
                400, "INVALID_REQUEST", "该退款单已发起过异常退款处理 (already applied otherwise)"
            )
        if refund.status != "ABNORMAL":
            raise ApiError(
                400,
                "INVALID_REQUEST",
                f"退款单状态为{refund.status}，仅异常退款单可处理 (the refund is not ABNORMAL)",
            )
        refund.abnormal_refund = remedy
        refund.move("PROCESSING", now)
        return True

    # --- control API ----------------------------------------------------------------------

    def control_order(self, out_trade_no: str) -> Order:
        order = self.orders.get(out_trade_no)
        if order is None:
            raise ControlError(404, "NOT_FOUND", f"no order {out_trade_no!r}")
        return order

    def pay(
        self, out_trade_no: str, amount: int | None, openid: str | None, force: bool, now: float
    ) -> Order:
        order = self.control_order(out_trade_no)
        if not force:
            if order.trade_state in PAID_STATES:
                raise ControlError(409, "ALREADY_PAID", "order already paid (force pays again)")
            if order.trade_state == "CLOSED":
                raise ControlError(409, "ORDER_CLOSED", "order closed (force: a late payment)")
            if order.trade_state == "PAYERROR":
                raise ControlError(409, "PAYMENT_FAILED", "payment failed (force: pay anyway)")
            if order.expired(now):
                raise ControlError(409, "ORDER_EXPIRED", "order expired (force: a late payment)")
        transaction_id = "4200" + _digits(24)
        order.transaction_id = transaction_id
        order.transaction_ids.append(transaction_id)
        order.trade_state = "SUCCESS"
        order.paid_total = order.total if amount is None else amount
        order.paid_openid = openid or order.payer_openid or f"o-sandbox-{secrets.token_hex(8)}"
        order.success_time = now
        self._by_transaction[transaction_id] = order
        return order

    def fail(self, out_trade_no: str) -> Order:
        """The payer's payment fails (the bank declines): NOTPAY → PAYERROR. WeChat Pay
        sends no notification for it; the merchant learns it by querying the order."""
        order = self.control_order(out_trade_no)
        if order.trade_state in PAID_STATES:
            raise ControlError(409, "ALREADY_PAID", "order already paid")
        if order.trade_state == "CLOSED":
            raise ControlError(409, "ORDER_CLOSED", "order closed")
        order.trade_state = "PAYERROR"
        return order

    def expire(self, out_trade_no: str, now: float) -> Order:
        order = self.control_order(out_trade_no)
        order.time_expire = now - 1
        return order

    def control_refund(self, out_refund_no: str) -> Refund:
        refund = self.refunds.get(out_refund_no)
        if refund is None:
            raise ControlError(404, "NOT_FOUND", f"no refund {out_refund_no!r}")
        return refund

    def complete_refund(self, out_refund_no: str, status: str, now: float) -> Refund:
        refund = self.control_refund(out_refund_no)
        if refund.status not in ("PROCESSING", "ABNORMAL") or refund.status == status:
            raise ControlError(409, "REFUND_FINISHED", f"refund is already {refund.status}")
        refund.move(status, now)
        if status == "SUCCESS":
            refund.success_time = now
        return refund


def _prepay(kind: str, now: float) -> dict[str, str]:
    prepay_id = (
        "wx" + datetime.fromtimestamp(now, CHINA).strftime("%d%H%M%S") + (secrets.token_hex(13))
    )
    if kind == "native":
        return {"code_url": f"weixin://wxpay/bizpayurl?pr={secrets.token_urlsafe(5)[:7]}"}
    if kind == "h5":
        return {
            "h5_url": "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb"
            f"?prepay_id={prepay_id}&package={_digits(10)}"
        }
    return {"prepay_id": prepay_id}
