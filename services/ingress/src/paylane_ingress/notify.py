"""``POST /notify/wechatpay``: docs/ingress.md steps 1 to 8, in order."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from paylane_common.broker.publisher import Publisher
from paylane_common.contract.events import WechatNotification
from paylane_common.runtime.exceptions import EventValidationError, PublishError
from paylane_common.runtime.service import PUBLISHER
from paylane_common.wechatpay import (
    DecryptionError,
    NotificationHeaders,
    VerificationError,
    decrypt_notification,
    parse_notification,
)
from paylane_common.wechatpay.merchant_api import CERT_REFRESHER
from paylane_common.wechatpay.signature import (
    HEADER_NONCE,
    HEADER_SERIAL,
    HEADER_SIGNATURE,
    HEADER_SIGNATURE_TYPE,
    HEADER_TIMESTAMP,
)

from . import metrics, rejections
from .config import INGRESS_CONFIG, LOAD_ANNOUNCER, IngressConfig
from .mapping import Ignored, to_event
from .responses import acknowledged, fail

log = structlog.get_logger(__name__)

MAX_BODY = 64 * 1024

#: Labelled metrics of the hot path, resolved once.
_RECEIVED = metrics.NOTIFICATIONS_RECEIVED.labels("wechatpay")
_PUBLISHED = metrics.NOTIFICATIONS_ACKED.labels("published")
_ACK_SECONDS = {n: metrics.ACK_SECONDS.labels(f"{n}xx") for n in (2, 4, 5)}

#: Verification failures that mean "malformed" (400) rather than "not authentic" (401).
_MALFORMED = {"missing_header", "duplicate_header", "bad_signature_type", "bad_timestamp"}


@dataclass
class _Seen:
    """What could be read of the notification so far, for its rejection's record
    (rejections.py): never the body's plaintext beyond these."""

    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    body: bytes = b""
    serial: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    out_trade_no: str | None = None
    transaction_id: str | None = None

    def record(self, request: web.Request, reason: str, status: int) -> None:
        event_id, event_type = self.event_id, self.event_type
        if event_id is None and self.body:  # refused before the body was parsed
            fields = rejections.body_fields(self.body, "id", "event_type")
            event_id, event_type = fields.get("id"), fields.get("event_type")
        rejections.record(
            request,
            "wechatpay",
            reason,
            status,
            self.received_at,
            serial=self.serial,
            event_id=event_id,
            event_type=event_type,
            out_trade_no=self.out_trade_no,
            transaction_id=self.transaction_id,
        )


class Rejection(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


async def notify_wechatpay(request: web.Request) -> web.Response:
    started = time.perf_counter()
    _RECEIVED.inc()
    seen = _Seen()
    try:
        response = await _handle(request, seen)
    except Rejection as rej:
        metrics.NOTIFICATIONS_REJECTED.labels(rej.reason).inc()
        level = "info" if rej.reason == "signtest_probe" else "warning"
        getattr(log, level)("notification_rejected", reason=rej.reason, status=rej.status)
        response = fail(rej.status, rej.message)
        seen.record(request, rej.reason, rej.status)
    _ACK_SECONDS[response.status // 100].observe(time.perf_counter() - started)
    return response


async def _handle(request: web.Request, seen: _Seen) -> web.Response:
    config = request.app[INGRESS_CONFIG]
    received_at = int(time.time())
    seen.serial = request.headers.get(HEADER_SERIAL)
    body = seen.body = await _read_body(request)
    try:
        headers = NotificationHeaders.from_mapping(request.headers)
        config.verifier.verify(headers, body)
    except VerificationError as exc:
        refresher = request.app.get(CERT_REFRESHER)
        if exc.reason == "unknown_serial" and refresher is not None:
            refresher.request_refresh()  # in the background: never awaited here
        status = 400 if exc.reason in _MALFORMED else 401
        raise Rejection(status, exc.reason, _verification_message(exc)) from None
    metrics.NOTIFICATIONS_VERIFIED.inc()
    # Verified notifications being answered count toward "busy" (pressure.py); one that
    # does not verify, or is still sending its body, does not.
    try:
        received = _as_received(headers, body, received_at)
    except UnicodeDecodeError:
        raise Rejection(400, "malformed_body", "notification body is not UTF-8") from None
    load = request.app[LOAD_ANNOUNCER]
    load.entered()
    try:
        return await _acknowledge(request, config, body, received, seen)
    finally:
        load.left()


def _as_received(headers: NotificationHeaders, body: bytes, received_at: int) -> WechatNotification:
    """The notification as it came, for the order service to verify it again."""
    signed = {
        HEADER_SIGNATURE: headers.signature,
        HEADER_TIMESTAMP: headers.timestamp,
        HEADER_NONCE: headers.nonce,
        HEADER_SERIAL: headers.serial,
    }
    if headers.signature_type is not None:
        signed[HEADER_SIGNATURE_TYPE] = headers.signature_type
    return WechatNotification(body=body.decode("utf-8"), headers=signed, received_at=received_at)


async def _acknowledge(
    request: web.Request,
    config: IngressConfig,
    body: bytes,
    received: WechatNotification,
    seen: _Seen,
) -> web.Response:
    try:
        notification = parse_notification(body)
    except ValueError as exc:
        raise Rejection(400, "malformed_body", str(exc)) from None
    seen.event_id, seen.event_type = notification["id"], notification["event_type"]
    structlog.contextvars.bind_contextvars(
        event_id=notification["id"],
        event_type=notification["event_type"],
        trace_id=notification["id"],
    )
    try:
        resource = decrypt_notification(notification, config.apiv3_key)
    except DecryptionError:
        # Signed by WeChat yet undecryptable: almost always a wrong or rotated APIv3 key.
        log.error("notification_undecryptable")
        raise Rejection(400, "decrypt_failed", "resource could not be decrypted") from None
    # Only the order's and the transaction's numbers, never the payer's data.
    seen.out_trade_no = _text(resource.get("out_trade_no"))
    seen.transaction_id = _text(resource.get("transaction_id"))

    try:
        envelope = to_event(notification["id"], notification["event_type"], resource, received)
    except Ignored as why:
        log.info("notification_ignored", why=str(why))
        metrics.NOTIFICATIONS_ACKED.labels("ignored").inc()
        return acknowledged()
    except (KeyError, TypeError, ValueError, AttributeError, EventValidationError) as exc:
        raise Rejection(400, "invalid_resource", _field_problem(exc)) from None
    structlog.contextvars.bind_contextvars(out_trade_no=envelope.correlation_id)

    publisher: Publisher = request.app[PUBLISHER]
    try:
        await publisher.publish(envelope)
    except PublishError as exc:
        log.error("publish_failed_answering_503", error=str(exc))
        metrics.NOTIFICATIONS_REJECTED.labels("broker_unavailable").inc()
        seen.record(request, "broker_unavailable", 503)
        return fail(503, "temporarily unavailable, retry later")
    log.info("notification_published", routing_key=envelope.type)
    _PUBLISHED.inc()
    return acknowledged()


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Rejection(413, "too_large", f"body larger than {MAX_BODY} bytes")
    if request.content_type != "application/json":
        raise Rejection(415, "not_json", "Content-Type must be application/json")
    # read(n) returns what is buffered, not the whole body: read until EOF, capped.
    body = b""
    while chunk := await request.content.read(MAX_BODY + 1 - len(body)):
        body += chunk
        if len(body) > MAX_BODY:
            raise Rejection(413, "too_large", f"body larger than {MAX_BODY} bytes")
    if not body:
        raise Rejection(400, "empty_body", "empty body")
    return body


def _verification_message(exc: VerificationError) -> str:
    if exc.reason == "duplicate_header":
        return str(exc)  # names the header, never its values
    return {
        "missing_header": "missing Wechatpay-* header",
        "bad_signature_type": "unsupported Wechatpay-Signature-Type",
        "bad_timestamp": "Wechatpay-Timestamp is not a unix timestamp",
        "stale_timestamp": "Wechatpay-Timestamp outside the accepted window",
        "unknown_serial": "unknown Wechatpay-Serial",
        "expired_certificate": "Wechatpay-Serial names a certificate outside its validity",
        "bad_signature": "signature verification failed",
        "signtest_probe": "signature verification failed",
    }.get(exc.reason, "verification failed")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _field_problem(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"resource lacks field {exc.args[0]!r}"
    if isinstance(exc, EventValidationError):
        return str(exc)
    return "resource has an invalid field"
