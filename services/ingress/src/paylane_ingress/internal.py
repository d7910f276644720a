"""The cloud function's internal API (docs/cloud-function.md), each call behind its
``X-Internal-Secret`` (``INTERNAL_API_SECRET``):

- ``POST /api/payment/internal/notify``: for hosts that already receive WeChat's callback
  elsewhere (the cloud-function hybrid). Publishes the same ``payment.succeeded``, marked
  ``source: "internal"``; the order service's payment gate confirms it with WeChat Pay
  before anything is granted (the caller holds a shared secret, not WeChat Pay's key).
- ``POST /api/payment/internal/order-created``: an order the cloud function placed at
  WeChat Pay but could not write to ``payment_orders``. Published as ``order.created``;
  the order service writes the row.

A wrong or missing secret is 401 ``{"error": "Unauthorized"}``, as the existing backend
answers. Every call is answered only once the broker confirmed the event.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from paylane_common.contract import events
from paylane_common.contract.events import (
    OrderCreated,
    PaymentSucceeded,
    make_event,
    validation_summary,
)
from paylane_common.contract.ids import GENERATION_ID_PATTERN, new_row_id
from paylane_common.runtime.exceptions import PublishError
from paylane_common.runtime.service import PUBLISHER
from paylane_common.web.auth import DuplicateHeader, internal_secret_ok
from paylane_common.web.openapi import body_model, validate_json

from . import metrics
from .config import INGRESS_CONFIG

log = structlog.get_logger(__name__)

#: WeChat Pay's ``out_trade_no``: 6 to 32 of these.
OUT_TRADE_NO = r"^[0-9A-Za-z_\-|*]+$"
#: A row id of the shared tables (``user-1706345678901-xyz789``), VARCHAR(36).
ROW_ID = r"^[0-9A-Za-z_\-]{1,36}$"
#: The fen columns (``amount_total``, generated from the DECIMAL yuan) are INT.
MAX_FEN = 2**31 - 1
#: How much of the cloud function's ``dbError`` a log line keeps.
DB_ERROR_LOG_CHARS = 160


def _unauthorized() -> web.Response:
    return web.json_response({"error": "Unauthorized"}, status=401)


def _check_secret(request: web.Request, route: str) -> web.Response | None:
    """None when the caller holds the secret; otherwise the answer to give."""
    try:
        authorized = internal_secret_ok(request, request.app[INGRESS_CONFIG].internal_secret)
    except DuplicateHeader as exc:
        log.warning("internal_call_duplicate_secret", route=route)
        return _Refusal(400, "DUPLICATE_HEADER", str(exc)).response(route)
    if not authorized:
        log.warning("internal_call_unauthorized", route=route)
        return _unauthorized()
    return None


class _Refusal:
    """A ``{"success": false, "error": CODE, "message": …}`` answer; for the notify route
    also ``"code": "FAIL"`` (what it answered before)."""

    def __init__(self, status: int, error: str, message: str):
        self.status, self.error, self.message = status, error, message

    def response(self, route: str) -> web.Response:
        body: dict[str, Any] = {"success": False, "error": self.error, "message": self.message}
        if route == "notify":
            body["code"] = "FAIL"
        return web.json_response(body, status=self.status)


async def _body(request: web.Request) -> Any:
    """The body, validated with the model ``INGRESS_API`` names for the route."""
    return validate_json(body_model(request), await request.read())


async def _publish(request: web.Request, envelope: events.Envelope) -> bool:
    try:
        await request.app[PUBLISHER].publish(envelope)
    except PublishError as exc:
        log.error("publish_failed_answering_503", error=str(exc))
        return False
    return True


# --- POST /api/payment/internal/notify ---------------------------------------------------


def _blank_is_none(value: Any) -> Any:
    return None if value == "" else value


class InternalNotify(BaseModel):
    """``{outTradeNo, transactionId, status: "paid", packageType?, generationId?, openid?}``
    (the cloud function's body); ``amountTotal`` and ``successTime`` when a caller has them."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    outTradeNo: str = Field(min_length=6, max_length=32, pattern=OUT_TRADE_NO)
    transactionId: str = Field(min_length=1, max_length=64)
    status: Literal["paid"]
    amountTotal: int | None = Field(default=None, gt=0)
    successTime: str | None = None
    openid: str | None = Field(default=None, max_length=128)
    #: Informational: the order row says what was bought.
    packageType: str | None = Field(default=None, max_length=32)
    #: The generation the payment unlocks, for an order row that names none yet
    #: (``GENERATION_ID_PATTERN``: it may reach WeChat Pay's ``attach`` and the bill); ""
    #: is taken as absent (``_blank``), and documented so.
    generationId: Literal[""] | Annotated[str, Field(pattern=GENERATION_ID_PATTERN)] | None = None

    @field_validator("openid", "packageType", "generationId", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return _blank_is_none(value)


async def internal_notify(request: web.Request) -> web.Response:
    metrics.NOTIFICATIONS_RECEIVED.labels("internal").inc()
    denied = _check_secret(request, "notify")
    if denied is not None:
        reason = "duplicate_header" if denied.status == 400 else "internal_secret"
        metrics.NOTIFICATIONS_REJECTED.labels(reason).inc()
        return denied
    try:
        body: InternalNotify = await _body(request)
    except ValidationError as exc:
        metrics.NOTIFICATIONS_REJECTED.labels("internal_invalid").inc()
        message = f"invalid body: {validation_summary(exc)}"
        return _Refusal(400, "INVALID_REQUEST", message).response("notify")
    structlog.contextvars.bind_contextvars(out_trade_no=body.outTradeNo)
    data = PaymentSucceeded(
        out_trade_no=body.outTradeNo,
        transaction_id=body.transactionId,
        amount_total=body.amountTotal,
        payer_total=body.amountTotal,
        openid=body.openid,
        success_time=body.successTime,
        source="internal",
        generation_id=body.generationId,
    )
    # Same transaction → same event id, so repeated calls dedupe in the consumers.
    envelope = make_event(events.PAYMENT_SUCCEEDED, data, f"internal-{body.transactionId}")
    if not await _publish(request, envelope):
        metrics.NOTIFICATIONS_REJECTED.labels("broker_unavailable").inc()
        refusal = _Refusal(503, "UNAVAILABLE", "temporarily unavailable, retry later")
        return refusal.response("notify")
    log.info("internal_notify_published", event_id=envelope.event_id)
    metrics.NOTIFICATIONS_ACKED.labels("published").inc()
    return web.json_response(
        {
            "success": True,
            "message": "payment notification accepted",
            "code": "SUCCESS",
            "event_id": envelope.event_id,
        }
    )


# --- POST /api/payment/internal/order-created --------------------------------------------


class InternalOrderCreated(BaseModel):
    """``{orderId?, outTradeNo, userId, openid, amount (fen), packageType, tradeType,
    status: "pending", reason, dbError?}``. What decides the money is checked strictly;
    what only explains the call (``reason``, ``dbError``) never refuses an order."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    #: "" is taken as absent (``_blank``), and documented so.
    orderId: Literal[""] | Annotated[str, Field(pattern=ROW_ID)] | None = None
    outTradeNo: str = Field(min_length=6, max_length=32, pattern=OUT_TRADE_NO)
    userId: str = Field(pattern=ROW_ID)
    openid: str | None = Field(default=None, max_length=100)
    #: Fen, an integer: ``29.9`` (yuan) or ``"2990"`` is refused rather than guessed at.
    amount: StrictInt = Field(gt=0, le=MAX_FEN)
    packageType: Literal["basic", "premium"]
    tradeType: Literal["JSAPI", "NATIVE", "H5", "APP"] = "JSAPI"
    status: Literal["pending"] = "pending"
    #: ``db_unavailable`` | ``db_insert_failed`` | ``db_exception`` (others are kept too).
    reason: str | None = Field(default=None, max_length=64)
    dbError: Any = None

    @field_validator("orderId", "openid", "reason", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return _blank_is_none(value)


#: The cloud function's ``out_trade_no``: the time it placed the order (ms), 5 digits.
_SEED_OUT_TRADE_NO = re.compile(r"^(1\d{12})\d{5}$")
_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def order_id_for(out_trade_no: str) -> str:
    """The ``payment_orders.id`` of an order the call did not name: for the cloud
    function's ``out_trade_no`` (``{ms}{5 digits}``), ``order-{that ms}-{8 chars of its
    hash}``, the same on every retry of the call; else a fresh ``new_row_id("order")``."""
    match = _SEED_OUT_TRADE_NO.match(out_trade_no)
    if match is None:
        return new_row_id("order")
    number = int.from_bytes(hashlib.sha256(out_trade_no.encode()).digest()[:8], "big")
    suffix = ""
    for _ in range(8):
        number, digit = divmod(number, len(_ID_ALPHABET))
        suffix += _ID_ALPHABET[digit]
    return f"order-{match.group(1)}-{suffix}"


_URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")
#: What names a credential in a ``dbError``, as a key (``{"password": …}``) or in text.
_SECRET_NAMES = ("password", "passwd", "pass", "pwd", "secret", "token", "authorization")
_SECRET_VALUE = re.compile(
    r"""(?ix)
    (password|passwd|pass|pwd|secret|token|authorization)   # what names it
    (["']?\s*[:=]\s*|\W{1,3})                             # then : or = (or a bracket)
    (?:"[^"]*"?|'[^']*'?                                    # a quoted value, spaces and all
      |(?:(?:bearer|basic|digest)\s+)?\S+)                 # or a word (after its scheme)
    """
)


def _without_secrets(value: Any) -> Any:
    """A JSON ``dbError`` with the values of credential-like keys blanked, at any depth."""
    if isinstance(value, dict):
        return {
            k: "***"
            if any(name in str(k).lower() for name in _SECRET_NAMES)
            else _without_secrets(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def loggable_db_error(value: Any, limit: int = DB_ERROR_LOG_CHARS) -> str | None:
    """The caller's ``dbError`` for a log line: credentials blanked (URL user info; the
    values of ``password``, ``pass``, ``pwd``, ``secret``, ``token`` and
    ``authorization``, as keys of an object or in text), cut to ``limit``."""
    if value is None or value == "":
        return None
    text = value if isinstance(value, str) else json.dumps(_without_secrets(value), default=str)
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    text = _SECRET_VALUE.sub(r"\1\2***", text)
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _order_created_refusal(status: int, error: str, message: str) -> web.Response:
    metrics.INTERNAL_CALLS.labels("order-created", error.lower()).inc()
    return _Refusal(status, error, message).response("order-created")


async def internal_order_created(request: web.Request) -> web.Response:
    denied = _check_secret(request, "order-created")
    if denied is not None:
        outcome = "duplicate_header" if denied.status == 400 else "unauthorized"
        metrics.INTERNAL_CALLS.labels("order-created", outcome).inc()
        return denied
    try:
        body: InternalOrderCreated = await _body(request)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return _order_created_refusal(400, "INVALID_JSON", "the body is not valid JSON")
        message = f"invalid body: {validation_summary(exc)}"
        return _order_created_refusal(400, "INVALID_REQUEST", message)
    order_id = body.orderId or order_id_for(body.outTradeNo)
    structlog.contextvars.bind_contextvars(out_trade_no=body.outTradeNo)
    data = OrderCreated(
        out_trade_no=body.outTradeNo,
        order_id=order_id,
        user_id=body.userId,
        openid=body.openid,
        amount_total=body.amount,
        package_type=body.packageType,
        trade_type=body.tradeType,
        reason=body.reason,
    )
    # One event per order, whoever retries: the order service writes it once.
    envelope = make_event(events.ORDER_CREATED, data, f"order-created:{body.outTradeNo}")
    if not await _publish(request, envelope):
        return _order_created_refusal(503, "UNAVAILABLE", "temporarily unavailable, retry later")
    log.info(
        "order_created_published",
        event_id=envelope.event_id,
        order_id=order_id,
        user_id=body.userId,
        amount_total=body.amount,
        package_type=body.packageType,
        trade_type=body.tradeType,
        reason=body.reason,
        db_error=loggable_db_error(body.dbError),
    )
    metrics.INTERNAL_CALLS.labels("order-created", "published").inc()
    return web.json_response(
        {
            "success": True,
            "message": "order accepted: it will be written to payment_orders",
            "orderId": order_id,
        }
    )
