"""The control API (``/sandbox/...``): play the payer, steer notifications, inject faults.

No authentication (a local test tool). Errors are ``{"error": CODE, "message": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import resources
from .app_keys import SANDBOX
from .errors import ApiError, ControlError, json_response
from .faults import FaultSpec
from .ledger import Order, Refund
from .sandbox import Sandbox
from .timefmt import rfc3339
from .validation import check_notify_url

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount: int | None = Field(None, gt=0)
    openid: str | None = Field(None, min_length=1)
    force: bool = False
    notify: bool = True


class CompleteRefundBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["SUCCESS", "ABNORMAL", "CLOSED"] = "SUCCESS"


class SigntestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    out_trade_no: str | None = None


@web.middleware
async def control_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/sandbox/"):
        return await handler(request)
    try:
        return await handler(request)
    except ControlError as exc:
        return exc.response()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()
        )
        return ControlError(400, "BAD_REQUEST", problems).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status, "BAD_REQUEST")
        return ControlError(exc.status, code, exc.reason).response()


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise ControlError(400, "BAD_REQUEST", "body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ControlError(400, "BAD_REQUEST", "body must be a JSON object")
    return obj


def order_state(sandbox: Sandbox, order: Order) -> dict[str, Any]:
    now = sandbox.clock()
    return {
        "out_trade_no": order.out_trade_no,
        "trade_type": order.trade_type,
        "trade_state": order.trade_state,
        "amount_total": order.total,
        "paid_total": order.paid_total,
        "transaction_id": order.transaction_id,
        "transaction_ids": order.transaction_ids,
        "openid": order.paid_openid,
        "notify_url": order.notify_url,
        "time_expire": rfc3339(order.time_expire) if order.time_expire is not None else None,
        "expired": order.expired(now),
        "create_time": rfc3339(order.created_at),
        "prepay": order.prepay,
        "request": order.request,
        "refunds": [
            r.out_refund_no
            for r in sandbox.ledger.refunds.values()
            if r.out_trade_no == order.out_trade_no
        ],
        "transaction": resources.transaction(order, sandbox.mchid),
    }


def refund_state(refund: Refund) -> dict[str, Any]:
    remedy = refund.abnormal_refund
    return {
        **resources.refund(refund),
        "notify_url": refund.notify_url,
        "request": refund.request,
        # As decrypted by the sandbox (test data, never a real payee's).
        "abnormal_refund": None if remedy is None else asdict(remedy),
    }


async def get_order(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    order = sandbox.ledger.control_order(request.match_info["out_trade_no"])
    return json_response(order_state(sandbox, order))


async def list_orders(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    return json_response(
        {"orders": [order_state(sandbox, o) for o in sandbox.ledger.orders.values()]}
    )


async def pay_order(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    body = PayBody.model_validate(await _body(request))
    order, note = sandbox.pay(
        request.match_info["out_trade_no"],
        amount=body.amount,
        openid=body.openid,
        force=body.force,
        notify=body.notify,
    )
    return json_response(
        {
            "transaction_id": order.transaction_id,
            "trade_state": order.trade_state,
            "amount": order.paid_total,
            "notification_id": note.id if note is not None else None,
        }
    )


async def fail_order(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    order = sandbox.ledger.fail(request.match_info["out_trade_no"])
    return json_response(order_state(sandbox, order))


async def expire_order(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    order = sandbox.ledger.expire(request.match_info["out_trade_no"], sandbox.clock())
    return json_response(order_state(sandbox, order))


async def list_refunds(request: web.Request) -> web.Response:
    refunds = request.app[SANDBOX].ledger.refunds.values()
    return json_response({"refunds": [refund_state(r) for r in refunds]})


async def get_refund(request: web.Request) -> web.Response:
    refund = request.app[SANDBOX].ledger.control_refund(request.match_info["out_refund_no"])
    return json_response(refund_state(refund))


async def complete_refund(request: web.Request) -> web.Response:
    body = CompleteRefundBody.model_validate(await _body(request))
    refund = request.app[SANDBOX].complete_refund(request.match_info["out_refund_no"], body.status)
    return json_response(refund_state(refund))


async def get_switches(request: web.Request) -> web.Response:
    return json_response(request.app[SANDBOX].switches.current.model_dump())


async def put_switches(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    switches = sandbox.switches.update(await _body(request))
    if not switches.reorder and sandbox.notification_sender.held:
        sandbox.notification_sender.flush()  # turning reorder off lets what it held go
    return json_response(switches.model_dump())


async def list_notifications(request: web.Request) -> web.Response:
    records = request.app[SANDBOX].notification_sender.records
    for key in ("out_trade_no", "out_refund_no", "event_type"):
        if key in request.query:
            records = [n for n in records if getattr(n, key) == request.query[key]]
    return json_response({"notifications": [n.to_json() for n in records]})


async def flush_notifications(request: web.Request) -> web.Response:
    return json_response({"released": request.app[SANDBOX].notification_sender.flush()})


async def signtest(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    body = SigntestBody.model_validate(await _body(request))
    order = sandbox.ledger.control_order(body.out_trade_no) if body.out_trade_no else None
    url = body.url or (order.notify_url if order is not None else None)
    if not url:
        raise ControlError(400, "BAD_REQUEST", "give url or the out_trade_no of an order")
    try:
        check_notify_url(url, "url")
    except ApiError:
        raise ControlError(400, "BAD_REQUEST", "url must be http(s) without a query") from None
    resource = (
        resources.transaction(order, sandbox.mchid)
        if order is not None
        else {"mchid": sandbox.mchid, "out_trade_no": "SIGNTEST", "trade_state": "SUCCESS"}
    )
    note = await sandbox.notification_sender.signtest(
        "TRANSACTION.SUCCESS", "transaction", resource, url, out_trade_no=body.out_trade_no
    )
    attempt = note.attempts[0]
    return json_response(
        {"notification_id": note.id, "url": url, "status": attempt.status, "error": attempt.error}
    )


async def list_faults(request: web.Request) -> web.Response:
    return json_response({"faults": [f.to_json() for f in request.app[SANDBOX].faults.list()]})


async def add_fault(request: web.Request) -> web.Response:
    fault = request.app[SANDBOX].faults.add(FaultSpec.model_validate(await _body(request)))
    return json_response(fault.to_json(), status=201)


async def clear_faults(request: web.Request) -> web.Response:
    request.app[SANDBOX].faults.clear()
    return web.Response(status=204)


async def reset(request: web.Request) -> web.Response:
    request.app[SANDBOX].reset()
    return web.Response(status=204)


async def info(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    return json_response(
        {
            "mchid": sandbox.mchid,
            "merchant_serial_no": sandbox.authenticator.serial_no,
            "appids": sorted(sandbox.ledger.allowed_appids),
            "public_key_id": sandbox.signer.public_key_id,
            "certificate_serial": sandbox.signer.certificate_serial,
            "sign_mode": sandbox.switches.current.sign_mode,
            "refund_mode": sandbox.switches.current.refund_mode,
            "refund_notify_url": sandbox.settings.sandbox_refund_notify_url,
            "time_factor": sandbox.notification_sender.time_factor,
        }
    )


async def platform_certificate(request: web.Request) -> web.Response:
    pem = request.app[SANDBOX].signer.certificate_pem
    return web.Response(text=pem, content_type="application/x-pem-file")


async def platform_public_key(request: web.Request) -> web.Response:
    pem = request.app[SANDBOX].signer.public_key_pem
    return web.Response(text=pem, content_type="application/x-pem-file")


def add_routes(app: web.Application) -> None:
    app.middlewares.append(control_errors)
    r = app.router
    r.add_get("/sandbox/info", info)
    r.add_get("/sandbox/platform-certificate", platform_certificate)
    r.add_get("/sandbox/platform-public-key", platform_public_key)
    r.add_get("/sandbox/orders", list_orders)
    r.add_get("/sandbox/orders/{out_trade_no}", get_order)
    r.add_post("/sandbox/orders/{out_trade_no}/pay", pay_order)
    r.add_post("/sandbox/orders/{out_trade_no}/fail", fail_order)
    r.add_post("/sandbox/orders/{out_trade_no}/expire", expire_order)
    r.add_get("/sandbox/refunds", list_refunds)
    r.add_get("/sandbox/refunds/{out_refund_no}", get_refund)
    r.add_post("/sandbox/refunds/{out_refund_no}/complete", complete_refund)
    r.add_get("/sandbox/switches", get_switches)
    r.add_put("/sandbox/switches", put_switches)
    r.add_get("/sandbox/notifications", list_notifications)
    r.add_post("/sandbox/notifications/flush", flush_notifications)
    r.add_post("/sandbox/notifications/signtest", signtest)
    r.add_get("/sandbox/faults", list_faults)
    r.add_post("/sandbox/faults", add_fault)
    r.add_delete("/sandbox/faults", clear_faults)
    r.add_post("/sandbox/reset", reset)
