"""``POST /notify/cloudhosting``: the payment (and refund) results WeChat Cloud Hosting
delivers to the container (``WECHATPAY_MODE=cloudhosting``, docs/cloudhosting.md).

The platform posts WeChat Pay v2's notification fields in camelCase (``outTradeNo``,
``transactionId``, ``totalFee``, ``subMchId``, ``timeEnd`` …), already checked by the
platform: no ``Wechatpay-*`` signature. snake_case fields and a nested ``reqInfo`` (an
object, or its JSON text: how refund results are reported to come) are read too.

Nothing here is signed, so what is published is only a claim, with
``source: "cloudhosting"``: a ``payment.succeeded`` without notification, which the order
service's payment gate confirms with a query (``queryorder``) before an order may be paid,
as for the cloud function's internal notify; a ``refund.*``, which the order service
confirms with ``queryrefund`` before the refund takes anything back, and applies as
WeChat Pay answers it (paylane_order.refunds). The answer is ``{"errcode": 0, "errmsg":
"ok"}`` only once the broker confirmed the event; anything else is a non-zero
``errcode``, and the platform delivers the result again (for up to two days).

With ``CLOUDHOSTING_TRUST_HEADERS=true`` a call without the platform's ``X-WX-SOURCE`` and
``X-WX-ENV`` headers, or whose ``X-WX-ENV`` is not ``CLOUDHOSTING_ENV_ID`` (when set), is
refused (403): the listener must then be reachable only through the platform.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from paylane_common.contract import events
from paylane_common.contract.china_time import CHINA
from paylane_common.contract.events import (
    CLOUDHOSTING_REFUND_PREFIX,
    Envelope,
    PaymentSucceeded,
    RefundEvent,
    make_event,
)
from paylane_common.runtime.exceptions import PublishError
from paylane_common.runtime.service import PUBLISHER
from paylane_common.wechatpay.cloudhosting import REFUND_STATUSES, rfc3339_from_compact

from . import metrics, rejections
from .config import INGRESS_CONFIG
from .notify import MAX_BODY

log = structlog.get_logger(__name__)

#: The route's name in rejection records (rejections.py).
ROUTE = "cloudhosting"
#: The headers the platform sets on its calls, required with CLOUDHOSTING_TRUST_HEADERS.
PLATFORM_HEADERS = ("X-WX-SOURCE", "X-WX-ENV")
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
#: The types of the fields ingress reads (snake_case names), as ``INGRESS_API`` documents
#: them: one of another type is a malformed body (400), never guessed at.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "return_code": (str,),
    "result_code": (str,),
    "out_trade_no": (str,),
    "transaction_id": (str,),
    "total_fee": (int, str),
    "cash_fee": (int, str),
    "sub_mch_id": (str,),
    "sub_openid": (str,),
    "time_end": (str,),
    "out_refund_no": (str,),
    "refund_status": (str,),
    "req_info": (dict, str),
}


class CloudHostingAnswer(BaseModel):
    """What the platform reads: ``errcode`` 0 is delivered; anything else is retried."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    errcode: int
    errmsg: str


def _answer(errcode: int, errmsg: str, status: int = 200) -> web.Response:
    return web.json_response({"errcode": errcode, "errmsg": errmsg}, status=status)


def snake(name: str) -> str:
    """``outTradeNo`` → ``out_trade_no``; a snake_case name stays as it is."""
    return _CAMEL.sub(r"_\1", name).lower()


def flatten(body: dict[str, Any]) -> dict[str, Any]:
    """The callback's fields in snake_case, a nested ``reqInfo`` (object or JSON text)
    merged in (its fields win: they are the refund's)."""
    fields = {snake(key): value for key, value in body.items()}
    _check_types(fields)
    nested = fields.pop("req_info", None)
    if isinstance(nested, str):
        try:
            nested = json.loads(nested)
        except ValueError:
            nested = None
    if isinstance(nested, dict):
        inner = {snake(key): value for key, value in nested.items()}
        _check_types(inner)
        fields.update(inner)
    return fields


def _check_types(fields: dict[str, Any]) -> None:
    for name, types in FIELD_TYPES.items():
        if name not in fields:
            continue
        value = fields[name]  # null is a type of its own, not absent
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"{name} is not a {' or '.join(t.__name__ for t in types)}")


def _fen(value: Any) -> int | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ValueError(f"not an amount in fen: {value!r}")


class Ignored(Exception):
    """Acknowledged (errcode 0), not published: a result that is no payment."""


def to_event(fields: dict[str, Any]) -> Envelope:
    """The event a callback announces, a claim (``source: "cloudhosting"``); ``Ignored``
    for what is acknowledged unpublished, ``ValueError`` (or ``KeyError``) for a malformed
    one."""
    if fields.get("out_refund_no") or fields.get("refund_status"):
        status = REFUND_STATUSES.get(str(fields.get("refund_status") or "SUCCESS"))
        if status not in events.REFUND_EVENTS:
            raise Ignored(f"refund_status {fields.get('refund_status')!r}")
        refund_fee = _fen(fields.get("settlement_refund_fee")) or _fen(fields.get("refund_fee"))
        total_fee = _fen(fields.get("settlement_total_fee")) or _fen(fields.get("total_fee"))
        refund = RefundEvent(
            out_trade_no=str(fields["out_trade_no"]),
            out_refund_no=str(fields["out_refund_no"]),
            refund_id=fields.get("refund_id") or None,
            amount_refund=refund_fee or 0,
            amount_total=total_fee or 0,
            status=status,
            success_time=_time(fields.get("success_time")),
            source="cloudhosting",
        )
        event_id = f"{CLOUDHOSTING_REFUND_PREFIX}{refund.out_refund_no}-{status}"
        return make_event(events.REFUND_EVENTS[status], refund, event_id)
    for flag in ("return_code", "result_code"):
        if str(fields.get(flag) or "SUCCESS").upper() != "SUCCESS":
            raise Ignored(f"{flag} {fields.get(flag)!r}")
    total = _fen(fields.get("total_fee"))
    payment = PaymentSucceeded(
        out_trade_no=str(fields["out_trade_no"]),
        transaction_id=str(fields["transaction_id"]),
        amount_total=total,
        payer_total=_fen(fields.get("cash_fee")) or total,
        currency=str(fields.get("fee_type") or "CNY"),
        openid=fields.get("sub_openid") or fields.get("openid") or None,
        trade_type=fields.get("trade_type") or None,
        success_time=_time(fields.get("time_end")),
        # The merchant is the sub-merchant; the platform's own appid is not the order's.
        mchid=fields.get("sub_mch_id") or None,
        appid=fields.get("sub_appid") or None,
        source="cloudhosting",
    )
    # The same transaction → the same event id: a redelivery dedupes in the consumers.
    return make_event(events.PAYMENT_SUCCEEDED, payment, f"cloudhosting-{payment.transaction_id}")


def _time(value: Any) -> str | None:
    """``yyyyMMddHHmmss`` or ``yyyy-MM-dd HH:mm:ss`` (China time), or already RFC 3339."""
    if not value:
        return None
    text = str(value)
    if text.isdigit():
        return rfc3339_from_compact(text)
    try:
        moment = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
    except ValueError:
        return text
    return moment.isoformat(timespec="seconds")


async def notify_cloudhosting(request: web.Request) -> web.Response:
    metrics.NOTIFICATIONS_RECEIVED.labels("cloudhosting").inc()
    config = request.app[INGRESS_CONFIG]
    if config.trust_platform_headers:
        missing = [name for name in PLATFORM_HEADERS if not request.headers.get(name)]
        env = request.headers.get("X-WX-ENV")
        if missing or (config.cloudhosting_env_id and env != config.cloudhosting_env_id):
            metrics.NOTIFICATIONS_REJECTED.labels("cloudhosting_headers").inc()
            log.warning("cloudhosting_without_platform_headers", missing=missing, env=env)
            rejections.record(request, ROUTE, "cloudhosting_headers", 403)
            why = f"no {', '.join(missing)}" if missing else f"X-WX-ENV {env!r} is not ours"
            return _answer(403, f"not through the platform: {why}", 403)
    raw = await request.read()
    if len(raw) > MAX_BODY:
        metrics.NOTIFICATIONS_REJECTED.labels("too_large").inc()
        rejections.record(request, ROUTE, "too_large", 413)
        return _answer(413, "body too large", 413)
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        # Payments and refunds alike are claims: the order service asks WeChat Pay.
        envelope = to_event(flatten(body))
    except Ignored as exc:
        metrics.NOTIFICATIONS_ACKED.labels("ignored").inc()
        log.info("cloudhosting_result_ignored", reason=str(exc))
        return _answer(0, "ok")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        metrics.NOTIFICATIONS_REJECTED.labels("cloudhosting_invalid").inc()
        log.warning("cloudhosting_result_invalid", error=type(exc).__name__)
        numbers = rejections.body_fields(raw, "outTradeNo", "transactionId")
        rejections.record(
            request,
            ROUTE,
            "cloudhosting_invalid",
            400,
            out_trade_no=numbers.get("outTradeNo"),
            transaction_id=numbers.get("transactionId"),
        )
        return _answer(400, f"invalid body: {type(exc).__name__}", 400)
    structlog.contextvars.bind_contextvars(out_trade_no=envelope.data.get("out_trade_no"))
    try:
        await request.app[PUBLISHER].publish(envelope)
    except PublishError as exc:
        metrics.NOTIFICATIONS_REJECTED.labels("broker_unavailable").inc()
        log.error("publish_failed_answering_errcode", error=str(exc))
        rejections.record(
            request,
            ROUTE,
            "broker_unavailable",
            503,
            event_id=envelope.event_id,
            event_type=envelope.type,
            out_trade_no=envelope.data.get("out_trade_no"),
            transaction_id=envelope.data.get("transaction_id"),
        )
        return _answer(-1, "temporarily unavailable, retry later", 503)
    metrics.NOTIFICATIONS_ACKED.labels("published").inc()
    log.info("cloudhosting_result_published", event_id=envelope.event_id, type=envelope.type)
    return _answer(0, "ok")
