"""Order API errors and their one mapping to HTTP: ``{"error": CODE, "message": …}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

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


class NotFound(OrderError):
    status, code = 404, "not_found"


class Conflict(OrderError):
    status, code = 409, "conflict"


class UpstreamRejected(OrderError):
    """WeChat Pay refused the request (a business error, not retried)."""

    status, code = 502, "wechatpay_rejected"


class UpstreamUnavailable(OrderError):
    """WeChat Pay could not be reached within the retry budget."""

    status, code = 503, "wechatpay_unavailable"


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except OrderError as exc:
        if exc.status >= 500:
            log.warning("order_api_upstream_error", code=exc.code, message=exc.message)
        return web.json_response({"error": exc.code, "message": exc.message}, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response(
            {"error": exc.reason.lower().replace(" ", "_"), "message": exc.text or exc.reason},
            status=exc.status,
        )
