"""Order API errors and their one mapping to HTTP: ``{"error": CODE, "message": …}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict

from paylane_common.wechatpay import (
    ResponseVerificationError,
    WechatPayError,
    WechatPayUnavailable,
)

log = structlog.get_logger(__name__)


class OrderError(Exception):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(OrderError):
    status, code = 400, "invalid_request"


class Unauthorized(OrderError):
    status, code = 401, "unauthorized"


class Forbidden(OrderError):
    """The caller is known but may not do this (a user acting for another user)."""

    status, code = 403, "forbidden"


class TooManyRequests(OrderError):
    status, code = 429, "too_many_requests"

    def __init__(
        self, message: str, code: str | None = None, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message, code)
        #: Seconds until a retry may be taken (``Retry-After``); None: not known.
        self.retry_after = retry_after


class NotFound(OrderError):
    status, code = 404, "not_found"


class Conflict(OrderError):
    status, code = 409, "conflict"


class BrokerUnavailable(OrderError):
    """What the request needs of RabbitMQ could not be done now; nothing was changed."""

    status, code = 503, "broker_unavailable"


class UpstreamRejected(OrderError):
    """WeChat Pay refused the request (a business error, not retried)."""

    status, code = 502, "wechatpay_rejected"


class UpstreamUnavailable(OrderError):
    """WeChat Pay could not be reached within the retry budget."""

    status, code = 503, "wechatpay_unavailable"


class UpstreamUnverified(OrderError):
    """WeChat Pay's answer failed verification (signature, serial, freshness): its outcome
    is unknown, so the caller retries with the same idempotency key."""

    status, code = 502, "wechatpay_unverified"


class UpstreamBadAnswer(OrderError):
    """WeChat Pay answered something that is not what the API documents."""

    status, code = 502, "wechatpay_bad_answer"


def from_wechatpay(exc: WechatPayError) -> OrderError:
    """The one mapping of a WeChat Pay error that is not an error answer: unreachable is a
    503, an answer that failed verification or is not what the API documents a 502. Used
    for whatever a handler lets through, and by a handler that must record the failure
    first (raise it ``from exc``: the answer's ``Request-ID`` stays reachable)."""
    if isinstance(exc, WechatPayUnavailable):
        return UpstreamUnavailable(str(exc))
    if isinstance(exc, ResponseVerificationError):
        return UpstreamUnverified(f"WeChat Pay's answer failed verification: {exc.reason}")
    return UpstreamBadAnswer(str(exc))


def _wechatpay_request_id(exc: BaseException) -> str | None:
    """WeChat's ``Request-ID`` of the answer behind ``exc`` (also when a handler raised an
    :class:`OrderError` while handling a WeChat Pay error): what WeChat support asks for."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        request_id = getattr(seen, "request_id", None)
        if isinstance(request_id, str) and request_id:
            return request_id
        seen = seen.__cause__ or seen.__context__
    return None


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except (OrderError, WechatPayError) as caught:
        exc = caught if isinstance(caught, OrderError) else from_wechatpay(caught)
        body = {"error": exc.code, "message": exc.message}
        request_id = _wechatpay_request_id(caught)
        if request_id is not None:
            body["wechatpay_request_id"] = request_id
        if exc.status >= 500:
            log.warning(
                "order_api_upstream_error",
                code=exc.code,
                message=exc.message,
                wechatpay_request_id=request_id,
            )
        headers = {}
        if isinstance(exc, TooManyRequests) and exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return web.json_response(body, status=exc.status, headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response(
            {"error": exc.reason.lower().replace(" ", "_"), "message": exc.text or exc.reason},
            status=exc.status,
            headers=_kept_headers(exc),
        )


def _kept_headers(exc: web.HTTPException) -> CIMultiDict[str]:
    """What an aiohttp error says in its headers (a 405's ``Allow``), minus its body's."""
    headers = CIMultiDict(exc.headers)
    for name in (hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH):
        headers.popall(name, None)
    return headers
