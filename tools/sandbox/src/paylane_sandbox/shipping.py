"""WeChat's mini-program shipping service (发货信息管理) and its access token, as WeChat
answers them: ``POST /cgi-bin/stable_token``, ``POST /wxa/sec/order/upload_shipping_info``,
``POST /wxa/sec/order/get_order``, ``POST /wxa/sec/order/is_trade_managed``.

Answers are JSON with HTTP 200, an ``errcode`` saying what went wrong:

* ``stable_token {grant_type: "client_credential", appid, secret, force_refresh}`` →
  ``{access_token, expires_in}``. The same token while it has more than five minutes
  left (WeChat hands out the next one in those last five minutes), a new one with
  ``force_refresh``; each new token replaces the appid's previous one. 40002 a wrong
  grant_type, 41002 / 41004 appid / secret missing, 40013 an appid the sandbox does not
  serve, 40125 a wrong secret (when ``SANDBOX_APP_SECRET`` is set).
* ``upload_shipping_info?access_token=…``: 40001 a token that is not the current one; the
  body checked as WeChat documents it (errcodes 268485194-268485228, 10060005,
  10060008/10060009, 10060014); 10060001 a transaction the sandbox has not seen paid,
  10060031 another payer's openid. The first upload ships the order (``order_state`` 2);
  one re-upload is allowed, the next is 10060003.
* ``get_order {transaction_id}`` (or ``{merchant_id, merchant_trade_no}``) →
  ``{order: {…, order_state}}``: 1 to ship, 2 shipped.

The control API (``/sandbox/shipping…``) shows what was uploaded, injects errcodes (the
next N calls of an API answer one: ``-1`` then success, ``10060003``…), revokes the
tokens, and sends the ``trade_manage_remind_shipping`` message a merchant gets for an
order still unshipped 48 hours after payment, to a URL (the mini-program's message push).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: How long a token lives at WeChat.
TOKEN_TTL_S = 7200
#: A token with less than this left is replaced by the next plain stable_token call.
RENEW_WITHIN_S = 300
#: One upload, then one re-upload; the next is 10060003.
MAX_UPLOADS = 2
ITEM_DESC_MAX = 120
#: The APIs whose answers a fault can replace.
ShippingApi = Literal["stable_token", "upload_shipping_info", "get_order"]


def error(errcode: int, errmsg: str) -> dict[str, Any]:
    return {"errcode": errcode, "errmsg": errmsg}


OK: dict[str, Any] = {"errcode": 0, "errmsg": "ok"}


class ShippingFault(BaseModel):
    """Body of ``POST /sandbox/shipping/faults``: the next ``count`` calls of ``api``
    answer ``errcode`` (nothing else happens)."""

    model_config = ConfigDict(extra="forbid")

    api: ShippingApi = "upload_shipping_info"
    errcode: int
    errmsg: str = "sandbox injected errcode"
    count: int = Field(1, ge=1)


class Reminder(BaseModel):
    """Body of ``POST /sandbox/shipping/remind``."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(min_length=1)
    #: Where the message is POSTed; default ``SANDBOX_SHIPPING_MESSAGE_URL``.
    url: str | None = None


@dataclass
class Token:
    value: str
    appid: str
    expires_at: float


@dataclass
class Shipment:
    """What was declared for one transaction."""

    transaction_id: str
    uploads: list[dict[str, Any]] = field(default_factory=list)

    @property
    def order_state(self) -> int:
        return 2 if self.uploads else 1


class ShippingService:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.tokens: dict[str, Token] = {}  # by appid: the current one
        self.stable_token_calls = 0
        self.tokens_issued = 0
        self.shipments: dict[str, Shipment] = {}
        #: Every upload call that got past the token, with its answer.
        self.calls: list[dict[str, Any]] = []
        self.faults: list[ShippingFault] = []

    def reset(self) -> None:
        self.tokens.clear()
        self.stable_token_calls = self.tokens_issued = 0
        self.shipments.clear()
        self.calls.clear()
        self.faults.clear()

    def fault(self, api: ShippingApi) -> dict[str, Any] | None:
        for fault in self.faults:
            if fault.api == api:
                fault.count -= 1
                if fault.count == 0:
                    self.faults.remove(fault)
                return error(fault.errcode, fault.errmsg)
        return None

    # --- the access token ---------------------------------------------------------------

    def stable_token(
        self, body: dict[str, Any], appids: frozenset[str], secret: str | None
    ) -> dict[str, Any]:
        self.stable_token_calls += 1
        if body.get("grant_type") != "client_credential":
            return error(40002, "invalid grant_type")
        appid, given = body.get("appid"), body.get("secret")
        if not isinstance(appid, str) or not appid:
            return error(41002, "appid missing")
        if not isinstance(given, str) or not given:
            return error(41004, "appsecret missing")
        if appids and appid not in appids:
            return error(40013, "invalid appid")
        if secret is not None and given != secret:
            return error(40125, "invalid appsecret")
        injected = self.fault("stable_token")
        if injected is not None:
            return injected
        now = self._clock()
        current = self.tokens.get(appid)
        if (
            body.get("force_refresh") is True
            or current is None
            or (current.expires_at - now <= RENEW_WITHIN_S)
        ):
            current = Token(secrets.token_urlsafe(48), appid, now + TOKEN_TTL_S)
            self.tokens[appid] = current
            self.tokens_issued += 1
        return {"access_token": current.value, "expires_in": int(current.expires_at - now)}

    def valid(self, token: str | None) -> bool:
        now = self._clock()
        return any(t.value == token and t.expires_at > now for t in self.tokens.values())

    def revoke_tokens(self) -> int:
        revoked = len(self.tokens)
        self.tokens.clear()
        return revoked

    # --- shipping -----------------------------------------------------------------------

    def upload(self, body: dict[str, Any], find: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        """``find(order_key)``: the ledger's paid order it names, or None."""
        answer = self.fault("upload_shipping_info") or self._upload(body, find)
        self.calls.append({"at": self._clock(), "body": body, "answer": answer})
        return answer

    def _upload(
        self, body: dict[str, Any], find: Callable[[dict[str, Any]], Any]
    ) -> dict[str, Any]:
        problem = _check(body)
        if problem is not None:
            return problem
        order = find(body["order_key"])
        if order is None or order.transaction_id is None:
            return error(10060001, "支付单不存在")
        payer = body.get("payer") or {}
        if order.paid_openid and payer.get("openid") != order.paid_openid:
            return error(10060031, "订单不属于该用户")
        shipment = self.shipments.setdefault(order.transaction_id, Shipment(order.transaction_id))
        if len(shipment.uploads) >= MAX_UPLOADS:
            return error(10060003, "订单已发货，重新发货的次数已用完")
        shipment.uploads.append(body)
        return OK

    def get_order(self, order: Any) -> dict[str, Any]:
        if order is None or order.transaction_id is None:
            return error(10060001, "支付单不存在")
        shipment = self.shipments.get(order.transaction_id)
        shipping: dict[str, Any] = {}
        if shipment is not None and shipment.uploads:
            last = shipment.uploads[-1]
            shipping = {
                "delivery_mode": last.get("delivery_mode"),
                "logistics_type": last.get("logistics_type"),
                "finish_shipping": True,
                "shipping_list": last.get("shipping_list"),
                "goods_desc": (last.get("shipping_list") or [{}])[0].get("item_desc"),
                "finish_shipping_count": len(shipment.uploads) - 1,
            }
        return {
            **OK,
            "order": {
                "transaction_id": order.transaction_id,
                "merchant_id": order.request.get("mchid"),
                "merchant_trade_no": order.out_trade_no,
                "description": order.request.get("description"),
                "paid_amount": order.paid_total,
                "openid": order.paid_openid,
                "trade_create_time": int(order.created_at),
                "pay_time": int(order.success_time or 0),
                "order_state": shipment.order_state if shipment else 1,
                "in_complaint": False,
                "shipping": shipping,
            },
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "stable_token_calls": self.stable_token_calls,
            "tokens_issued": self.tokens_issued,
            "uploads": [
                {"transaction_id": s.transaction_id, "body": body}
                for s in self.shipments.values()
                for body in s.uploads
            ],
            "calls": self.calls,
            "faults": [f.model_dump() for f in self.faults],
        }


def reminder_message(order: Any, appid: str, now: float) -> dict[str, Any]:
    """The ``trade_manage_remind_shipping`` message push (JSON mode) for ``order``."""
    return {
        "ToUserName": f"gh_{appid[-12:]}",
        "FromUserName": order.paid_openid,
        "CreateTime": int(now),
        "MsgType": "event",
        "Event": "trade_manage_remind_shipping",
        "merchant_id": order.request.get("mchid"),
        "sub_merchant_id": "",
        "transaction_id": order.transaction_id,
        "merchant_trade_no": order.out_trade_no,
        "msg": "您有一笔订单超过48小时未发货，请尽快发货。",
    }


def _check(body: dict[str, Any]) -> dict[str, Any] | None:
    """WeChat's checks of an upload's body, in its errcodes (None: it is well formed)."""
    key = body.get("order_key")
    if not isinstance(key, dict) or key.get("order_number_type") not in (1, 2):
        return error(268485194, "order_number_type 不合法")
    if key["order_number_type"] == 2 and not key.get("transaction_id"):
        return error(268485195, "transaction_id 不能为空")
    if key["order_number_type"] == 1:
        if not key.get("mchid"):
            return error(268485196, "mchid 不能为空")
        if not key.get("out_trade_no"):
            return error(268485197, "out_trade_no 不能为空")
    if body.get("logistics_type") not in (1, 2, 3, 4):
        return error(10060005, "物流模式不合法")
    mode, items = body.get("delivery_mode"), body.get("shipping_list")
    if mode not in (1, 2):
        return error(268485224, "delivery_mode 不合法")
    if not isinstance(items, list) or not items:
        return error(10060014, "参数错误: shipping_list")
    if mode == 1 and len(items) != 1:
        return error(268485228, "统一发货模式下，物流信息列表长度必须为1")
    for item in items:
        desc = item.get("item_desc") if isinstance(item, dict) else None
        if not desc:
            return error(10060008, "商品描述不能为空")
        if len(desc) > ITEM_DESC_MAX:
            return error(10060009, "商品描述长度超限")
    upload_time = body.get("upload_time")
    try:
        parsed = datetime.fromisoformat(upload_time) if isinstance(upload_time, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in upload_time:  # type: ignore[operator]
        return error(268485216, "上传时间非法，请按照RFC 3339格式填写")
    payer = body.get("payer")
    if not isinstance(payer, dict) or not payer.get("openid"):
        return error(10060014, "参数错误: payer.openid")
    return None
