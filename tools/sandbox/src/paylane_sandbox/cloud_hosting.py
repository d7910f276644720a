"""WeChat Cloud Hosting's open interface, as the sandbox plays it: the v2 words of an
order and a refund, and the callbacks the platform delivers to a container (camelCase v2
fields). The HTTP side, ``POST /_/pay/<action>``: cloud_hosting_api.py."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from paylane_common.contract.china_time import CHINA

from .ledger import Order, Refund
from .resources import transaction
from .timefmt import rfc3339

#: The platform's own appid and merchant, which its callbacks name beside the merchant's.
PLATFORM_APPID = "wxd2565e6a04246fd1"
PLATFORM_MCHID = "1800780001"
#: The ``X-WX-SOURCE`` of the platform's payment callbacks (unverified: see the docs).
CALLBACK_SOURCE = "wx_paycallback"
#: ledger / v3 codes → v2's ``err_code``.
V2_ERR_CODES = {
    "ORDER_NOT_EXIST": "ORDERNOTEXIST",
    "RESOURCE_NOT_EXISTS": "ORDERNOTEXIST",
    "ORDER_CLOSED": "ORDERCLOSED",
    "TRADE_ERROR": "ORDERPAID",
    "OUT_TRADE_NO_USED": "OUT_TRADE_NO_USED",
    "APPID_MCHID_NOT_MATCH": "APPID_MCHID_NOT_MATCH",
}
V2_REFUND_STATUS = {
    "SUCCESS": "SUCCESS",
    "PROCESSING": "PROCESSING",
    "CLOSED": "REFUNDCLOSE",
    "ABNORMAL": "CHANGE",
}


def compact(moment: float | None) -> str | None:
    """v2's ``yyyyMMddHHmmss``, China time."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, CHINA).strftime("%Y%m%d%H%M%S")


def order_fields(order: Order, mchid: str) -> dict[str, Any]:
    """The order in v2's words (``queryorder``'s ``respdata``; the callback's, camelCased)."""
    tx = transaction(order, mchid)
    amount = tx.get("amount") or {}
    data: dict[str, Any] = {
        "appid": PLATFORM_APPID,
        "mch_id": PLATFORM_MCHID,
        "sub_appid": order.request["appid"],
        "sub_mch_id": mchid,
        "out_trade_no": order.out_trade_no,
        "trade_state": tx["trade_state"],
        "trade_state_desc": tx.get("trade_state_desc", ""),
        "total_fee": amount.get("total", order.total),
        "fee_type": "CNY",
    }
    if order.transaction_id is not None:
        data.update(
            {
                "transaction_id": order.transaction_id,
                "trade_type": order.trade_type,
                "cash_fee": amount.get("payer_total", amount.get("total")),
                "time_end": compact(order.success_time),
                "openid": f"oPlatform{(order.paid_openid or '')[-12:]}",
                "sub_openid": order.paid_openid,
                "bank_type": "OTHERS",
                "is_subscribe": "N",
            }
        )
    if "attach" in order.request:
        data["attach"] = order.request["attach"]
    return data


def refund_fields(refund: Refund) -> dict[str, Any]:
    """A refund's result in v2's words (the callback's, camelCased)."""
    data: dict[str, Any] = {
        "out_trade_no": refund.out_trade_no,
        "transaction_id": refund.transaction_id,
        "out_refund_no": refund.out_refund_no,
        "refund_id": refund.refund_id,
        "refund_fee": refund.refund,
        "settlement_refund_fee": refund.refund,
        "total_fee": refund.total,
        "refund_status": V2_REFUND_STATUS.get(refund.status, refund.status),
    }
    if refund.success_time is not None:
        data["success_time"] = rfc3339(refund.success_time)
    return data


def camel(name: str) -> str:
    """``out_trade_no`` → ``outTradeNo``: how the platform names the callback's fields."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def payment_callback(order: Order, mchid: str) -> dict[str, Any]:
    """What the platform posts to the container for a paid order."""
    fields = order_fields(order, mchid)
    fields.pop("trade_state", None)
    fields.pop("trade_state_desc", None)
    fields.update({"return_code": "SUCCESS", "result_code": "SUCCESS"})
    fields["nonce_str"] = secrets.token_hex(8)
    return {camel(k): v for k, v in fields.items() if v is not None}


def refund_callback(refund: Refund) -> dict[str, Any]:
    return {camel(k): v for k, v in refund_fields(refund).items() if v is not None}
