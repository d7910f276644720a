"""Order HTTP API (docs/order-api.md). JSON; errors ``{"error": CODE, "message": …}``."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from importlib import metadata
from typing import Annotated, Any, Literal

import structlog
from aiohttp import web
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from paylane_common.contract.events import validation_summary
from paylane_common.contract.ids import GENERATION_ID_PATTERN
from paylane_common.contract.money import yuan_text
from paylane_common.contract.prices import answer_text
from paylane_common.storage.rows import OrderRow
from paylane_common.web.auth import INTERNAL_SECRET_HEADER
from paylane_common.web.openapi import (
    PUBLIC,
    Api,
    Handler,
    Operation,
    Param,
    Reply,
    body_model,
    validate_json,
)

from . import order_list, replies
from .abnormal import AbnormalRefunds, Remedy
from .auth import OPENID_HEADER, Caller, identify
from .business import (
    ATTACH_MAX,
    DESCRIPTION_MAX_BYTES,
    EXTERNAL_ID_PATTERN,
    MAX_TOTAL_FEN,
    OUT_TRADE_NO_PATTERN,
    BusinessTerms,
    business_package,
    is_business,
)
from .client_address import client_ip
from .config import ORDER_CONFIG
from .errors import Forbidden, InvalidRequest, NotFound, TooManyRequests, Unauthorized
from .ids import keyed_out_refund_no
from .miniprogram import MiniProgramLogin
from .order_list import Key, ListQuery, OrderFilters, OrderList, parse_query
from .orders import NewOrder, OrderDetail, Orders
from .rate_limits import RateLimit
from .sessions import Sessions
from .settings import PREPAY_ID_TTL_S
from .status_query import StatusQuery
from .webhooks import routes as webhooks

log = structlog.get_logger(__name__)

ORDERS = web.AppKey("orders", Orders)
ABNORMAL_REFUNDS = web.AppKey("abnormal_refunds", AbnormalRefunds)
ORDER_LIST = web.AppKey("order_list", OrderList)
LOGIN = web.AppKey("miniprogram_login", MiniProgramLogin)
SESSIONS = web.AppKey("sessions", Sessions)
STATUS_QUERY = web.AppKey("status_query", StatusQuery)
#: Sign-ins a client address, orders a user may make a minute (``LOGIN_RATE_PER_MIN``,
#: ``ORDER_RATE_PER_MIN``); an app without them has no limit.
LOGIN_RATE = web.AppKey("login_rate", RateLimit)
ORDER_RATE = web.AppKey("order_rate", RateLimit)


#: A row id of the shared ``users`` table: a string such as ``user-1706345678901-xyz789``
#: (VARCHAR(36)); a number is refused, not converted.
UserIdField = Annotated[StrictStr, Field(min_length=1, max_length=36)]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: UserIdField


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(min_length=1, max_length=128)


#: The longest ``remark`` (``payment_orders.remark`` is a TEXT: 65,535 bytes).
REMARK_MAX = 1000


def _description_bytes(value: str | None) -> str | None:
    if value is not None and len(value.encode()) > DESCRIPTION_MAX_BYTES:
        raise ValueError(
            f"is {len(value.encode())} bytes of UTF-8; WeChat Pay takes at most"
            f" {DESCRIPTION_MAX_BYTES}"
        )
    return value


#: The business fields of ``POST /orders``: for the backend only.
BUSINESS_FIELDS = (
    "amount_fen",
    "description",
    "external_id",
    "attach",
    "expires_in_s",
    "out_trade_no",
)


class CreateOrder(BaseModel):
    """A catalog package (``package_type``), or, for the backend only, a business order
    (``amount_fen`` and ``description``, business.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: UserIdField | None = None
    #: A package of the catalog (``PACKAGE_CATALOG``).
    package_type: str | None = Field(
        default=None, min_length=1, max_length=32, examples=["basic", "premium"]
    )
    trade_type: Literal["JSAPI", "NATIVE", "H5", "APP"]
    #: A business order's amount (fen): any, up to WeChat Pay's largest ``amount.total``.
    amount_fen: StrictInt | None = Field(default=None, gt=0, le=MAX_TOTAL_FEN)
    #: What the payer sees at WeChat Pay (its ``description``): at most 127 bytes of UTF-8.
    description: Annotated[str, AfterValidator(_description_bytes)] | None = Field(
        default=None, min_length=1
    )
    #: The backend's own id of the order: a second POST with it answers the same order.
    external_id: str | None = Field(default=None, pattern=EXTERNAL_ID_PATTERN)
    #: Handed to WeChat Pay as ``attach`` (it comes back with the payment).
    attach: str | None = Field(default=None, min_length=1, max_length=ATTACH_MAX)
    #: How long the order stays payable (else ``ORDER_TTL_S``); a prepay answer lives 2 h.
    expires_in_s: StrictInt | None = Field(default=None, ge=60, le=PREPAY_ID_TTL_S)
    #: The caller's own order number (WeChat Pay's rules: 6-32 of ``[0-9A-Za-z_-|*]``).
    out_trade_no: str | None = Field(default=None, pattern=OUT_TRADE_NO_PATTERN)
    #: ``users.openid`` and ``payment_orders._openid`` are VARCHAR(100).
    openid: str | None = Field(default=None, min_length=1, max_length=100)
    #: ``payment_orders.generation_id`` (``GENERATION_ID_PATTERN``: it becomes WeChat
    #: Pay's ``attach``); '' is taken as none, and stored as '' as when none is given.
    generation_id: Literal[""] | Annotated[str, Field(pattern=GENERATION_ID_PATTERN)] | None = None
    client_ip: str | None = Field(default=None, max_length=45)

    @field_validator("generation_id", mode="before")
    @classmethod
    def _blank_generation(cls, value: Any) -> Any:
        return None if value == "" else value

    @property
    def business(self) -> bool:
        return any(getattr(self, name) is not None for name in BUSINESS_FIELDS)

    @model_validator(mode="after")
    def _one_kind(self) -> CreateOrder:
        if self.business:
            if self.package_type is not None:
                raise ValueError("package_type or amount_fen and description, not both")
            missing = [n for n in ("amount_fen", "description") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"a business order needs {' and '.join(missing)}")
            if self.generation_id is not None:
                raise ValueError("generation_id: a business order unlocks no generation")
        elif self.package_type is None:
            raise ValueError("package_type (or, for the backend, amount_fen and description)")
        return self


class CreateRefund(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: int | None = Field(default=None, gt=0)
    reason: str = Field(min_length=1, max_length=80)
    #: The caller's own refund number (WeChat Pay's alphabet): a retry is the same refund.
    out_refund_no: str | None = Field(default=None, pattern=r"^[0-9A-Za-z_\-|*@]{1,64}$")


class UpdateOrder(BaseModel):
    """What the backend may change on an order: its note (``payment_orders.remark``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ``""`` clears it.
    remark: str = Field(max_length=REMARK_MAX)


class ReportFulfilment(BaseModel):
    """A paid business order's effect, as the backend reports it (fulfilment.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["success", "failed"]
    #: The backend's word on it (``payment_orders.fulfilment_detail``, VARCHAR(255)).
    detail: str | None = Field(default=None, min_length=1, max_length=255)
    #: With ``failed``: refund all that is still refundable, in the same call.
    refund: bool = False

    @model_validator(mode="after")
    def _refund_if_failed(self) -> ReportFulfilment:
        if self.refund and self.status != "failed":
            raise ValueError("refund: only a failed fulfilment is refunded")
        return self


class ApplyAbnormalRefund(BaseModel):
    """Where an ABNORMAL refund's money goes instead (WeChat Pay's ``type``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["USER_BANK_CARD", "MERCHANT_BANK_CARD"]
    bank_type: str | None = Field(default=None, min_length=1, max_length=32)
    #: Encrypted for WeChat Pay (one RSA-OAEP block), never stored.
    bank_account: str | None = Field(default=None, min_length=1, max_length=64)
    real_name: str | None = Field(default=None, min_length=1, max_length=64)


#: ``payment_orders.idempotency_key`` is VARCHAR(128).
IDEMPOTENCY_KEY_MAX = 128


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > IDEMPOTENCY_KEY_MAX:
        raise InvalidRequest(f"Idempotency-Key is longer than {IDEMPOTENCY_KEY_MAX} characters")
    return key


async def _body(request: web.Request) -> Any:
    """The body, validated with the model ``ORDER_API`` names for the route."""
    model = body_model(request)
    try:
        raw = await request.read()
        return validate_json(model, raw or b"{}")
    except ValidationError as exc:
        raise InvalidRequest(validation_summary(exc)) from None


def _reply(answer: BaseModel, status: int = 200) -> web.Response:
    """``answer`` (a model of :mod:`.replies`) as the JSON of :func:`_json`."""
    return _json(answer.model_dump(), status)


def _json(data: Any, status: int = 200) -> web.Response:
    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat() + "Z" if value.tzinfo is None else value.isoformat()
        if isinstance(value, Decimal):  # yuan: a string such as "29.90", never a float
            return str(value)
        raise TypeError(type(value).__name__)

    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=default))


def _limit(request: web.Request, key: web.AppKey[RateLimit], who: str, what: str) -> None:
    """429 with ``Retry-After`` when ``who`` spent the app's ``key`` limit."""
    limit = request.app.get(key)
    if limit is None:
        return
    wait = limit.hit(who)
    if wait is not None:
        raise TooManyRequests(
            f"too many {what} (at most {limit.per_minute} a minute); retry in {wait} s",
            retry_after=wait,
        )


async def login(request: web.Request) -> web.Response:
    """``POST /auth/miniprogram {code}``: the code of ``wx.login()`` → a session token of
    the user whose openid WeChat names (created if new). Each client address has
    ``LOGIN_RATE_PER_MIN``: past it WeChat is not asked."""
    config = request.app[ORDER_CONFIG]
    body: Login = await _body(request)  # a body refused costs WeChat nothing
    address = client_ip(request, config.trusted_proxies) or "unknown"
    _limit(request, LOGIN_RATE, address, "sign-ins from this address")
    identity = await request.app[LOGIN].identify(body.code)
    user_id = await request.app[ORDERS].sign_in(identity.openid)
    structlog.contextvars.bind_contextvars(user_id=user_id)
    return await _session_token(request, user_id)


async def _session_token(request: web.Request, user_id: str) -> web.Response:
    sessions = request.app[SESSIONS]
    issued = await sessions.issue(user_id)
    return _reply(
        replies.Token(
            token=issued.token, token_type="Bearer", expires_in=sessions.ttl_s, user_id=user_id
        )
    )


async def user_token(request: web.Request) -> web.Response:
    """``POST /auth/token {user_id}`` (the backend only): a fresh token for a user's client,
    e.g. when its stream closed because the last one expired."""
    body: TokenRequest = await _body(request)
    if not await request.app[ORDERS].user_exists(body.user_id):
        raise NotFound(f"user {body.user_id} does not exist", "unknown_user")
    return await _session_token(request, body.user_id)


async def stream_ticket(request: web.Request) -> web.Response:
    """``POST /stream-tickets`` (a user's session): a short-lived ticket for the notifier's
    ``/ws`` or ``/events``, asked for before each (re)connect."""
    session = _caller(request).session
    assert session is not None  # USER only: the backend was refused (security_middleware)
    ticket, ttl_s = request.app[SESSIONS].stream_ticket(session)
    return _reply(replies.StreamTicket(ticket=ticket, expires_in=ttl_s, user_id=session.user_id))


async def revoke_sessions(request: web.Request) -> web.Response:
    """``POST /users/{user_id}/sessions/revoke`` (the backend only): every token issued
    to the user so far is refused from now on (sign out everywhere, a stolen token)."""
    user_id = request.match_info["user_id"]
    if not await request.app[ORDERS].user_exists(user_id):
        raise NotFound(f"user {user_id} does not exist", "unknown_user")
    version = await request.app[SESSIONS].revoke(user_id)
    log.info("sessions_revoked", user_id=user_id, version=version)
    return _reply(replies.SessionsRevoked(user_id=user_id, version=version))


def _payer_ip(request: web.Request, caller: Caller, body: CreateOrder) -> str | None:
    """H5 orders need the payer's IP: the backend says what it saw; a user calling us
    directly is the payer, so their address (through trusted proxies) is used and a
    ``client_ip`` in their body is not believed."""
    if caller.backend and body.client_ip:
        return body.client_ip
    trusted = request.app[ORDER_CONFIG].trusted_proxies
    return client_ip(request, trusted) if body.trade_type == "H5" else None


async def create_order(request: web.Request) -> web.Response:
    config = request.app[ORDER_CONFIG]
    caller = _caller(request)
    body: CreateOrder = await _body(request)
    # Per user: the token's, or the one the backend names (by id, else by openid).
    named = body.user_id or (f"openid:{body.openid}" if body.openid else None)
    user = caller.user_id if not caller.backend else named
    if user:
        _limit(request, ORDER_RATE, user, "orders for this user")
    terms = None
    if body.business:
        if not caller.backend:
            given = [n for n in BUSINESS_FIELDS if getattr(body, n) is not None]
            raise Forbidden(
                f"{', '.join(given)}: business orders are for the app backend only; a user"
                " buys a package (package_type)"
            )
        assert body.amount_fen is not None and body.description is not None  # _one_kind
        package = business_package(body.description, body.amount_fen)
        terms = BusinessTerms(
            description=body.description,
            external_id=body.external_id,
            attach=body.attach,
            out_trade_no=body.out_trade_no,
            expires_in_s=body.expires_in_s,
        )
    else:
        assert body.package_type is not None  # _one_kind
        found = config.catalog.get(body.package_type)
        if found is None:
            raise InvalidRequest(
                f"unknown package_type {body.package_type!r}; one of {sorted(config.catalog)}",
                "unknown_package",
            )
        package = found
    orders = request.app[ORDERS]
    order, created = await orders.create(
        NewOrder(
            user_id=body.user_id,
            acting_user=None if caller.backend else caller.user_id,
            package=package,
            trade_type=body.trade_type,
            openid=body.openid,
            generation_id=body.generation_id,
            client_ip=_payer_ip(request, caller, body),
            idempotency_key=_idempotency_key(request),
            business=terms,
        )
    )
    return await _placed(request, order, replies.PlacedOrder, 201 if created else 200)


async def pay_order(request: web.Request) -> web.Response:
    """``POST /orders/{out_trade_no}/pay`` (owner or backend): fresh pay parameters for a
    pending order, e.g. after the payer cancelled the payment sheet (:meth:`Orders.pay_again`)."""
    order = await _owned_order(request)
    config = request.app[ORDER_CONFIG]
    payer = client_ip(request, config.trusted_proxies) if order["trade_type"] == "H5" else None
    package = config.catalog.get(order["package_type"])
    placed, again = await request.app[ORDERS].pay_again(order, package, payer)
    return await _placed(request, placed, replies.PaidAgain, 200, placed_again=again)


async def _placed(
    request: web.Request,
    order: OrderRow,
    model: type[replies.PlacedOrder],
    status: int,
    **extra: Any,
) -> web.Response:
    """An order to pay: freshly signed pay parameters, a session token of its user and a
    stream ticket for its outcome."""
    sessions = request.app[SESSIONS]
    issued = await sessions.issue(order["user_id"], order["out_trade_no"])
    ticket, ticket_ttl_s = sessions.stream_ticket(issued.session)
    pay = request.app[ORDERS].pay_params(order)
    return _reply(
        model(
            out_trade_no=order["out_trade_no"],
            user_id=order["user_id"],
            amount_total=order["amount_total"],
            status=order["status"],
            client_token=issued.token,
            stream_ticket=ticket,
            stream_ticket_expires_in=ticket_ttl_s,
            pay=replies.PAY.validate_python(pay),
            **extra,
        ),
        status=status,
    )


def _view(order: OrderDetail, backend: bool = False) -> replies.OrderView:
    """The order as its view; the backend's note (``remark``) for the backend only."""
    keys = (
        "out_trade_no",
        "user_id",
        "package_type",
        "trade_type",
        "amount",
        "amount_total",
        "amount_refunded",
        "generation_id",
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
        "refund_reason",
        "description",
        "external_id",
        "attach",
        "fulfilment_status",
        "fulfilment_detail",
        "fulfilled_at",
    )
    view = {k: order.get(k) for k in keys}
    view["business"] = is_business(order)
    view["remark"] = order.get("remark") if backend else None
    view["amount"] = str(order["amount"])  # yuan: DECIMAL(10,2), "29.90"
    view["generation_id"] = order.get("generation_id") or None  # '' in the row: none
    view["amount_refunded"] = order_list.refunded_fen(order)
    view["review_reason"] = (
        order.get("review_reason") if order["status"] == "needs_review" else None
    )
    shipping = view["shipping"] = order.get("shipping")
    if shipping is not None:
        pending = shipping["state"] == "pending"
        view["shipping"] = {
            **shipping,
            "next_attempt_at": shipping["next_attempt_at"] if pending else None,
        }
    return replies.OrderView.model_validate(view)


#: The caller :func:`security_middleware` identified (a route that is not public).
CALLER = web.RequestKey("caller", Caller)


def _caller(request: web.Request) -> Caller:
    return request[CALLER]


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Each route's ``security`` (``ORDER_API``) enforced, before its handler runs: a
    public one is left alone; otherwise the caller is identified (401 when it proved
    nothing), bound to the request's log lines, and refused unless one of the route's
    schemes is its kind: a user on a backend route is 403, the backend on a user's route
    401 (the backend secret is no credential there, as on no route of another caller)."""
    try:
        operation = ORDER_API.operation(request)
    except LookupError:  # not the API's (/openapi.json, a 404, a 405)
        return await handler(request)
    if not operation.security:
        return await handler(request)
    config = request.app[ORDER_CONFIG]
    caller = await identify(
        request,
        backend_secret=config.backend_secret,
        sessions=request.app[SESSIONS],
        # X-WX-OPENID only where the platform alone can set it (CLOUDHOSTING_TRUST_HEADERS).
        platform_users=request.app[ORDERS].platform_user if config.trust_platform_headers else None,
    )
    structlog.contextvars.bind_contextvars(
        caller="backend" if caller.backend else "user", user_id=caller.user_id
    )
    if caller.backend and BACKEND not in operation.security:
        raise Unauthorized(
            f"{operation.action} are for a user's session (Authorization: Bearer); the"
            " backend gets one through POST /auth/token first"
        )
    if not caller.backend and USER not in operation.security:
        raise Forbidden(f"{operation.action} is for the app backend (X-Internal-Secret) only")
    request[CALLER] = caller
    return await handler(request)


async def _owned_order(request: web.Request) -> OrderDetail:
    """The order if the caller may see it; 404 for other users (no existence leak)."""
    out_trade_no = request.match_info["out_trade_no"]
    caller = _caller(request)
    order = await request.app[ORDERS].get(out_trade_no)
    if order is None or not caller.may_see(order):
        raise NotFound(f"order {out_trade_no} not found")
    return order


async def list_orders(request: web.Request) -> web.Response:
    """``GET /orders`` (the backend: anyone's; a user: their own), newest first, in keyset
    pages (order_list.py)."""
    query = parse_query(ListQuery, request.query)
    caller = _caller(request)
    if not caller.backend:
        if query.user_id not in (None, caller.user_id):
            raise Forbidden("a user lists only their own orders")
        query = query.model_copy(update={"user_id": caller.user_id})
    after = Key.of_cursor(query.cursor, query) if query.cursor else None
    rows = await request.app[ORDER_LIST].page(query, after, query.limit + 1)
    last = rows[query.limit - 1] if len(rows) > query.limit else None
    return _reply(
        replies.OrderPage(
            orders=[_summary(row, caller.backend) for row in rows[: query.limit]],
            next_cursor=Key(last["created_at"], last["id"]).cursor(query) if last else None,
        )
    )


def _summary(row: dict[str, Any], backend: bool) -> replies.OrderSummary:
    """A list's row; the backend's note (``remark``) for the backend only, as in
    :func:`_view`."""
    view = {k: v for k, v in row.items() if k != "id"}
    view["remark"] = row["remark"] if backend else None
    view["amount"] = yuan_text(row["amount_total"])
    view["generation_id"] = row["generation_id"] or None  # '' in the row: none
    return replies.OrderSummary.model_validate(view)


async def export_orders(request: web.Request) -> web.StreamResponse:
    """``GET /orders/export.csv`` (the backend only): the list's filters, every match,
    streamed a page at a time (never the whole result in memory)."""
    filters = parse_query(OrderFilters, request.query)
    chunks = request.app[ORDER_LIST].csv(filters)
    first = [await anext(chunks), await anext(chunks, b"")]  # a database error: still JSON
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="orders.csv"',
        }
    )
    await response.prepare(request)
    for chunk in first:
        await response.write(chunk)
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


async def get_order(request: web.Request) -> web.Response:
    """A pending order is asked about at WeChat Pay first (status_query.py)."""
    order = await _owned_order(request)
    if await request.app[STATUS_QUERY].settle(order):
        order = await _owned_order(request)
    return _reply(_view(order, _caller(request).backend))


async def update_order(request: web.Request) -> web.Response:
    """``PATCH /orders/{no} {remark}`` (the backend only): the order's note."""
    body: UpdateOrder = await _body(request)
    order = await request.app[ORDERS].set_remark(request.match_info["out_trade_no"], body.remark)
    return _reply(_view(order, backend=True))


async def close_order(request: web.Request) -> web.Response:
    order = await _owned_order(request)
    closed = await request.app[ORDERS].close(order["out_trade_no"])
    return _reply(_view(closed, _caller(request).backend))


async def report_fulfilment(request: web.Request) -> web.Response:
    """``POST /orders/{no}/fulfilment {status, detail?, refund?}`` (the backend only): a
    paid business order's effect done or not; ``refund`` with ``failed`` refunds it."""
    body: ReportFulfilment = await _body(request)
    out_trade_no = request.match_info["out_trade_no"]
    orders = request.app[ORDERS]
    reported = await orders.fulfilments.report(
        out_trade_no, body.status, body.detail, refund=body.refund
    )
    order = await orders.get(out_trade_no)
    assert order is not None  # found above; orders are never deleted
    refund = replies.RefundRequested.model_validate(reported.refund) if reported.refund else None
    return _reply(
        replies.FulfilmentRecorded(
            changed=reported.changed, order=_view(order, backend=True), refund=refund
        )
    )


async def create_refund(request: web.Request) -> web.Response:
    body: CreateRefund = await _body(request)
    out_trade_no = request.match_info["out_trade_no"]
    out_refund_no = body.out_refund_no
    key = _idempotency_key(request)
    if key is not None:
        if out_refund_no is not None:
            raise InvalidRequest("give an Idempotency-Key or an out_refund_no, not both")
        out_refund_no = keyed_out_refund_no(out_trade_no, key)
    result = await request.app[ORDERS].refunds.request(
        out_trade_no, body.amount, body.reason, out_refund_no
    )
    return _reply(replies.RefundRequested.model_validate(result), status=202)


async def abnormal_refunds(request: web.Request) -> web.Response:
    """``GET /refunds/abnormal`` (the backend only): the refunds waiting for a remedy."""
    rows = await request.app[ABNORMAL_REFUNDS].list()
    return _reply(
        replies.AbnormalRefunds(
            refunds=[replies.AbnormalRefund.model_validate(row) for row in rows]
        )
    )


async def apply_abnormal_refund(request: web.Request) -> web.Response:
    """``POST /refunds/{out_refund_no}/apply-abnormal-refund`` (the backend only): send an
    ABNORMAL refund to a bank card; answers the refund row with the remedy's outcome."""
    body: ApplyAbnormalRefund = await _body(request)
    remedy = Remedy(body.type, body.bank_type, body.bank_account, body.real_name)
    refunds = request.app[ABNORMAL_REFUNDS]
    row = await refunds.apply(request.match_info["out_refund_no"], remedy)
    return _reply(replies.AbnormalRefund.model_validate(row), status=202)


async def prices(request: web.Request) -> web.Response:
    """Its own fields, and the seed's ``success``/``data`` (yuan as JSON numbers)."""
    config = request.app[ORDER_CONFIG]
    catalog = config.catalog
    seed = config.price_list.reply()
    answer = replies.Prices(
        success=seed.success,
        data=seed.data,
        currency="CNY",
        packages={name: str(p.price_yuan) for name, p in catalog.items()},
        packages_fen={name: p.price_fen for name, p in catalog.items()},
        grants={
            name: replies.Grant(
                payment_status=p.payment_status, regenerate_count=p.regenerate_grant
            )
            for name, p in catalog.items()
        },
    )
    # Not _reply: the seed's yuan are JSON numbers written from their Decimals (29.90).
    return web.Response(content_type="application/json", text=answer_text(answer))


BACKEND = "backend"
USER = "user"
#: WeChat Cloud Hosting's ``X-WX-OPENID`` (``CLOUDHOSTING_TRUST_HEADERS=true`` only): the
#: platform's user is a user like a session's, wherever a user may call (auth.py).
PLATFORM = "platform"
_WECHATPAY_ERRORS = {
    502: "WeChat Pay refused (`wechatpay_rejected`) or answered what failed verification"
    " (`wechatpay_unverified`) or is not what it documents (`wechatpay_bad_answer`)",
    503: "WeChat Pay unreachable within the retry budget (`wechatpay_unavailable`)",
}


def _errors(*statuses: int, **notes: str) -> dict[int, Reply]:
    """Error answers, each ``{error, message}``; ``notes`` say which codes (``e400=…``)."""
    what = {
        400: "the body or a header is invalid (`invalid_request`, …)",
        401: "no or invalid credentials (`unauthorized`)",
        403: "for the app backend only, or a user acting for another (`forbidden`)",
        404: "not found, or not the caller's (`not_found`)",
        409: "the resource's state forbids it",
        413: "the body is too large",
        429: "too many requests (`too_many_requests`)",
        **_WECHATPAY_ERRORS,
    }
    return {
        status: Reply(
            notes.get(f"e{status}", what[status]),
            replies.Error,
            headers=_RETRY_AFTER if status == 429 else {},
        )
        for status in statuses
    }


_RETRY_AFTER = {"Retry-After": "seconds to wait before trying again (paylane's own limits)"}


IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "header",
    "a retry with the same key is the same request (answered, never done twice)",
    {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX},
)
_BODY_ERRORS = (400, 413)
_LIST_FILTERS = (
    Param(
        "user_id",
        "query",
        "one user's orders (a user: only their own)",
        {"type": "string", "minLength": 1, "maxLength": 36},
    ),
    Param(
        "status",
        "query",
        "orders in this state",
        {"enum": ["pending", "paid", "failed", "refunded", "needs_review"]},
    ),
    Param(
        "from",
        "query",
        "created at or after: ISO 8601 with an offset, or a date (00:00 China time)",
    ),
    Param("to", "query", "created before (as `from`)"),
)
_LIST_PAGING = (
    Param("cursor", "query", "the `next_cursor` of the page before, under the same filters"),
    Param(
        "limit",
        "query",
        f"orders a page (default {order_list.DEFAULT_LIMIT})",
        {"type": "integer", "minimum": 1, "maximum": order_list.MAX_LIMIT},
    ),
)

ORDER_API = Api(
    title="paylane order API",
    version=metadata.version("paylane-order"),
    description=(
        "Orders, refunds and prices for the app's backend (`X-Internal-Secret:"
        " BACKEND_API_SECRET`) and its users (`Authorization: Bearer <token>`). Errors are"
        " `{error, message}`. Money in fen is an integer, in yuan a string."
    ),
    security_schemes={
        BACKEND: {
            "type": "apiKey",
            "in": "header",
            "name": INTERNAL_SECRET_HEADER,
            "description": "the app backend: `BACKEND_API_SECRET`; may act for any user",
        },
        USER: {
            "type": "http",
            "scheme": "bearer",
            "description": "a user's session token: that of `POST /auth/miniprogram` or"
            " `POST /auth/token`, or the `client_token` of `POST /orders`; their own orders"
            " only. A stream ticket is not a session (401), nor is a token the user's"
            " sessions were revoked after (401)",
        },
        PLATFORM: {
            "type": "apiKey",
            "in": "header",
            "name": OPENID_HEADER,
            "description": "on WeChat Cloud Hosting with `CLOUDHOSTING_TRUST_HEADERS=true`"
            " only: the mini-program user the platform names (with `X-WX-UNIONID`), created"
            " if new; their own orders only, as a session's user. Ignored otherwise (401)",
        },
    },
    operations=[
        Operation(
            "POST",
            "/auth/miniprogram",
            login,
            "Sign a mini-program user in with the code of `wx.login()`",
            {
                200: Reply("a session token", replies.Token),
                **_errors(
                    *_BODY_ERRORS,
                    401,
                    429,
                    503,
                    e401="WeChat refused the code",
                    e429="too many sign-ins from the client's address"
                    " (`LOGIN_RATE_PER_MIN`), or WeChat's own limit (`too_many_requests`)",
                ),
            },
            body=Login,
            security=PUBLIC,
        ),
        Operation(
            "POST",
            "/auth/token",
            user_token,
            "A fresh token for a user's client",
            {
                200: Reply("the token", replies.Token),
                **_errors(*_BODY_ERRORS, 401, 403, 404, e404="`unknown_user`"),
            },
            body=TokenRequest,
            security=(BACKEND,),
            action="minting user tokens",
        ),
        Operation(
            "POST",
            "/stream-tickets",
            stream_ticket,
            "A short-lived ticket for one of the notifier's streams (`/ws`, `/events`)",
            {
                200: Reply("the ticket: open the stream before it expires", replies.StreamTicket),
                **_errors(401, e401="no user session (the backend's secret is none either)"),
            },
            security=(USER, PLATFORM),
            action="stream tickets",
        ),
        Operation(
            "POST",
            "/users/{user_id}/sessions/revoke",
            revoke_sessions,
            "Revoke every session token issued to a user so far (sign out everywhere)",
            {
                200: Reply("revoked; new sign-ins get the new version", replies.SessionsRevoked),
                **_errors(401, 403, 404, e404="`unknown_user`"),
            },
            security=(BACKEND,),
            action="revoking sessions",
        ),
        Operation(
            "POST",
            "/orders",
            create_order,
            "Place an order at WeChat Pay: a catalog package (priced server-side), or, by the"
            " backend only, a business order (`amount_fen`, `description`: no plan change)",
            {
                200: Reply(
                    "the order placed before under this `Idempotency-Key` (or `external_id`)",
                    replies.PlacedOrder,
                ),
                201: Reply("placed; `pay` is what the client pays with", replies.PlacedOrder),
                **_errors(
                    *_BODY_ERRORS,
                    401,
                    403,
                    404,
                    409,
                    429,
                    502,
                    503,
                    e400="`invalid_request` naming the field (an amount out of range, a"
                    " description over 127 bytes, …), `unknown_package`",
                    e403="a user naming another user, or giving a business order's fields",
                    e404="`unknown_user` (without an `openid`)",
                    e409="`idempotency_key_reused`, or the key's request is in progress, or"
                    " `too_many_pending_orders` (the user's unpaid orders are at"
                    " `MAX_PENDING_ORDERS`), `external_id_reused` (another order's body),"
                    " `out_trade_no_taken`",
                    e429="too many orders for this user (`ORDER_RATE_PER_MIN`,"
                    " `too_many_requests`)",
                ),
            },
            body=CreateOrder,
            security=(BACKEND, USER, PLATFORM),
            parameters=(IDEMPOTENCY_KEY,),
        ),
        Operation(
            "GET",
            "/orders",
            list_orders,
            "Orders, newest first, a page at a time (the backend: anyone's; a user: their own)",
            {
                200: Reply("a page; `next_cursor` fetches the next", replies.OrderPage),
                **_errors(400, 401, 403, e403="a user naming another `user_id`"),
            },
            security=(BACKEND, USER, PLATFORM),
            parameters=(*_LIST_FILTERS, *_LIST_PAGING),
        ),
        # Before /orders/{out_trade_no}, which would take "export.csv" for an order number.
        Operation(
            "GET",
            "/orders/export.csv",
            export_orders,
            "Every order the filters match, as CSV (yuan as exact decimals), streamed",
            {
                200: Reply(
                    "a header line, then one line an order, newest first",
                    media_type="text/csv",
                    schema={"type": "string"},
                ),
                **_errors(400, 401, 403),
            },
            security=(BACKEND,),
            action="exporting orders",
            parameters=_LIST_FILTERS,
        ),
        Operation(
            "GET",
            "/orders/{out_trade_no}",
            get_order,
            "An order: its status, amounts, refunds and the user's plan",
            {200: Reply("the order", replies.OrderView), **_errors(401, 404)},
            security=(BACKEND, USER, PLATFORM),
        ),
        Operation(
            "PATCH",
            "/orders/{out_trade_no}",
            update_order,
            "Set an order's `remark` (the backend's note; `\"\"` clears it)",
            {200: Reply("the order", replies.OrderView), **_errors(*_BODY_ERRORS, 401, 403, 404)},
            body=UpdateOrder,
            security=(BACKEND,),
            action="updating orders",
        ),
        Operation(
            "POST",
            "/orders/{out_trade_no}/close",
            close_order,
            "Close a pending order at WeChat Pay (the row becomes `failed`)",
            {
                200: Reply("the order, closed", replies.OrderView),
                **_errors(
                    401,
                    404,
                    409,
                    502,
                    503,
                    e409="`order_not_pending`, `close_refused` (e.g. paid meanwhile)",
                ),
            },
            security=(BACKEND, USER, PLATFORM),
        ),
        Operation(
            "POST",
            "/orders/{out_trade_no}/pay",
            pay_order,
            "Fresh pay parameters for a pending order (pay again)",
            {
                200: Reply("`pay` signed anew", replies.PaidAgain),
                **_errors(
                    401,
                    404,
                    409,
                    502,
                    503,
                    e409="`order_not_pending`, `order_expired` (place a new order),"
                    " `order_not_repayable` (placed by another writer)",
                ),
            },
            security=(BACKEND, USER, PLATFORM),
        ),
        Operation(
            "POST",
            "/orders/{out_trade_no}/fulfilment",
            report_fulfilment,
            "Report a paid business order's fulfilment (`success` or `failed`; `refund` with"
            " `failed` refunds it)",
            {
                200: Reply(
                    "recorded (`changed`), or the same report again (nothing changed)",
                    replies.FulfilmentRecorded,
                ),
                **_errors(
                    *_BODY_ERRORS,
                    401,
                    403,
                    404,
                    409,
                    502,
                    503,
                    e409="`not_a_business_order` (a package order), `fulfilment_final` (the"
                    " other final state is recorded), `order_not_paid`",
                    e502="the refund: WeChat Pay refused it (`wechatpay_rejected`), …",
                    e503="the refund: WeChat Pay unreachable (the fulfilment is recorded:"
                    " the same call again asks for the same refund)",
                ),
            },
            body=ReportFulfilment,
            security=(BACKEND,),
            action="fulfilment reports",
        ),
        Operation(
            "POST",
            "/orders/{out_trade_no}/refunds",
            create_refund,
            "Refund a paid order (all that is still refundable unless `amount` says less)",
            {
                202: Reply("requested at WeChat Pay", replies.RefundRequested),
                **_errors(
                    *_BODY_ERRORS,
                    401,
                    403,
                    404,
                    409,
                    502,
                    503,
                    e409="`order_not_paid`, `idempotency_key_reused`",
                ),
            },
            body=CreateRefund,
            security=(BACKEND,),
            action="refunding",
            parameters=(IDEMPOTENCY_KEY,),
        ),
        Operation(
            "GET",
            "/refunds/abnormal",
            abnormal_refunds,
            "The refunds WeChat Pay reported ABNORMAL, waiting for a remedy",
            {200: Reply("oldest first", replies.AbnormalRefunds), **_errors(401, 403)},
            security=(BACKEND,),
            action="listing abnormal refunds",
        ),
        Operation(
            "POST",
            "/refunds/{out_refund_no}/apply-abnormal-refund",
            apply_abnormal_refund,
            "Send an ABNORMAL refund's money to a bank card instead",
            {
                202: Reply("the refund row, with the remedy's outcome", replies.AbnormalRefund),
                **_errors(
                    *_BODY_ERRORS,
                    401,
                    403,
                    404,
                    409,
                    502,
                    503,
                    e400="`invalid_request`, `invalid_remedy`",
                    e404="`unknown_refund`",
                    e409="`refund_not_abnormal`",
                ),
            },
            body=ApplyAbnormalRefund,
            security=(BACKEND,),
            action="remedying refunds",
        ),
        Operation(
            "GET",
            "/prices/current",
            prices,
            "The catalog's prices and what each package grants",
            {200: Reply("the prices", replies.Prices)},
            security=PUBLIC,
        ),
        Operation(
            "POST",
            "/webhooks/endpoints",
            webhooks.create_endpoint,
            "Add a webhook endpoint (Standard Webhooks): its events, and a secret shown once",
            {
                201: Reply("made; keep `secret`, it is not shown again", webhooks.CreatedEndpoint),
                **_errors(
                    *_BODY_ERRORS,
                    401,
                    403,
                    503,
                    e400="`invalid_request` (naming the field: an unknown event type in"
                    " `events`), `invalid_webhook_url` (not https, or a private address)",
                    e503="`broker_unavailable`: RabbitMQ could not be told to send the"
                    " endpoint's events now; nothing was made, try again",
                ),
            },
            body=webhooks.CreateEndpoint,
            security=(BACKEND,),
            action="managing webhooks",
        ),
        Operation(
            "GET",
            "/webhooks/endpoints",
            webhooks.list_endpoints,
            "The webhook endpoints: `WEBHOOK_URLS`, then those made with this API",
            {200: Reply("without their secrets", webhooks.EndpointList), **_errors(401, 403)},
            security=(BACKEND,),
            action="managing webhooks",
        ),
        Operation(
            "DELETE",
            "/webhooks/endpoints/{endpoint_id}",
            webhooks.delete_endpoint,
            "Remove a webhook endpoint made with this API; its pending deliveries fail",
            {
                204: Reply("removed"),
                **_errors(
                    401,
                    403,
                    404,
                    409,
                    e404="`unknown_endpoint`",
                    e409="`configured_endpoint`: one of `WEBHOOK_URLS`",
                ),
            },
            security=(BACKEND,),
            action="managing webhooks",
        ),
    ],
)


def add_routes(app: web.Application) -> None:
    """The routes, with their security enforced (:func:`security_middleware`, inside the
    app's error middleware, which is added before)."""
    for op in ORDER_API.operations:
        if op.security and not {BACKEND, USER} <= set(op.security) and not op.action:
            raise ValueError(f"{op.method} {op.path}: a refusal needs the operation's action")
    app.middlewares.append(security_middleware)
    ORDER_API.add_routes(app)
