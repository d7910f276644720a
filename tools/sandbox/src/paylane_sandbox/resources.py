"""What WeChat Pay shows of an order or a refund: query answers and notification resources."""

from __future__ import annotations

from typing import Any

from paylane_common.wechatpay.testing import (
    TRADE_STATE_DESC,
    USER_RECEIVED_ACCOUNT,
    refund_resource,
    transaction_resource,
)

from .ledger import Order, Refund
from .timefmt import rfc3339


def transaction(order: Order, mchid: str) -> dict[str, Any]:
    """The order as ``GET /v3/pay/transactions/...`` and ``TRANSACTION.SUCCESS`` show it.

    Before payment: no transaction_id, trade_type, payer, success_time or payer_total.
    """
    request = order.request
    if order.transaction_id is not None and order.paid_total is not None:
        return transaction_resource(
            order.out_trade_no,
            order.paid_total,
            order.transaction_id,
            appid=request["appid"],
            mchid=mchid,
            openid=order.paid_openid or "",
            trade_type=order.trade_type,
            trade_state=order.trade_state,
            success_time=rfc3339(order.success_time or order.created_at),
            attach=request.get("attach"),
            promotion_detail=[],
        )
    result: dict[str, Any] = {
        "appid": request["appid"],
        "mchid": mchid,
        "out_trade_no": order.out_trade_no,
        "trade_state": order.trade_state,
        "trade_state_desc": TRADE_STATE_DESC[order.trade_state],
    }
    if "attach" in request:
        result["attach"] = request["attach"]
    result["amount"] = {"total": order.total, "currency": "CNY", "payer_currency": "CNY"}
    return result


def _refund_amount(refund: Refund) -> dict[str, Any]:
    return {
        "total": refund.total,
        "refund": refund.refund,
        "payer_total": refund.total,
        "payer_refund": refund.refund,
        "settlement_total": refund.total,
        "settlement_refund": refund.refund,
        "discount_refund": 0,
        "refund_fee": 0,
        "currency": "CNY",
        "from": [],
    }


def _received(r: Refund) -> tuple[str, str]:
    """``(channel, user_received_account)``: the original payment method, or the bank
    account an abnormal refund was sent to instead."""
    remedy = r.abnormal_refund
    if remedy is None:
        return "ORIGINAL", USER_RECEIVED_ACCOUNT
    if remedy.type == "USER_BANK_CARD":
        return "OTHER_BANKCARD", f"{remedy.bank_type}{(remedy.bank_account or '')[-4:]}"
    return "OTHER_BANKCARD", "商户银行账户"


def refund(r: Refund) -> dict[str, Any]:
    """The refund as ``POST|GET /v3/refund/domestic/refunds`` answer it."""
    channel, account = _received(r)
    result: dict[str, Any] = {
        "refund_id": r.refund_id,
        "out_refund_no": r.out_refund_no,
        "transaction_id": r.transaction_id,
        "out_trade_no": r.out_trade_no,
        "channel": channel,
        "user_received_account": account,
        "create_time": rfc3339(r.created_at),
        "status": r.status,
        "funds_account": "AVAILABLE",
        "amount": _refund_amount(r),
        "promotion_detail": [],
    }
    if r.success_time is not None:
        result["success_time"] = rfc3339(r.success_time)
    return result


def refund_notification(r: Refund, mchid: str) -> dict[str, Any]:
    """The decrypted resource of a ``REFUND.*`` notification."""
    return refund_resource(
        r.out_trade_no,
        r.refund,
        r.total,
        mchid=mchid,
        transaction_id=r.transaction_id,
        out_refund_no=r.out_refund_no,
        refund_id=r.refund_id,
        refund_status=r.status,
        success_time=None if r.success_time is None else rfc3339(r.success_time),
        user_received_account=_received(r)[1],
    )
