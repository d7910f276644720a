"""WeChat Cloud Hosting's open interface for payments (``POST /_/pay/<action>``), as a
container on the platform calls it: JSON bodies of WeChat Pay v2 fields (snake_case), the
merchant as ``sub_mch_id``, no signature (the platform signs for the container).

- ``Content-Type`` other than ``application/json``: ``{"errcode": 45105, …}``;
- answers ``{"errcode": 0, "errmsg": "ok", "respdata": {...}}``, where a business failure
  is ``respdata.result_code == "FAIL"`` with ``err_code`` / ``err_code_des`` (still
  ``errcode`` 0) and a merchant the sandbox does not play is ``return_code "FAIL"``
  (受理关系不存在);
- ``unifiedorder`` (JSAPI: with the ``payment`` object for ``wx.requestPayment``, signType
  MD5), ``queryorder``, ``closeorder``, ``refund``, ``queryrefund``; the action's case
  does not matter.

The orders are the sandbox's own (the ledger), so the control API and the console pay,
fail and expire them as any other. A paid order (and a completed refund) is delivered to
the container the order named (``env_id``, ``container.service`` / ``path``), at
``SANDBOX_CLOUDHOSTING_URL``, as the platform delivers it: camelCase v2 fields, retried
until the container answers ``{"errcode": 0}`` (notifications.py).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime
from typing import Any

from aiohttp import web

from paylane_common.contract.china_time import CHINA

from .app_keys import SANDBOX
from .cloud_hosting import (
    PLATFORM_APPID,
    V2_ERR_CODES,
    V2_REFUND_STATUS,
    compact,
    order_fields,
)
from .errors import ApiError
from .ledger import Order

ACTIONS = ("unifiedorder", "queryorder", "closeorder", "refund", "queryrefund")


class BusinessFailure(Exception):
    """``result_code FAIL`` (``errcode`` stays 0)."""

    def __init__(self, err_code: str, err_code_des: str):
        super().__init__(err_code_des)
        self.err_code, self.err_code_des = err_code, err_code_des


def _answer(respdata: dict[str, Any]) -> web.Response:
    return web.json_response({"errcode": 0, "errmsg": "ok", "respdata": respdata})


def _platform_error(errcode: int, errmsg: str) -> web.Response:
    return web.json_response({"errcode": errcode, "errmsg": errmsg})


def _from_compact(text: str) -> str:
    when = datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=CHINA)
    return when.isoformat(timespec="seconds")


def _required(body: dict[str, Any], *names: str) -> None:
    for name in names:
        if body.get(name) in (None, ""):
            raise BusinessFailure("PARAM_ERROR", f"{name}参数缺失 (required)")


def _fen(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BusinessFailure("PARAM_ERROR", f"{name}参数格式错误 (an int of fen, > 0)")
    return value


def _ledger_failure(exc: ApiError) -> BusinessFailure:
    return BusinessFailure(V2_ERR_CODES.get(exc.code, exc.code), exc.message)


def _target(body: dict[str, Any]) -> dict[str, Any]:
    """Where the platform is to deliver the result (``callback_type`` 2: a container)."""
    if body.get("callback_type", 2) != 2:
        raise BusinessFailure("PARAM_ERROR", "callback_type: only 2 (a container) is played")
    _required(body, "env_id", "container")
    container = body["container"]
    if not isinstance(container, dict) or not container.get("service"):
        raise BusinessFailure("PARAM_ERROR", "container参数错误 ({service, path})")
    return {
        "env_id": str(body["env_id"]),
        "service": str(container["service"]),
        "path": str(container.get("path") or "/"),
    }


async def pay_action(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    if request.content_type != "application/json":
        return _platform_error(45105, "invalid content type")
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _platform_error(40097, "invalid args: the body is not JSON")
    if not isinstance(body, dict):
        return _platform_error(40097, "invalid args: the body is not a JSON object")
    action = request.match_info["action"].lower()
    if action not in ACTIONS:
        return _platform_error(40066, f"invalid url: no action {action!r}")
    base = {"return_code": "SUCCESS", "return_msg": "OK", "nonce_str": secrets.token_hex(16)}
    if body.get("sub_mch_id") != sandbox.mchid:
        return _answer({**base, "return_code": "FAIL", "return_msg": "受理关系不存在"})
    try:
        data = await _ACTIONS[action](request, body)
    except BusinessFailure as exc:
        data = {"result_code": "FAIL", "err_code": exc.err_code, "err_code_des": exc.err_code_des}
    except ApiError as exc:
        failure = _ledger_failure(exc)
        data = {
            "result_code": "FAIL",
            "err_code": failure.err_code,
            "err_code_des": failure.err_code_des,
        }
    return _answer({**base, "sub_mch_id": sandbox.mchid, "result_code": "SUCCESS", **data})


async def _unifiedorder(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    sandbox = request.app[SANDBOX]
    _required(body, "body", "out_trade_no", "spbill_create_ip")
    total = _fen(body, "total_fee")
    trade_type = str(body.get("trade_type") or "JSAPI").upper()
    if trade_type not in ("JSAPI", "NATIVE"):
        raise BusinessFailure("PARAM_ERROR", f"trade_type {trade_type}: JSAPI or NATIVE")
    openid = body.get("sub_openid") or body.get("openid")
    if trade_type == "JSAPI" and not openid:
        raise BusinessFailure("PARAM_ERROR", "JSAPI支付必须传openid (openid required)")
    target = _target(body)
    appid = body.get("sub_appid") or sandbox.settings.wechatpay_appid or PLATFORM_APPID
    # The order as the ledger keeps every order (the v3 place-order body).
    v3: dict[str, Any] = {
        "appid": appid,
        "mchid": sandbox.mchid,
        "description": str(body["body"])[:128],
        "out_trade_no": str(body["out_trade_no"]),
        "notify_url": f"cloudhosting://{target['env_id']}/{target['service']}{target['path']}",
        "amount": {"total": total, "currency": "CNY"},
    }
    if body.get("time_expire"):
        try:
            v3["time_expire"] = _from_compact(str(body["time_expire"]))
        except ValueError:
            raise BusinessFailure("PARAM_ERROR", "time_expire格式错误 (yyyyMMddHHmmss)") from None
    if body.get("attach"):
        v3["attach"] = str(body["attach"])
    if openid:
        v3["payer"] = {"openid": str(openid)}
    kind = trade_type.lower()
    order = sandbox.ledger.place(kind, v3, sandbox.clock())
    order.cloud = target
    answer: dict[str, Any] = {"trade_type": trade_type, **order.prepay}
    if trade_type == "JSAPI":
        answer["payment"] = _payment(appid, order.prepay["prepay_id"])
    return answer


def _payment(appid: str, prepay_id: str) -> dict[str, str]:
    """What the platform hands the container for ``wx.requestPayment`` (signType MD5,
    signed with a key only the platform holds: here, the sandbox's own)."""
    fields = {
        "appId": appid,
        "timeStamp": str(int(datetime.now().timestamp())),
        "nonceStr": secrets.token_hex(16),
        "package": f"prepay_id={prepay_id}",
        "signType": "MD5",
    }
    text = "&".join(f"{k}={fields[k]}" for k in sorted(fields)) + "&key=sandbox"
    return {**fields, "paySign": hashlib.md5(text.encode()).hexdigest().upper()}


def _order(request: web.Request, body: dict[str, Any]) -> Order:
    ledger = request.app[SANDBOX].ledger
    if body.get("transaction_id"):
        return ledger.order_by_transaction(str(body["transaction_id"]))
    _required(body, "out_trade_no")
    return ledger.order(str(body["out_trade_no"]))


async def _queryorder(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    order = _order(request, body)
    return order_fields(order, request.app[SANDBOX].mchid)


async def _closeorder(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    _required(body, "out_trade_no")
    request.app[SANDBOX].ledger.close(str(body["out_trade_no"]))
    return {}


async def _refund(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    sandbox = request.app[SANDBOX]
    _required(body, "out_refund_no")
    order = _order(request, body)
    refund_fee, total_fee = _fen(body, "refund_fee"), _fen(body, "total_fee")
    target = _target(body)
    v3: dict[str, Any] = {
        "out_trade_no": order.out_trade_no,
        "out_refund_no": str(body["out_refund_no"]),
        "amount": {"refund": refund_fee, "total": total_fee, "currency": "CNY"},
    }
    if body.get("refund_desc"):
        v3["reason"] = str(body["refund_desc"])
    refund = sandbox.create_refund(v3)
    # Set before it can complete: the completion runs after this handler (a timer).
    refund.cloud = refund.cloud or target
    return {
        "transaction_id": refund.transaction_id,
        "out_trade_no": refund.out_trade_no,
        "out_refund_no": refund.out_refund_no,
        "refund_id": refund.refund_id,
        "refund_fee": refund.refund,
        "total_fee": refund.total,
        "cash_fee": refund.total,
    }


async def _queryrefund(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    ledger = request.app[SANDBOX].ledger
    if body.get("out_refund_no"):
        found = ledger.refunds.get(str(body["out_refund_no"]))
        refunds = [found] if found is not None else []
    else:
        _required(body, "out_trade_no")
        refunds = [r for r in ledger.refunds.values() if r.out_trade_no == body["out_trade_no"]]
    if not refunds:
        raise BusinessFailure("REFUNDNOTEXIST", "退款单不存在 (no such refund)")
    first = refunds[0]
    data: dict[str, Any] = {
        "out_trade_no": first.out_trade_no,
        "transaction_id": first.transaction_id,
        "total_fee": first.total,
        "refund_count": len(refunds),
    }
    for n, refund in enumerate(refunds):
        data[f"out_refund_no_{n}"] = refund.out_refund_no
        data[f"refund_id_{n}"] = refund.refund_id
        data[f"refund_fee_{n}"] = refund.refund
        data[f"refund_status_{n}"] = V2_REFUND_STATUS.get(refund.status, refund.status)
        if refund.success_time is not None:
            data[f"refund_success_time_{n}"] = compact(refund.success_time)
    return data


_ACTIONS = {
    "unifiedorder": _unifiedorder,
    "queryorder": _queryorder,
    "closeorder": _closeorder,
    "refund": _refund,
    "queryrefund": _queryrefund,
}


def add_routes(app: web.Application) -> None:
    app.router.add_post("/_/pay/{action}", pay_action)
