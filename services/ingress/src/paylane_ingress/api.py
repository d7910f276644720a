"""Ingress's HTTP API as one table (``paylane_common.web.openapi``): WeChat Pay's notify, the
cloud function's internal calls (docs/cloud-function.md) and the seed's price call. It
serves the routes and ``/openapi.json``; the internal calls' bodies are validated with
the models it names. The answers are those the existing backend gave, kept as they were:
hence their mixed shapes."""

from __future__ import annotations

from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from paylane_common.contract.prices import PriceAnswer
from paylane_common.web.auth import INTERNAL_SECRET_HEADER
from paylane_common.web.openapi import PUBLIC, Api, Operation, Param, Reply
from paylane_common.wechatpay.signature import (
    HEADER_NONCE,
    HEADER_SERIAL,
    HEADER_SIGNATURE,
    HEADER_SIGNATURE_TYPE,
    HEADER_TIMESTAMP,
)

from .cloudhosting import CloudHostingAnswer, notify_cloudhosting
from .internal import InternalNotify, InternalOrderCreated, internal_notify, internal_order_created
from .notify import MAX_BODY, notify_wechatpay
from .prices import current_prices

INTERNAL = "internal"


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Unauthorized(_Reply):
    """A missing or wrong ``X-Internal-Secret``, as the existing backend answered it."""

    error: Literal["Unauthorized"]


class Refusal(_Reply):
    success: Literal[False]
    error: str = Field(description="`INVALID_REQUEST`, `INVALID_JSON`, `UNAVAILABLE`, …")
    message: str


class NotifyRefusal(Refusal):
    code: Literal["FAIL"]


class NotifyAccepted(_Reply):
    success: Literal[True]
    message: str
    code: Literal["SUCCESS"]
    event_id: str


class OrderCreatedAccepted(_Reply):
    success: Literal[True]
    message: str
    orderId: str = Field(description="the `payment_orders.id` the row gets")


class WechatFail(_Reply):
    """What WeChat Pay reads of a refused notification (it retries later)."""

    code: Literal["FAIL"]
    message: str


#: A WeChat Pay v3 notification, as far as ingress reads it before decrypting.
NOTIFICATION: dict[str, Any] = {
    "type": "object",
    "required": ["id", "event_type", "resource"],
    "properties": {
        "id": {"type": "string"},
        "create_time": {"type": "string"},
        "event_type": {"type": "string", "examples": ["TRANSACTION.SUCCESS", "REFUND.SUCCESS"]},
        "resource_type": {"type": "string"},
        "summary": {"type": "string"},
        "resource": {
            "type": "object",
            "required": ["algorithm", "ciphertext", "nonce"],
            "properties": {
                "algorithm": {"const": "AEAD_AES_256_GCM"},
                "ciphertext": {"type": "string"},
                "nonce": {"type": "string"},
                "associated_data": {"type": "string"},
                "original_type": {"type": "string"},
            },
        },
    },
}


def _wechatpay_header(name: str, required: bool = True) -> Param:
    """An empty one is as absent (400)."""
    schema = {"type": "string", "minLength": 1}
    return Param(name, "header", "WeChat Pay's signature header", schema, required=required)


def _internal_errors(refusal: type[Refusal]) -> dict[int, Reply]:
    return {
        400: Reply("an invalid body, or `X-Internal-Secret` given twice", refusal),
        401: Reply("a missing or wrong `X-Internal-Secret`", Unauthorized),
        503: Reply("the broker did not confirm the event: retry (`UNAVAILABLE`)", refusal),
    }


#: What WeChat Cloud Hosting delivers to the container, as far as ingress reads it.
CLOUDHOSTING_RESULT: dict[str, Any] = {
    "type": "object",
    "description": "WeChat Pay v2 notification fields in camelCase (also snake_case; a"
    " refund's may be nested in `reqInfo`)",
    "properties": {
        "returnCode": {"type": "string"},
        "resultCode": {"type": "string"},
        "outTradeNo": {"type": "string"},
        "transactionId": {"type": "string"},
        "totalFee": {"type": ["integer", "string"]},
        "cashFee": {"type": ["integer", "string"]},
        "subMchId": {"type": "string"},
        "subOpenid": {"type": "string"},
        "timeEnd": {"type": "string", "examples": ["20220321132007"]},
        "outRefundNo": {"type": "string"},
        "refundStatus": {"type": "string"},
        "reqInfo": {"type": ["object", "string"]},
    },
}


#: The existing cloud function's default notify URL (``${API_BASE_URL}/api/payment/callback``):
#: WeChat Pay's notifications sent there are served exactly as on ``/notify/wechatpay``.
CALLBACK_ALIAS = "/api/payment/callback"

_NOTIFY_DESCRIPTION = (
    "Verified (signature, timestamp, serial), decrypted with the APIv3 key, published to"
    " RabbitMQ; answered 204 once the broker confirmed."
)


def _notify(path: str, summary: str, description: str, operation_id: str = "") -> Operation:
    """``POST /notify/wechatpay`` or its alias: one handler, one contract."""
    return Operation(
        "POST",
        path,
        notify_wechatpay,
        summary,
        {
            204: Reply("verified and published (or of a kind ingress ignores)"),
            400: Reply("malformed: headers, body or resource", WechatFail),
            401: Reply("the signature does not verify", WechatFail),
            413: Reply(f"the body is larger than {MAX_BODY} bytes", WechatFail),
            415: Reply("not `application/json`", WechatFail),
            503: Reply("the broker did not confirm the event: WeChat Pay retries", WechatFail),
        },
        body_schema=NOTIFICATION,
        # Anyone may send one; what counts is WeChat Pay's signature, which the
        # handler verifies before it reads the body.
        security=PUBLIC,
        parameters=(
            _wechatpay_header(HEADER_SIGNATURE),
            _wechatpay_header(HEADER_TIMESTAMP),
            _wechatpay_header(HEADER_NONCE),
            _wechatpay_header(HEADER_SERIAL),
            _wechatpay_header(HEADER_SIGNATURE_TYPE, required=False),
        ),
        description=description,
        operation_id=operation_id,
    )


INGRESS_API = Api(
    title="paylane ingress",
    version=metadata.version("paylane-ingress"),
    description=(
        "WeChat Pay's notifications in (`POST /notify/wechatpay`, also served as"
        " `POST /api/payment/callback`), and the cloud function's"
        " calls of the existing backend, answered as it answered them: its internal API"
        " (`X-Internal-Secret: INTERNAL_API_SECRET`) and the price list."
    ),
    security_schemes={
        INTERNAL: {
            "type": "apiKey",
            "in": "header",
            "name": INTERNAL_SECRET_HEADER,
            "description": "the cloud function: `INTERNAL_API_SECRET`",
        },
    },
    operations=[
        _notify(
            "/notify/wechatpay",
            "A WeChat Pay v3 notification (payment or refund)",
            _NOTIFY_DESCRIPTION,
        ),
        _notify(
            CALLBACK_ALIAS,
            "The same as `POST /notify/wechatpay`, under the existing cloud function's"
            " default notify URL",
            _NOTIFY_DESCRIPTION
            + " The same handler as `POST /notify/wechatpay`: a notify URL written as"
            " `${API_BASE_URL}/api/payment/callback`, the existing cloud function's"
            " default, reaches ingress too.",
            operation_id="notify_wechatpay_callback_alias",
        ),
        Operation(
            "POST",
            "/notify/cloudhosting",
            notify_cloudhosting,
            "A payment or refund result WeChat Cloud Hosting delivers to the container"
            " (confirmed with WeChat Pay before anything is granted)",
            {
                200: Reply(
                    "`errcode` 0: published (or of a kind ingress ignores)", CloudHostingAnswer
                ),
                400: Reply("a malformed body", CloudHostingAnswer),
                403: Reply(
                    "`CLOUDHOSTING_TRUST_HEADERS` and no `X-WX-SOURCE` / `X-WX-ENV`",
                    CloudHostingAnswer,
                ),
                413: Reply(f"the body is larger than {MAX_BODY} bytes", CloudHostingAnswer),
                503: Reply(
                    "`errcode` -1: the broker did not confirm the event; the platform retries",
                    CloudHostingAnswer,
                ),
            },
            body_schema=CLOUDHOSTING_RESULT,
            # Nothing on this path is signed: what it publishes is a claim the order
            # service's payment gate confirms with a query before anything is granted.
            security=PUBLIC,
            description="`WECHATPAY_MODE=cloudhosting` (docs/cloudhosting.md). Answered"
            ' `{"errcode":0,"errmsg":"ok"}` only once the broker confirmed the event.',
        ),
        Operation(
            "POST",
            "/api/payment/internal/notify",
            internal_notify,
            "The cloud function's payment notify (confirmed with WeChat Pay before anything"
            " is granted)",
            {
                200: Reply("published as `payment.succeeded`", NotifyAccepted),
                **_internal_errors(NotifyRefusal),
            },
            body=InternalNotify,
            security=(INTERNAL,),
        ),
        Operation(
            "POST",
            "/api/payment/internal/order-created",
            internal_order_created,
            "An order the cloud function placed but could not write to `payment_orders`",
            {
                200: Reply("published as `order.created`", OrderCreatedAccepted),
                **_internal_errors(Refusal),
            },
            body=InternalOrderCreated,
            security=(INTERNAL,),
        ),
        Operation(
            "GET",
            "/api/prices/current",
            current_prices,
            "The catalog's prices in yuan, as the existing backend answered them",
            {200: Reply("the prices", PriceAnswer)},
            security=PUBLIC,
        ),
    ],
)
