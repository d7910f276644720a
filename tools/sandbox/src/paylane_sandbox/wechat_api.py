"""The WeChat Pay APIv3 endpoints (``/v3/...``): merchant-authenticated, signed answers."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime

from aiohttp import web

from paylane_common.contract.china_time import CHINA

from . import bills, resources
from .app_keys import SANDBOX
from .errors import ApiError, json_response, param_error
from .metrics import API_REQUESTS
from .validation import (
    check_abnormal_refund,
    check_place_order,
    check_refund,
    parse_json_object,
)

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
    response.headers["Request-ID"] = uuid.uuid4().hex.upper()
    if request.path == DOWNLOAD and response.status == 200:
        return response  # a bill file: WeChat Pay does not sign it (its digest vouches)
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
    now = sandbox.clock()
    check_place_order(kind, body, now)
    order = sandbox.ledger.place(kind, body, now)
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


async def apply_abnormal_refund(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    body = parse_json_object(await request.read())
    check_abnormal_refund(body)
    refund = sandbox.apply_abnormal_refund(
        request.match_info["refund_id"], body, request.headers.get("Wechatpay-Serial")
    )
    return json_response(resources.refund(refund))


async def certificates(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    return json_response(sandbox.signer.certificates_listing(sandbox.apiv3_key))


DOWNLOAD = "/v3/billdownload/file"
#: Bill files kept for download at most (a long-running sandbox applies for many).
KEPT_BILL_FILES = 100


def _bill_date(request: web.Request) -> date:
    text = request.query.get("bill_date", "")
    try:
        day = datetime.strptime(text, "%Y-%m-%d").date()
    except ValueError:
        raise param_error("bill_date", "格式为yyyy-MM-DD (format)", location="query") from None
    if day > datetime.fromtimestamp(request.app[SANDBOX].clock(), CHINA).date():
        raise ApiError(400, "INVALID_REQUEST", "账单日期不能晚于今天 (bill_date in the future)")
    return day


def _check_choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str:
    value = request.query.get(name, allowed[0])
    if value not in allowed:
        raise param_error(name, f"取值为{'/'.join(allowed)} (one of)", location="query")
    return value


def _offer(request: web.Request, bill: bills.BillFile | None) -> web.Response:
    """``{hash_type, hash_value, download_url}`` for a bill, kept for its download."""
    if bill is None:
        raise ApiError(400, "NO_STATEMENT_EXIST", "账单文件不存在 (nothing happened that day)")
    tar_type = request.query.get("tar_type")
    if tar_type not in (None, "GZIP"):
        raise param_error("tar_type", "取值为GZIP (GZIP or absent)", location="query")
    gzipped = tar_type == "GZIP"
    token = secrets.token_urlsafe(24)
    files = request.app[SANDBOX].bill_files
    files[token] = bill.gzipped if gzipped else bill.text.encode()
    while len(files) > KEPT_BILL_FILES:  # WeChat's download URLs expire; the oldest go
        del files[next(iter(files))]
    return json_response(
        {
            "hash_type": "SHA1",
            "hash_value": bill.sha1,
            "download_url": f"{request.scheme}://{request.host}{DOWNLOAD}?token={token}",
        }
    )


async def trade_bill(request: web.Request) -> web.Response:
    day = _bill_date(request)
    _check_choice(request, "bill_type", ("ALL",))
    return _offer(request, bills.trade_bill(request.app[SANDBOX].ledger, day))


async def fund_flow_bill(request: web.Request) -> web.Response:
    day = _bill_date(request)
    _check_choice(request, "account_type", ("BASIC",))
    return _offer(request, bills.fund_flow_bill(request.app[SANDBOX].ledger, day))


async def download_bill(request: web.Request) -> web.Response:
    data = request.app[SANDBOX].bill_files.get(request.query.get("token", ""))
    if data is None:
        raise ApiError(400, "INVALID_REQUEST", "下载地址无效或已过期 (unknown token)")
    return web.Response(body=data, content_type="application/octet-stream")


def add_routes(app: web.Application) -> None:
    app.middlewares.append(wechat_api)
    router = app.router
    router.add_post("/v3/pay/transactions/{kind:jsapi|native|h5|app}", place_order)
    router.add_get("/v3/pay/transactions/out-trade-no/{out_trade_no}", query_by_out_trade_no)
    router.add_get("/v3/pay/transactions/id/{transaction_id}", query_by_transaction_id)
    router.add_post("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", close_order)
    router.add_post("/v3/refund/domestic/refunds", create_refund)
    router.add_get("/v3/refund/domestic/refunds/{out_refund_no}", query_refund)
    router.add_post(
        "/v3/refund/domestic/refunds/{refund_id}/apply-abnormal-refund", apply_abnormal_refund
    )
    router.add_get("/v3/certificates", certificates)
    router.add_get("/v3/bill/tradebill", trade_bill)
    router.add_get("/v3/bill/fundflowbill", fund_flow_bill)
    router.add_get(DOWNLOAD, download_bill)
