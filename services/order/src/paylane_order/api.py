"""Order HTTP API (DESIGN §4). JSON; errors ``{"error": CODE, "message": …}``."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from paylane_common.catalog import Package
from paylane_common.events import validation_summary
from paylane_common.tokens import issue_client_token

from .auth import Caller, identify, internal_secret_ok
from .client_address import client_ip
from .errors import InvalidRequest, NotFound, Unauthorized
from .orders import NewOrder, Orders

ORDERS = web.AppKey("orders", Orders)
API_CONFIG = web.AppKey("api_config", "ApiConfig")


class ApiConfig(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    catalog: dict[str, Package]
    internal_secret: str
    token_secret: str


class CreateOrder(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: int | None = Field(default=None, gt=0)
    package_type: str = Field(min_length=1, max_length=32)
    trade_type: Literal["JSAPI", "NATIVE", "H5"]
    openid: str | None = Field(default=None, min_length=1, max_length=128)
    generation_id: str | None = Field(default=None, max_length=64)
    client_ip: str | None = Field(default=None, max_length=45)


class CreateRefund(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: int | None = Field(default=None, gt=0)
    reason: str = Field(min_length=1, max_length=80)


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        raw = await request.read()
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise InvalidRequest(validation_summary(exc)) from None


def _json(data: Any, status: int = 200) -> web.Response:
    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat() + "Z" if value.tzinfo is None else value.isoformat()
        if isinstance(value, Decimal):
            return float(value)
        raise TypeError(type(value).__name__)

    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=default))


async def create_order(request: web.Request) -> web.Response:
    config = request.app[API_CONFIG]
    body: CreateOrder = await _body(request, CreateOrder)
    package = config.catalog.get(body.package_type)
    if package is None:
        raise InvalidRequest(
            f"unknown package_type {body.package_type!r}; one of {sorted(config.catalog)}",
            "unknown_package",
        )
    orders = request.app[ORDERS]
    order, created = await orders.create(
        NewOrder(
            user_id=body.user_id,
            package=package,
            trade_type=body.trade_type,
            openid=body.openid,
            generation_id=body.generation_id,
            client_ip=body.client_ip or (client_ip(request) if body.trade_type == "H5" else None),
            idempotency_key=request.headers.get("Idempotency-Key") or None,
        )
    )
    token = issue_client_token(config.token_secret, order["user_id"], order["out_trade_no"])
    return _json(
        {
            "out_trade_no": order["out_trade_no"],
            "user_id": order["user_id"],
            "amount_total": order["amount_total"],
            "status": order["status"],
            "client_token": token,
            "pay": orders.pay_params(order),
        },
        status=201 if created else 200,
    )


def _view(order: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "out_trade_no",
        "user_id",
        "package_type",
        "trade_type",
        "amount",
        "amount_total",
        "amount_refunded",
        "status",
        "transaction_id",
        "paid_at",
        "closed_at",
        "refunded_at",
        "expires_at",
        "created_at",
        "payment_status",
        "regenerate_count",
        "refunds",
    )
    view = {k: order.get(k) for k in keys}
    view["review_reason"] = (
        order.get("review_reason") if order["status"] == "needs_review" else None
    )
    return view


def _caller(request: web.Request) -> Caller | None:
    config = request.app[API_CONFIG]
    return identify(
        request, internal_secret=config.internal_secret, token_secret=config.token_secret
    )


async def _owned_order(request: web.Request) -> dict[str, Any]:
    """The order if the caller may see it; 404 for anyone else (no existence leak)."""
    out_trade_no = request.match_info["out_trade_no"]
    caller = _caller(request)
    order = await request.app[ORDERS].get(out_trade_no) if caller else None
    if (
        order is None
        or caller is None
        or (not caller.internal and caller.user_id != order["user_id"])
    ):
        raise NotFound(f"order {out_trade_no} not found")
    return order


async def get_order(request: web.Request) -> web.Response:
    return _json(_view(await _owned_order(request)))


async def close_order(request: web.Request) -> web.Response:
    order = await _owned_order(request)
    return _json(_view(await request.app[ORDERS].close(order["out_trade_no"])))


async def create_refund(request: web.Request) -> web.Response:
    if not internal_secret_ok(request, request.app[API_CONFIG].internal_secret):
        raise Unauthorized("refunds need X-Internal-Secret")
    body: CreateRefund = await _body(request, CreateRefund)
    result = await request.app[ORDERS].refund(
        request.match_info["out_trade_no"], body.amount, body.reason
    )
    return _json(result, status=202)


async def prices(request: web.Request) -> web.Response:
    catalog = request.app[API_CONFIG].catalog
    return _json(
        {
            "currency": "CNY",
            "packages": {name: float(p.price_yuan) for name, p in catalog.items()},
            "grants": {
                name: {"payment_status": p.payment_status, "regenerate_count": p.regenerate_grant}
                for name, p in catalog.items()
            },
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/orders", create_order)
    app.router.add_get("/orders/{out_trade_no}", get_order)
    app.router.add_post("/orders/{out_trade_no}/close", close_order)
    app.router.add_post("/orders/{out_trade_no}/refunds", create_refund)
    app.router.add_get("/prices/current", prices)
