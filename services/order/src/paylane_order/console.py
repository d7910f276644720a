"""The operators' console: find any payment, read its whole story, act on it with an
audit trail (docs/console.md). Served under ``/console/`` by the order service's admin
listener (``ADMIN_PORT``) only, never the public port; server-rendered HTML, no script.

- Sign-in, sessions, lockout and roles: :mod:`paylane_order.operators`. The session
  cookie is ``HttpOnly`` and ``SameSite=Strict`` (``Secure`` when the request came over
  TLS); every POST carries a CSRF token (the session's; the sign-in form a
  double-submit cookie's) or is refused (403).
- Search and CSV export: the order list's filters, keyset pages and CSV
  (:mod:`paylane_order.order_list`), with the console's filters (:mod:`console_data`).
- Actions (``support`` and ``admin``; a ``viewer`` gets 403): refund (full or partial;
  of a ``needs_review`` order, its resolution), grant a ``needs_review`` order on WeChat
  Pay's word (review_grant.py), ask WeChat Pay about a pending order, close a pending
  order, resend a webhook delivery of its events. Each needs a reason
  and writes a row of ``paylane_operator_audit`` (who, what, why, the state before and
  after, the outcome), refused ones too.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiomysql
import structlog
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from pydantic import ValidationError

from paylane_common.contract.events import validation_summary
from paylane_common.contract.money import fen, yuan_text
from paylane_common.storage.db import transaction

from . import console_data, console_dlq, console_pages, operators
from .errors import OrderError
from .order_list import Key, csv_chunks, page
from .orders import Orders
from .review_grant import ReviewGrant
from .status_query import StatusQuery
from .webhooks.store import WebhookStore

log = structlog.get_logger(__name__)

SESSION_COOKIE = "paylane_console"
PRE_COOKIE = "paylane_console_signin"
PREFIX = "/console"
REASON_MIN, REASON_MAX = 3, 200


@dataclass(frozen=True)
class ConsoleBackend:
    """What the console reads and acts with: the order service's own objects."""

    pool: aiomysql.Pool
    orders: Orders
    #: Asks WeChat Pay about a pending order at once (no age or interval).
    query: StatusQuery
    #: Resolves a needs_review order by granting it, on WeChat Pay's word.
    grant: ReviewGrant
    connection: AbstractRobustConnection | None = None


@dataclass(frozen=True)
class ConsoleOptions:
    lockout_after: int = operators.LOCKOUT_AFTER
    lockout_s: float = operators.LOCKOUT_S
    session_ttl_s: float = operators.SESSION_TTL_S


class BackendOf:
    """Where the console finds the order service's objects, made after the app starts."""

    def __init__(self, get: Callable[[], ConsoleBackend]) -> None:
        self.get = get


BACKEND = web.AppKey("console_backend", BackendOf)
OPTIONS = web.AppKey("console_options", ConsoleOptions)
SESSION = web.RequestKey("console_session", operators.Session)


def _backend(request: web.Request) -> ConsoleBackend:
    return request.app[BACKEND].get()


def _session(request: web.Request) -> operators.Session:
    return request[SESSION]


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


@web.middleware
async def console_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Headers for every page; a session for every page but sign-in; a CSRF token on
    every POST."""
    response = await _guarded(request, handler)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    )
    return response


async def _guarded(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path == f"{PREFIX}/sign-in":
        return await handler(request)
    token = request.cookies.get(SESSION_COOKIE)
    session = await operators.session(_backend(request).pool, token) if token else None
    if session is None:
        if request.method == "POST":
            return _html(console_pages.layout("Signed out", "<p>Sign in again.</p>"), 401)
        raise web.HTTPSeeOther(f"{PREFIX}/sign-in")
    if request.method == "POST":
        form = await request.post()
        given = form.get("csrf")
        if not isinstance(given, str) or not hmac.compare_digest(given, session.csrf_token):
            return _html(
                console_pages.layout("Refused", "<p>Missing or wrong CSRF token.</p>"), 403
            )
    request[SESSION] = session
    return await handler(request)


def _cookie(response: web.StreamResponse, request: web.Request, name: str, value: str) -> None:
    response.set_cookie(
        name, value, path=f"{PREFIX}/", httponly=True, samesite="Strict", secure=request.secure
    )


async def sign_in_form(request: web.Request) -> web.Response:
    pre = secrets.token_urlsafe(24)
    response = _html(console_pages.sign_in_page(pre))
    _cookie(response, request, PRE_COOKIE, pre)
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    pre = request.cookies.get(PRE_COOKIE, "")
    given = form.get("csrf")
    if not pre or not isinstance(given, str) or not hmac.compare_digest(given, pre):
        return _html(console_pages.layout("Refused", "<p>Missing or wrong CSRF token.</p>"), 403)
    name, password = form.get("name"), form.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or not name or not password:
        return _html(console_pages.sign_in_page(pre, "Give a name and a password."), 400)
    options = request.app[OPTIONS]
    outcome = await operators.sign_in(
        _backend(request).pool,
        name,
        password,
        lockout_after=options.lockout_after,
        lockout_s=options.lockout_s,
        session_ttl_s=options.session_ttl_s,
    )
    if outcome.token is None:
        log.warning("console_sign_in_refused", reason=outcome.refused)
        text = (
            "This account is locked after repeated failed sign-ins: try again later."
            if outcome.refused == "locked"
            else "Wrong name or password."
        )
        status = 429 if outcome.refused == "locked" else 401
        return _html(console_pages.sign_in_page(pre, text), status)
    response = web.HTTPSeeOther(f"{PREFIX}/orders")
    _cookie(response, request, SESSION_COOKIE, outcome.token)
    response.del_cookie(PRE_COOKIE, path=f"{PREFIX}/")
    raise response


async def sign_out(request: web.Request) -> web.StreamResponse:
    await operators.sign_out(_backend(request).pool, request.cookies[SESSION_COOKIE])
    response = web.HTTPSeeOther(f"{PREFIX}/sign-in")
    response.del_cookie(SESSION_COOKIE, path=f"{PREFIX}/")
    raise response


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(f"{PREFIX}/orders")


def _filled(request: web.Request) -> dict[str, str]:
    """The search form's fields that were filled in (a form sends the empty ones too)."""
    return {k: v.strip() for k, v in request.query.items() if v.strip()}


def _parse(model: type[console_data.ConsoleFilters], query: dict[str, str]) -> Any:
    try:
        parsed = model.model_validate(query)
    except ValidationError as exc:
        raise _Invalid(validation_summary(exc)) from None
    if parsed.since and parsed.until and parsed.since >= parsed.until:
        raise _Invalid("from must be before to")
    return parsed


class _Invalid(Exception):
    pass


async def orders_list(request: web.Request) -> web.Response:
    session = _session(request)
    query = _filled(request)
    try:
        parsed = _parse(console_data.ConsoleQuery, query)
        after = Key.of_cursor(parsed.cursor, parsed) if parsed.cursor else None
    except (_Invalid, OrderError) as exc:
        text = exc.message if isinstance(exc, OrderError) else str(exc)
        return _html(console_pages.orders_page(session, query, [], None, text), 400)
    rows = await page(_backend(request).pool, parsed, after, parsed.limit + 1)
    more = len(rows) > parsed.limit
    rows = rows[: parsed.limit]
    cursor = Key(rows[-1]["created_at"], rows[-1]["id"]).cursor(parsed) if more else None
    return _html(console_pages.orders_page(session, query, rows, cursor))


async def orders_export(request: web.Request) -> web.StreamResponse:
    query = {k: v for k, v in _filled(request).items() if k not in ("cursor", "limit")}
    try:
        filters = _parse(console_data.ConsoleFilters, query)
    except _Invalid as exc:
        return _html(console_pages.orders_page(_session(request), query, [], None, str(exc)), 400)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="orders.csv"',
        }
    )
    await response.prepare(request)
    async for chunk in csv_chunks(_backend(request).pool, filters):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _order_page(
    request: web.Request, message: str | None = None, ok: bool = True, status: int = 200
) -> web.Response:
    pool = _backend(request).pool
    order = await console_data.order_row(pool, request.match_info["out_trade_no"])
    if order is None:
        raise web.HTTPNotFound(text="no such order")
    refunds = await console_data.refunds_of(pool, order["out_trade_no"])
    refundable = await console_data.refundable_fen(pool, order)
    events = await console_data.timeline(pool, order)
    deliveries = await console_data.webhook_deliveries(pool, order["out_trade_no"])
    letters = await console_dlq.of_order(_backend(request).connection, order["out_trade_no"])
    page = console_pages.order_page(
        _session(request), order, refunds, refundable, events, deliveries, message, ok, letters
    )
    return _html(page, status)


async def order_detail(request: web.Request) -> web.Response:
    return await _order_page(request)


# --- actions ----------------------------------------------------------------------------


async def _status(pool: aiomysql.Pool, out_trade_no: str) -> str | None:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT status FROM payment_orders WHERE out_trade_no = %s", (out_trade_no,)
        )
        row = await cur.fetchone()
    return None if row is None else str(row["status"])


#: An action: the backend, the order's number, the form, and who acts.
Act = Callable[[ConsoleBackend, str, dict[str, str], operators.Operator], Awaitable[str]]


class _Refused(Exception):
    """An action's input the console refuses before acting (400), saying why."""


def _action(name: str, act: Act) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A POST that acts on an order: allowed to support and admin, needs a reason, and
    leaves a row in the operators' audit log whatever the outcome."""

    async def handler(request: web.Request) -> web.Response:
        session = _session(request)
        backend = _backend(request)
        no = request.match_info["out_trade_no"]
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        reason = form.get("reason", "").strip()
        if not session.operator.may_act:
            return _html(
                console_pages.layout("Refused", "<p>Your role may not act on orders.</p>", session),
                403,
            )
        before = await _status(backend.pool, no)
        if before is None:
            raise web.HTTPNotFound(text="no such order")
        if not REASON_MIN <= len(reason) <= REASON_MAX:
            return await _order_page(
                request, f"A reason is needed: {REASON_MIN} to {REASON_MAX} characters.", False, 400
            )
        outcome: Outcome = "done"
        status = 200
        try:
            detail = await act(backend, no, form, session.operator)
        except _Refused as exc:
            outcome, status, detail = "refused", 400, str(exc)
        except OrderError as exc:
            outcome, status, detail = (
                ("refused" if exc.status < 500 else "failed"),
                exc.status,
                exc.message,
            )
        after = await _status(backend.pool, no)
        await _audit(backend, session, name, no, reason, (before, after), outcome, detail)
        return await _order_page(request, detail, outcome == "done", status)

    return handler


Outcome = Literal["done", "refused", "failed"]


async def _audit(
    backend: ConsoleBackend,
    session: operators.Session,
    name: str,
    no: str | None,
    reason: str,
    states: tuple[str | None, str | None],
    outcome: Outcome,
    detail: str,
) -> None:
    """The action's row in the operators' audit log, and its log line."""
    async with transaction(backend.pool) as cur:
        await operators.write_audit(
            cur,
            session.operator,
            name,
            no,
            reason,
            before=states[0],
            after=states[1],
            outcome=outcome,
            detail=detail,
        )
    log.info("console_action", operator=session.operator.name, action=name, outcome=outcome)


async def _refund(
    backend: ConsoleBackend, no: str, form: dict[str, str], who: operators.Operator
) -> str:
    order = await console_data.order_row(backend.pool, no)
    assert order is not None
    if order["status"] not in ("paid", "needs_review"):
        raise _Refused(
            f"only a paid or needs_review order is refunded; this one is {order['status']}"
        )
    refundable = await console_data.refundable_fen(backend.pool, order)
    text = form.get("amount", "").strip()
    if text:
        try:
            amount = fen(text)
        except ValueError:
            raise _Refused(f"amount: yuan with at most two decimals, not {text[:20]!r}") from None
        if amount <= 0:
            raise _Refused("amount: more than 0")
    else:
        amount = refundable
    if amount > refundable:
        raise _Refused(
            f"{yuan_text(amount)} yuan is more than the {yuan_text(refundable)} yuan still"
            " refundable"
        )
    done = await backend.orders.refunds.request(
        no, amount, form["reason"].strip(), review_ok=order["status"] == "needs_review"
    )
    amount_text = yuan_text(done["amount"])
    return f"refund {done['out_refund_no']} of {amount_text} yuan requested ({done['status']})"


async def _query(
    backend: ConsoleBackend, no: str, form: dict[str, str], who: operators.Operator
) -> str:
    order = await backend.orders.get(no)
    assert order is not None
    if order["status"] != "pending":
        raise _Refused(f"only a pending order is asked about; this one is {order['status']}")
    if await backend.query.settle(order):
        return "WeChat Pay reports it paid: the payment was applied"
    return "WeChat Pay reports no payment (or did not answer): the order stays pending"


async def _grant(
    backend: ConsoleBackend, no: str, form: dict[str, str], who: operators.Operator
) -> str:
    order = await console_data.order_row(backend.pool, no)
    assert order is not None
    return await backend.grant.grant(order, who.name, form["reason"].strip())


async def _close(
    backend: ConsoleBackend, no: str, form: dict[str, str], who: operators.Operator
) -> str:
    closed = await backend.orders.close(no)
    return f"order is {closed['status']}"


async def _resend_webhook(
    backend: ConsoleBackend, no: str, form: dict[str, str], who: operators.Operator
) -> str:
    text = form.get("delivery_id", "")
    ours = {d["id"]: d for d in await console_data.webhook_deliveries(backend.pool, no)}
    if not text.isdigit() or int(text) not in ours:
        raise _Refused(f"delivery {text[:20]} is not a delivery of this order")
    delivery = ours[int(text)]
    outcome = await WebhookStore(backend.pool).resend(delivery["id"])
    if outcome != "resent":
        raise _Refused(f"delivery {delivery['id']} not resent: {outcome}")
    return f"delivery {delivery['id']} ({delivery['event_type']}) to {delivery['url']} resent"


async def _replay_dead_letter(
    backend: ConsoleBackend, no: str, form: dict[str, str], who: operators.Operator
) -> str:
    dlq, message_id = form.get("queue", ""), form.get("message_id", "")
    if not message_id:
        raise _Refused("choose a dead letter")
    try:
        return (await console_dlq.replay(backend.connection, dlq, message_id, no)).detail
    except console_dlq.NotReplayed as exc:
        raise _Refused(str(exc)) from None


async def dlq_page(request: web.Request) -> web.Response:
    return await _dlq_page(request)


async def _dlq_page(
    request: web.Request, message: str | None = None, ok: bool = True, status: int = 200
) -> web.Response:
    backend = _backend(request)
    depths = {q.name: q.messages for q in await console_data.queue_depths(backend.connection)}
    views = await console_dlq.dlqs(backend.connection, depths)
    return _html(console_pages.dlq_page(_session(request), views, message, ok), status)


async def dlq_replay(request: web.Request) -> web.Response:
    """Replay one dead letter (support, admin) or all of a DLQ (admin) of ours, with a
    reason; audited like an order's action, the DLQ's depth as the state."""
    session, backend = _session(request), _backend(request)
    dlq = request.match_info["queue"]
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    reason, message_id = form.get("reason", "").strip(), form.get("message_id") or None
    # "All" only when asked for by name: a letter's form without an id is not all of them.
    everything = form.get("all") == "1"
    if message_id is None and not everything:
        return await _dlq_page(request, "Choose a dead letter (or all, as an admin).", False, 400)
    if everything:
        message_id = None
    if not session.operator.may_act or (everything and session.operator.role != "admin"):
        text = "Your role may not replay dead letters." + (
            " All: admin only." if everything else ""
        )
        return _html(console_pages.layout("Refused", f"<p>{text}</p>", session), 403)
    if not REASON_MIN <= len(reason) <= REASON_MAX:
        text = f"A reason is needed: {REASON_MIN} to {REASON_MAX} characters."
        return await _dlq_page(request, text, False, 400)
    before = await _depth(backend, dlq)
    outcome: Outcome = "done"
    status, no = 200, None
    try:
        replayed = await console_dlq.replay(backend.connection, dlq, message_id)
    except console_dlq.NotReplayed as exc:
        outcome, status, detail = "refused", 400, str(exc)
    else:
        detail = replayed.detail
        if not everything and replayed.letters:  # the order it was about, if one
            no = replayed.letters[0].correlation_id
    states = (before, await _depth(backend, dlq))
    action = "replay_dlq" if everything else "replay_dead_letter"
    await _audit(backend, session, action, no, reason, states, outcome, detail)
    return await _dlq_page(request, detail, outcome == "done", status)


async def _depth(backend: ConsoleBackend, dlq: str) -> str | None:
    """A DLQ's depth as an audit row's state: ``dlq 3``."""
    depths = {q.name: q.messages for q in await console_data.queue_depths(backend.connection)}
    n = depths.get(dlq)
    return None if n is None else f"dlq {n}"


async def health(request: web.Request) -> web.Response:
    backend = _backend(request)
    found = await console_data.health(backend.pool, backend.connection)
    return _html(console_pages.health_page(_session(request), found))


async def audit_log(request: web.Request) -> web.Response:
    rows = await console_data.recent_audit(_backend(request).pool)
    return _html(console_pages.audit_page(_session(request), rows))


def console_app(
    backend: Callable[[], ConsoleBackend], options: ConsoleOptions | None = None
) -> web.Application:
    """The console as an app of its own, to be mounted at :data:`PREFIX`."""
    app = web.Application(middlewares=[console_middleware])
    app[BACKEND] = BackendOf(backend)
    app[OPTIONS] = options or ConsoleOptions()
    r = app.router
    r.add_get("/", home)
    r.add_get("/sign-in", sign_in_form)
    r.add_post("/sign-in", sign_in)
    r.add_post("/sign-out", sign_out)
    r.add_get("/orders", orders_list)
    r.add_get("/orders/export.csv", orders_export)
    r.add_get("/orders/{out_trade_no}", order_detail)
    r.add_post("/orders/{out_trade_no}/refund", _action("refund", _refund))
    r.add_post("/orders/{out_trade_no}/query", _action("query", _query))
    r.add_post("/orders/{out_trade_no}/close", _action("close", _close))
    r.add_post("/orders/{out_trade_no}/grant", _action("grant", _grant))
    r.add_post("/orders/{out_trade_no}/resend-webhook", _action("resend_webhook", _resend_webhook))
    r.add_post(
        "/orders/{out_trade_no}/replay-dead-letter",
        _action("replay_dead_letter", _replay_dead_letter),
    )
    r.add_get("/dlq", dlq_page)
    r.add_post("/dlq/{queue}/replay", dlq_replay)
    r.add_get("/health", health)
    r.add_get("/audit", audit_log)
    return app


def mount(admin: web.Application, backend: Callable[[], ConsoleBackend]) -> None:
    """The console on the admin listener's app."""
    admin.add_subapp(PREFIX, console_app(backend))
