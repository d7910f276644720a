"""WeChat Pay through WeChat Cloud Hosting's open interface (``WECHATPAY_MODE=cloudhosting``).

A container on WeChat Cloud Hosting calls ``http://api.weixin.qq.com/_/pay/<action>`` with
a JSON body of WeChat Pay **v2** fields (snake_case), with no merchant key, certificate or
signature: the platform signs for it, the merchant being a sub-merchant (``sub_mch_id``).
The answer is ``{"errcode", "errmsg", "respdata": {...}}``; ``respdata`` holds the v2
answer (``return_code``, ``result_code``, ``err_code``, ``err_code_des`` …) and, for a
JSAPI order, the ``payment`` object ``wx.requestPayment`` takes as it is.

:class:`CloudHostingClient` offers the methods of :class:`WechatPayClient` the order
service, the payment gate and the reconciler call (place, query, close, refund, query a
refund), taking the same v3 request bodies and answering the same v3 shapes, so that those
parts work unchanged in this mode. It is a subclass so that everything typed for the
direct client takes it; what the open interface has no equivalent for (abnormal refunds,
platform certificates, the v3 bills) raises :class:`WechatPayApiError`
``NOT_AVAILABLE_IN_CLOUDHOSTING``.

Errors become paylane's (WeChat Pay v3's) codes where paylane acts on them
(``ORDER_NOT_EXIST``, ``RESOURCE_NOT_EXISTS``, ``ORDER_PAID``, ``ORDER_CLOSED``,
``SYSTEM_ERROR`` …), the message carrying WeChat's ``err_code_des``: an ``errcode`` ≠ 0
(the platform refused the call: 45105 is a wrong ``Content-Type``), a ``return_code``
FAIL (e.g. an unbound merchant, 受理关系不存在) and a ``result_code`` FAIL (a business
failure, still with ``errcode`` 0).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import aiohttp
import structlog

from paylane_common.contract.china_time import CHINA
from paylane_common.wechatpay.bills import BillFile, FundFlowBill, TradeBill
from paylane_common.wechatpay.client import (
    AbnormalRefundType,
    PlatformCertificate,
    WechatPayClient,
)
from paylane_common.wechatpay.exceptions import (
    WechatPayApiError,
    WechatPayError,
    WechatPayUnavailable,
)
from paylane_common.wechatpay.keys import VerifierKeys
from paylane_common.wechatpay.signature import NotificationVerifier

log = structlog.get_logger(__name__)

DEFAULT_CLOUDHOSTING_API_BASE = "http://api.weixin.qq.com"
#: ``callback_type`` 2: the result goes to a Cloud Hosting container (1: a cloud function).
CALLBACK_CONTAINER = 2
#: The trade types the open interface places (paylane's JSAPI and NATIVE).
CLOUDHOSTING_TRADE_TYPES = ("JSAPI", "NATIVE")
NOT_AVAILABLE = "NOT_AVAILABLE_IN_CLOUDHOSTING"

#: v2 ``err_code`` → the v3 code paylane's callers act on (others are kept as they are).
V2_CODES = {
    "ORDERNOTEXIST": "ORDER_NOT_EXIST",
    "ORDERPAID": "ORDER_PAID",
    "ORDERCLOSED": "ORDER_CLOSED",
    "REFUNDNOTEXIST": "RESOURCE_NOT_EXISTS",
    "SYSTEMERROR": "SYSTEM_ERROR",
    "OUT_TRADE_NO_USED": "OUT_TRADE_NO_USED",
    "NOTENOUGH": "NOT_ENOUGH",
    "FREQUENCY_LIMITED": "FREQUENCY_LIMITED",
    "BIZERR_NEED_RETRY": "SYSTEM_ERROR",
    "TRADE_STATE_ERROR": "TRADE_ERROR",
}
#: Codes of a call WeChat could not do now (answered as a 5xx: retried).
_UNAVAILABLE = frozenset({"SYSTEM_ERROR", "FREQUENCY_LIMITED"})
#: v2 refund statuses → v3's.
REFUND_STATUSES = {
    "SUCCESS": "SUCCESS",
    "PROCESSING": "PROCESSING",
    "REFUNDCLOSE": "CLOSED",
    "CLOSED": "CLOSED",
    "CHANGE": "ABNORMAL",
    "ABNORMAL": "ABNORMAL",
}


@dataclass(frozen=True)
class CloudHostingTarget:
    """Where the platform delivers payment and refund results: the environment
    (``env_id``) and the container's service and path."""

    env_id: str
    service: str
    path: str

    def callback(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "callback_type": CALLBACK_CONTAINER,
            "container": {"service": self.service, "path": self.path},
        }


def china_compact(text: str | None) -> str | None:
    """An RFC 3339 time as v2's ``yyyyMMddHHmmss``, China time."""
    if not text:
        return None
    return datetime.fromisoformat(text).astimezone(CHINA).strftime("%Y%m%d%H%M%S")


def rfc3339_from_compact(text: Any) -> str | None:
    """v2's ``yyyyMMddHHmmss`` (China time) as RFC 3339 with its +08:00 offset."""
    if not text:
        return None
    try:
        moment = datetime.strptime(str(text), "%Y%m%d%H%M%S").replace(tzinfo=CHINA)
    except ValueError:
        return None
    return moment.isoformat(timespec="seconds")


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def queried_transaction(data: dict[str, Any], **asked: str) -> dict[str, Any]:
    """``queryorder``'s answer as a v3 transaction, only when it says what the order's
    state is and names the order asked about: in this mode the query is the only word
    WeChat Pay gives for a payment, so an answer without ``trade_state`` (or about another
    order) is an error, never taken as paid."""
    if not data.get("trade_state"):
        raise WechatPayError("queryorder answered without a trade_state: not taken as paid")
    for field, value in asked.items():
        if data.get(field) != value:
            raise WechatPayError(f"queryorder answered about another {field}: not taken")
    return transaction_from_v2(data)


def transaction_from_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A v2 order (``queryorder``'s ``respdata``, or a payment callback read in snake_case)
    as WeChat Pay v3's transaction object: the merchant is the sub-merchant, the payer the
    sub-openid when there is one; the platform's own ``appid`` is not the order's."""
    total = _int(data.get("total_fee"))
    tx: dict[str, Any] = {
        "out_trade_no": data.get("out_trade_no"),
        "transaction_id": data.get("transaction_id"),
        "trade_state": data.get("trade_state"),
        "trade_type": data.get("trade_type"),
        "mchid": data.get("sub_mch_id") or None,
        "appid": data.get("sub_appid") or None,
        "success_time": rfc3339_from_compact(data.get("time_end")),
        "amount": {
            "total": total,
            "payer_total": _int(data.get("cash_fee")) if data.get("cash_fee") else total,
            "currency": data.get("fee_type") or "CNY",
        },
        "payer": {"openid": data.get("sub_openid") or data.get("openid")},
    }
    if data.get("attach"):
        tx["attach"] = data["attach"]
    if data.get("trade_state_desc"):
        tx["trade_state_desc"] = data["trade_state_desc"]
    return tx


class CloudHostingClient(WechatPayClient):
    """The merchant API over Cloud Hosting's open interface (see the module)."""

    def __init__(
        self,
        *,
        base_url: str,
        mchid: str,
        target: CloudHostingTarget,
        session: aiohttp.ClientSession,
        max_attempts: int = 4,
        max_elapsed_s: float = 10.0,
        request_timeout_s: float = 5.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 2.0,
    ) -> None:
        # Not WechatPayClient.__init__: nothing here signs, and nothing is verified (the
        # platform signs the calls; the payment gate confirms every callback by a query).
        self.base_url = base_url.rstrip("/")
        self.mchid = mchid
        self.target = target
        self._session = session
        self._verifier = NotificationVerifier(VerifierKeys())
        self._max_attempts = max_attempts
        self._max_elapsed_s = max_elapsed_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._backoff = (backoff_initial_s, backoff_max_s)
        self.key_refresh = None

    # -- the API -------------------------------------------------------------------------

    async def place(self, trade_type: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``unifiedorder`` from the v3 body of a JSAPI or NATIVE order: answers
        ``prepay_id`` and ``payment`` (JSAPI: the platform's signed pay parameters, signType
        MD5, for ``wx.requestPayment`` as they are) or ``code_url`` (NATIVE)."""
        if trade_type not in CLOUDHOSTING_TRADE_TYPES:
            raise WechatPayApiError(
                400, NOT_AVAILABLE, f"{trade_type} orders are not placed through Cloud Hosting"
            )
        scene = payload.get("scene_info") or {}
        body: dict[str, Any] = {
            "sub_mch_id": self.mchid,
            "body": str(payload.get("description", ""))[:128],
            "out_trade_no": payload["out_trade_no"],
            "total_fee": int(payload["amount"]["total"]),
            "spbill_create_ip": scene.get("payer_client_ip") or "127.0.0.1",
            "trade_type": trade_type,
            "nonce_str": secrets.token_hex(16),
            **self.target.callback(),
        }
        expire = china_compact(payload.get("time_expire"))
        if expire:
            body["time_expire"] = expire
        if payload.get("attach"):
            body["attach"] = payload["attach"]
        payer = payload.get("payer") or {}
        if trade_type == "JSAPI":
            body["openid"] = payer.get("openid")
        if trade_type == "NATIVE":
            body["product_id"] = payload["out_trade_no"]
        data = await self._action("unifiedorder", body)
        answer: dict[str, Any] = {}
        if data.get("prepay_id"):
            answer["prepay_id"] = data["prepay_id"]
        if data.get("code_url"):
            answer["code_url"] = data["code_url"]
        if isinstance(data.get("payment"), dict):
            answer["payment"] = data["payment"]
        return answer

    async def query_by_out_trade_no(self, out_trade_no: str) -> dict[str, Any]:
        data = await self._action(
            "queryorder", {"out_trade_no": out_trade_no, "sub_mch_id": self.mchid}
        )
        return queried_transaction(data, out_trade_no=out_trade_no)

    async def query_by_transaction_id(self, transaction_id: str) -> dict[str, Any]:
        data = await self._action(
            "queryorder", {"transaction_id": transaction_id, "sub_mch_id": self.mchid}
        )
        return queried_transaction(data, transaction_id=transaction_id)

    async def close(self, out_trade_no: str) -> None:
        await self._action("closeorder", {"out_trade_no": out_trade_no, "sub_mch_id": self.mchid})

    async def create_refund(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``refund`` from the v3 body (``out_trade_no``, ``out_refund_no``, ``amount``,
        ``reason``); its result is delivered to the container like a payment's."""
        amount = payload["amount"]
        body: dict[str, Any] = {
            "out_trade_no": payload["out_trade_no"],
            "out_refund_no": payload["out_refund_no"],
            "sub_mch_id": self.mchid,
            "total_fee": int(amount["total"]),
            "refund_fee": int(amount["refund"]),
            "nonce_str": secrets.token_hex(16),
            **self.target.callback(),
        }
        if payload.get("reason"):
            body["refund_desc"] = payload["reason"]
        data = await self._action("refund", body)
        return {
            "refund_id": data.get("refund_id"),
            "out_refund_no": data.get("out_refund_no") or payload["out_refund_no"],
            "out_trade_no": data.get("out_trade_no") or payload["out_trade_no"],
            "transaction_id": data.get("transaction_id"),
            "status": "PROCESSING",
            "amount": {
                "refund": _int(data.get("refund_fee")) or int(amount["refund"]),
                "total": _int(data.get("total_fee")) or int(amount["total"]),
                "currency": "CNY",
            },
        }

    async def query_refund(self, out_refund_no: str) -> dict[str, Any]:
        data = await self._action(
            "queryrefund", {"out_refund_no": out_refund_no, "sub_mch_id": self.mchid}
        )
        return refund_from_v2(data, out_refund_no)

    # -- not offered by the open interface -------------------------------------------------

    async def apply_abnormal_refund(
        self,
        refund_id: str,
        out_refund_no: str,
        remedy: AbnormalRefundType,
        *,
        bank_type: str | None = None,
        bank_account: str | None = None,
        real_name: str | None = None,
    ) -> dict[str, Any]:
        raise _not_available("an abnormal refund's remedy")

    async def download_certificates(self, apiv3_key: str | bytes) -> list[PlatformCertificate]:
        raise _not_available("platform certificates")

    async def apply_trade_bill(self, day: date, bill_type: str = "ALL") -> BillFile:
        raise _not_available("the v3 trade bill")

    async def apply_fund_flow_bill(self, day: date, account_type: str = "BASIC") -> BillFile:
        raise _not_available("the v3 fund-flow bill")

    async def trade_bill(self, day: date) -> TradeBill:
        raise _not_available("the v3 trade bill")

    async def fund_flow_bill(self, day: date) -> FundFlowBill:
        raise _not_available("the v3 fund-flow bill")

    # -- plumbing -------------------------------------------------------------------------

    async def _action(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """One ``/_/pay/<action>`` call, retried as the direct client retries; the
        ``respdata`` of a success."""
        data: dict[str, Any] = {}
        async for attempt in self._retrying():
            with attempt:
                number = attempt.retry_state.attempt_number
                if number > 1:
                    log.info("cloudhosting_retry", action=action, attempt=number)
                data = await self._post_action(action, body)
        return data

    async def _post_action(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/_/pay/{action}"
        raw = json.dumps(body, ensure_ascii=False).encode()
        try:
            async with self._session.post(
                self.base_url + path,
                data=raw,
                headers={"Content-Type": "application/json", "Accept": "application/json"},
                timeout=self._timeout,
            ) as response:
                status = response.status
                text = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WechatPayUnavailable(f"POST {path}: {type(exc).__name__}") from None
        if status >= 300:
            raise WechatPayApiError(status, f"HTTP_{status}", text[:200].decode(errors="replace"))
        try:
            answer = json.loads(text)
        except (ValueError, RecursionError):
            raise WechatPayError(f"{path} answered with a body that is not JSON") from None
        if not isinstance(answer, dict):
            raise WechatPayError(f"{path} answered with a JSON body that is not an object")
        error = answer_error(answer)
        if error is not None:
            log.info("cloudhosting_api_error", action=action, code=error.code)
            raise error
        respdata = answer.get("respdata")
        return respdata if isinstance(respdata, dict) else {}


def answer_error(answer: dict[str, Any]) -> WechatPayApiError | None:
    """The error an open-interface answer carries, as paylane's; None for a success."""
    errcode = _int(answer.get("errcode"))
    if errcode is None and "errcode" in answer:
        errcode = -1
    if errcode:
        message = str(answer.get("errmsg") or "")
        # -1: the platform is busy; the rest (45105 content type, 40097 parameters, …)
        # will not change by asking again.
        status = 503 if errcode == -1 else 400
        return WechatPayApiError(status, f"ERRCODE_{errcode}", message)
    data = answer.get("respdata")
    if not isinstance(data, dict):
        return None
    if data.get("return_code", "SUCCESS") != "SUCCESS":
        return WechatPayApiError(400, "RETURN_FAIL", str(data.get("return_msg") or ""))
    if data.get("result_code", "SUCCESS") != "SUCCESS":
        raw = str(data.get("err_code") or "FAIL")
        code = V2_CODES.get(raw, raw)
        status = 500 if code in _UNAVAILABLE else 404 if code.endswith("NOT_EXIST") else 400
        if code == "RESOURCE_NOT_EXISTS":
            status = 404
        return WechatPayApiError(
            status, code, str(data.get("err_code_des") or data.get("return_msg") or raw)
        )
    return None


def refund_from_v2(data: dict[str, Any], out_refund_no: str) -> dict[str, Any]:
    """``queryrefund``'s ``respdata`` as WeChat Pay v3's refund object, for the refund
    ``out_refund_no``: read from a ``refund_status_list`` or the indexed fields
    (``out_refund_no_0``, ``refund_status_0`` …)."""
    items: list[dict[str, Any]] = []
    listed = data.get("refund_status_list") or data.get("refund_list")
    if isinstance(listed, list):
        items = [item for item in listed if isinstance(item, dict)]
    count = _int(data.get("refund_count")) or 0
    for n in range(count):
        if f"out_refund_no_{n}" in data:
            items.append(
                {
                    key.removesuffix(f"_{n}"): value
                    for key, value in data.items()
                    if key.endswith(f"_{n}")
                }
            )
    item = next((i for i in items if i.get("out_refund_no") == out_refund_no), None)
    if item is None:
        raise WechatPayApiError(404, "RESOURCE_NOT_EXISTS", f"no refund {out_refund_no}")
    status = REFUND_STATUSES.get(str(item.get("refund_status") or ""), "PROCESSING")
    return {
        "out_refund_no": out_refund_no,
        "refund_id": item.get("refund_id"),
        "out_trade_no": data.get("out_trade_no"),
        "transaction_id": data.get("transaction_id"),
        "status": status,
        "success_time": rfc3339_from_compact(item.get("refund_success_time")),
        "amount": {
            "refund": _int(item.get("refund_fee")) or 0,
            "total": _int(data.get("total_fee")) or 0,
            "currency": "CNY",
        },
    }


def _not_available(what: str) -> WechatPayApiError:
    return WechatPayApiError(
        400, NOT_AVAILABLE, f"{what}: not offered by Cloud Hosting's open interface"
    )


__all__ = [
    "CLOUDHOSTING_TRADE_TYPES",
    "DEFAULT_CLOUDHOSTING_API_BASE",
    "CloudHostingClient",
    "CloudHostingTarget",
    "answer_error",
    "queried_transaction",
    "refund_from_v2",
    "transaction_from_v2",
]
