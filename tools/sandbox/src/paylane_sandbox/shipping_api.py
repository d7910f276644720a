"""WeChat's shipping service and ``stable_token`` (:mod:`paylane_sandbox.shipping` says how
they behave), and their control calls."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from aiohttp import web

from .app_keys import SANDBOX
from .errors import ApiError
from .ledger import PAID_STATES, Order
from .sandbox import Sandbox
from .shipping import Reminder, ShippingFault, error, reminder_message


def _json(data: dict[str, Any]) -> web.Response:
    return web.json_response(data, dumps=lambda d: json.dumps(d, ensure_ascii=False))


async def _object(request: web.Request) -> dict[str, Any] | None:
    try:
        body = json.loads(await request.read() or b"null")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _paid(sandbox: Sandbox, key: dict[str, Any]) -> Order | None:
    """The paid order ``key`` names (an ``order_key``, or get_order's body)."""
    try:
        if key.get("transaction_id"):
            order = sandbox.ledger.order_by_transaction(str(key["transaction_id"]))
        else:
            order = sandbox.ledger.order(
                str(key.get("out_trade_no") or key.get("merchant_trade_no") or "")
            )
            mchid = key.get("mchid") or key.get("merchant_id")
            if mchid and mchid != sandbox.mchid:
                return None
    except ApiError:
        return None
    return order if order.trade_state in PAID_STATES else None


async def stable_token(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    body = await _object(request)
    if body is None:
        return _json(error(47001, "data format error"))
    secret = sandbox.settings.sandbox_app_secret
    expected = secret.get_secret_value() if secret is not None else None
    return _json(sandbox.shipping.stable_token(body, sandbox.ledger.allowed_appids, expected))


def _token_refused(request: web.Request) -> web.Response | None:
    if not request.app[SANDBOX].shipping.valid(request.query.get("access_token")):
        return _json(error(40001, "invalid credential, access_token is invalid or not latest"))
    return None


async def upload_shipping_info(request: web.Request) -> web.Response:
    refused = _token_refused(request)
    if refused is not None:
        return refused
    sandbox = request.app[SANDBOX]
    body = await _object(request)
    if body is None:
        return _json(error(47001, "data format error"))
    return _json(sandbox.shipping.upload(body, lambda key: _paid(sandbox, key)))


async def get_order(request: web.Request) -> web.Response:
    refused = _token_refused(request)
    if refused is not None:
        return refused
    sandbox = request.app[SANDBOX]
    body = await _object(request)
    if body is None:
        return _json(error(47001, "data format error"))
    injected = sandbox.shipping.fault("get_order")
    if injected is not None:
        return _json(injected)
    return _json(sandbox.shipping.get_order(_paid(sandbox, body)))


async def is_trade_managed(request: web.Request) -> web.Response:
    refused = _token_refused(request)
    if refused is not None:
        return refused
    return _json({"errcode": 0, "errmsg": "ok", "is_trade_managed": True})


# --- control ----------------------------------------------------------------------------


async def show(request: web.Request) -> web.Response:
    """Tokens asked for and issued, the uploads WeChat kept, every upload call answered,
    the faults still armed."""
    return _json(request.app[SANDBOX].shipping.to_json())


async def add_fault(request: web.Request) -> web.Response:
    fault = ShippingFault.model_validate_json((await request.read()) or b"{}")
    request.app[SANDBOX].shipping.faults.append(fault)
    return web.json_response(fault.model_dump(), status=201)


async def revoke_tokens(request: web.Request) -> web.Response:
    """Every access token stops working (40001), as when another caller forced a new one."""
    return web.json_response({"revoked": request.app[SANDBOX].shipping.revoke_tokens()})


async def remind(request: web.Request) -> web.Response:
    """Send ``trade_manage_remind_shipping`` for a paid order to the message push URL."""
    sandbox = request.app[SANDBOX]
    body = Reminder.model_validate_json((await request.read()) or b"{}")
    url = body.url or sandbox.settings.sandbox_shipping_message_url
    if not url:
        raise web.HTTPBadRequest(reason="no url given and SANDBOX_SHIPPING_MESSAGE_URL is unset")
    order = _paid(sandbox, {"transaction_id": body.transaction_id})
    if order is None:
        raise web.HTTPNotFound(reason=f"no paid order with transaction {body.transaction_id}")
    appid = str(order.request.get("appid") or "")
    message = reminder_message(order, appid, sandbox.clock())
    timeout = aiohttp.ClientTimeout(total=sandbox.settings.sandbox_notify_timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(url, json=message) as response,
        ):
            status, answer = response.status, (await response.text())[:500]
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web.json_response({"sent": message, "error": type(exc).__name__}, status=502)
    return web.json_response({"sent": message, "status": status, "answer": answer})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/cgi-bin/stable_token", stable_token)
    r.add_post("/wxa/sec/order/upload_shipping_info", upload_shipping_info)
    r.add_post("/wxa/sec/order/get_order", get_order)
    r.add_post("/wxa/sec/order/is_trade_managed", is_trade_managed)
    r.add_get("/sandbox/shipping", show)
    r.add_post("/sandbox/shipping/faults", add_fault)
    r.add_post("/sandbox/shipping/tokens/revoke", revoke_tokens)
    r.add_post("/sandbox/shipping/remind", remind)
