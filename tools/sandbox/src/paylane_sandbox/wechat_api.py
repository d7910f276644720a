"""The WeChat Pay APIv3 endpoints (``/v3/...``): merchant-authenticated, signed answers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import resources
from .app_keys import SANDBOX
from .errors import ApiError, json_response, param_error
from .metrics import API_REQUESTS
from .validation import check_place_order, check_refund, parse_json_object

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def wechat_api(request: web.Request, handler: Handler) -> web.StreamResponse:
    """For ``/v3/``: merchant signature (401), injected faults, errors as WeChat Pay's
    ``{code, message}``, and every answer signed by the platform key."""
    if not request.path.startswith("/v3/"):
        return await handler(request)
    sandbox = request.app[SANDBOX]
    try:
        body = await request.read()
        sandbox.authenticator.check(
            request.method, request.raw_path, request.headers.get("Authorization"), body
        )
        await sandbox.faults.apply(request.method, request.path)
        response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except web.HTTPException as exc:  # no such route, wrong method, body too large
        code = {404: "NOT_FOUND", 405: "INVALID_REQUEST"}.get(exc.status, "PARAM_ERROR")
        response = ApiError(exc.status, code, exc.reason).response()
    if not isinstance(response, web.Response):  # pragma: no cover - handlers return Response
        return response
    API_REQUESTS.labels(str(response.status)).inc()
    signed = response.body if isinstance(response.body, bytes) else b""
    # An API answer always names a request: "" (no header) means the platform certificate.
    requested = request.headers.get("Wechatpay-Serial", "")
    response.headers.update(sandbox.signer.headers(signed, requested))
    response.headers["Request-ID"] = uuid.uuid4().hex.upper()
    return response


def _check_mchid_query(request: web.Request) -> None:
    mchid = request.query.get("mchid")
    if not mchid:
        raise param_error("mchid", "必填,不能为空 (required)", location="query")
    if mchid != request.app[SANDBOX].mchid:
        raise param_error(
            "mchid", "与请求头商户号不一致 (not the signing merchant)", location="query"
        )


async def place_order(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    kind = request.match_info["kind"]
    body = parse_json_object(await request.read())
    check_place_order(kind, body)
    order = sandbox.ledger.place(kind, body, sandbox.clock())
    return json_response(order.prepay)


async def query_by_out_trade_no(request: web.Request) -> web.Response:
    _check_mchid_query(request)
    sandbox = request.app[SANDBOX]
    order = sandbox.ledger.order(request.match_info["out_trade_no"])
    return json_response(resources.transaction(order, sandbox.mchid))


async def query_by_transaction_id(request: web.Request) -> web.Response:
    _check_mchid_query(request)
    sandbox = request.app[SANDBOX]
    order = sandbox.ledger.order_by_transaction(request.match_info["transaction_id"])
    return json_response(resources.transaction(order, sandbox.mchid))


async def close_order(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    body = parse_json_object(await request.read())
    if not body.get("mchid"):
        raise param_error("/mchid", "必填,不能为空 (required)")
    if body["mchid"] != sandbox.mchid:
        raise param_error("/mchid", "与请求头商户号不一致 (not the signing merchant)")
    sandbox.ledger.close(request.match_info["out_trade_no"])
    return web.Response(status=204)


async def create_refund(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    body = parse_json_object(await request.read())
    check_refund(body)
    refund = sandbox.create_refund(body)
    return json_response(resources.refund(refund))


async def query_refund(request: web.Request) -> web.Response:
    refund = request.app[SANDBOX].ledger.refund(request.match_info["out_refund_no"])
    return json_response(resources.refund(refund))


async def certificates(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    return json_response(sandbox.signer.certificates_listing(sandbox.apiv3_key))


def add_routes(app: web.Application) -> None:
    app.middlewares.append(wechat_api)
    router = app.router
    router.add_post("/v3/pay/transactions/{kind:jsapi|native|h5|app}", place_order)
    router.add_get("/v3/pay/transactions/out-trade-no/{out_trade_no}", query_by_out_trade_no)
    router.add_get("/v3/pay/transactions/id/{transaction_id}", query_by_transaction_id)
    router.add_post("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", close_order)
    router.add_post("/v3/refund/domestic/refunds", create_refund)
    router.add_get("/v3/refund/domestic/refunds/{out_refund_no}", query_refund)
    router.add_get("/v3/certificates", certificates)
