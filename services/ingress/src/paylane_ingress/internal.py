"""``POST /api/payment/internal/notify``: for hosts that already receive WeChat's callback
elsewhere (the cloud-function hybrid). Publishes the same ``payment.succeeded``, marked
``source: "internal"``; the order service confirms it with WeChat Pay before anything is
granted (the caller holds a shared secret, not WeChat Pay's key), unless the operator set
``INTERNAL_NOTIFY_TRUSTED``."""

from __future__ import annotations

from typing import Literal

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from paylane_common import events
from paylane_common.events import PaymentSucceeded, make_event, validation_summary
from paylane_common.exceptions import PublishError
from paylane_common.headers import DuplicateHeader, secret_matches, sole_header
from paylane_common.service import PUBLISHER

from . import metrics
from .responses import fail

log = structlog.get_logger(__name__)

INTERNAL_SECRET = web.AppKey("internal_secret", str)


class InternalNotify(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    outTradeNo: str = Field(min_length=6, max_length=32, pattern=r"^[0-9A-Za-z_\-|*]+$")
    transactionId: str = Field(min_length=1, max_length=64)
    status: Literal["paid"]
    amountTotal: int | None = Field(default=None, gt=0)
    successTime: str | None = None
    openid: str | None = Field(default=None, max_length=128)


async def internal_notify(request: web.Request) -> web.Response:
    metrics.NOTIFICATIONS_RECEIVED.labels("internal").inc()
    try:
        given = sole_header(request.headers, "X-Internal-Secret")
    except DuplicateHeader as exc:
        metrics.NOTIFICATIONS_REJECTED.labels("duplicate_header").inc()
        log.warning("internal_notify_duplicate_secret")
        return fail(400, str(exc))
    if not secret_matches(request.app[INTERNAL_SECRET], given):
        metrics.NOTIFICATIONS_REJECTED.labels("internal_secret").inc()
        log.warning("internal_notify_unauthorized")
        return fail(401, "invalid X-Internal-Secret")
    try:
        body = InternalNotify.model_validate_json(await request.read())
    except ValidationError as exc:
        metrics.NOTIFICATIONS_REJECTED.labels("internal_invalid").inc()
        return fail(400, f"invalid body: {validation_summary(exc)}")
    structlog.contextvars.bind_contextvars(out_trade_no=body.outTradeNo)
    data = PaymentSucceeded(
        out_trade_no=body.outTradeNo,
        transaction_id=body.transactionId,
        amount_total=body.amountTotal,
        payer_total=body.amountTotal,
        openid=body.openid,
        success_time=body.successTime,
        source="internal",
    )
    # Same transaction → same event id, so repeated calls dedupe in the consumers.
    envelope = make_event(events.PAYMENT_SUCCEEDED, data, f"internal-{body.transactionId}")
    try:
        await request.app[PUBLISHER].publish(envelope)
    except PublishError as exc:
        log.error("publish_failed_answering_503", error=str(exc))
        return fail(503, "temporarily unavailable, retry later")
    log.info("internal_notify_published", event_id=envelope.event_id)
    metrics.NOTIFICATIONS_ACKED.labels("published").inc()
    return web.json_response({"code": "SUCCESS", "event_id": envelope.event_id})
