"""Placing and closing orders: the database row first, then WeChat Pay (refunds:
refund_requests.py; users: users.py).

A row is ``pending`` before the order exists at WeChat Pay, so a notification can never
arrive for an order we do not know; a placement that fails leaves a row the reconciler
settles (WeChat Pay says ORDER_NOT_EXIST → ``failed`` once expired).

The rows live in the shared tables (docs/database.md): string ids made here
(``new_row_id``), amounts written in yuan (the fen columns are generated from them), the
payer's openid in ``_openid``. An order that timed out or was cancelled is ``failed``, the
existing system's word; ``closed_at`` says when.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import aiomysql
import structlog

from paylane_common.contract.catalog import Package
from paylane_common.contract.china_time import CHINA
from paylane_common.contract.ids import new_row_id
from paylane_common.contract.money import yuan
from paylane_common.storage.db import is_duplicate_key, transaction
from paylane_common.storage.rows import OrderRow, PaymentStatus, RefundStatus, fetch_all, fetch_one
from paylane_common.wechatpay import (
    MerchantSigner,
    WechatPayApiError,
    WechatPayClient,
)

from . import audit
from .business import BusinessTerms, business_package, is_business
from .config import MerchantConfig
from .errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
    UpstreamRejected,
    UpstreamUnavailable,
)
from .failed import fail
from .fulfilment import Fulfilments
from .ids import new_out_trade_no
from .refund_requests import RefundRequests
from .settings import PREPAY_ID_TTL_S
from .shipping import OrderShipping
from .shipping import of_order as shipping_of
from .users import UserRef, user_by_openid

log = structlog.get_logger(__name__)

#: A prepay answer this close to its two hours is not handed out again: the order is
#: placed again for a fresh one (the payer needs a moment to pay).
PREPAY_MARGIN_S = 120


class OrderRefund(TypedDict):
    """A refund of the order, as ``GET /orders/{no}`` lists it."""

    out_refund_no: str
    refund_id: str | None
    amount_refund: int
    reason: str | None
    status: RefundStatus | None
    refunded_at: datetime | None
    created_at: datetime | None


class OrderWithUser(OrderRow):
    """The order and its user's plan (both NULL when the user is gone: a LEFT JOIN)."""

    payment_status: PaymentStatus | None
    regenerate_count: int | None


class OrderDetail(OrderWithUser):
    """What :meth:`Orders.get` answers: the order, its user's plan, its refunds, its
    shipping declared to WeChat (None: not declared)."""

    refunds: list[OrderRefund]
    shipping: OrderShipping | None


@dataclass(frozen=True)
class NewOrder:
    user_id: str | None
    #: Set when an end user places the order for themselves (their token's user): the
    #: order is theirs, and an ``openid`` given must be theirs too.
    acting_user: str | None
    package: Package
    trade_type: str
    openid: str | None
    generation_id: str | None
    client_ip: str | None
    idempotency_key: str | None
    #: A business order (the backend's, business.py): ``package`` is then
    #: :func:`business_package` of its amount and description.
    business: BusinessTerms | None = None


class Orders:
    def __init__(
        self,
        pool: aiomysql.Pool,
        client: WechatPayClient,
        signer: MerchantSigner | None,
        merchant: MerchantConfig,
        *,
        max_pending: int = 0,
        duplicate_window_s: int = 0,
    ) -> None:
        self._pool = pool
        self._client = client
        #: None in ``cloudhosting`` mode: the platform signs the pay parameters, which
        #: are kept with the order (``pay_params``) as it answered them.
        self._signer = signer
        self._merchant = merchant
        #: Unpaid pending orders a user may have at once (``MAX_PENDING_ORDERS``; 0: any).
        self._max_pending = max_pending
        #: A repeated placement within this long answers the pending order (0: off).
        self._duplicate_window_s = duplicate_window_s
        self.refunds = RefundRequests(pool, client, merchant)
        self.fulfilments = Fulfilments(pool, self.refunds)

    # -- create ----------------------------------------------------------------------------

    async def create(self, new: NewOrder) -> tuple[OrderRow, bool]:
        """Returns (order row, created); an Idempotency-Key seen before returns its order,
        placed at WeChat Pay again if the first request could not place it (a 503), and so
        does a repeat without a key within the duplicate window (:meth:`_twin`)."""
        if not self._merchant.offers(new.trade_type):
            raise InvalidRequest(
                f"{new.trade_type} payments are not offered on WeChat Cloud Hosting"
                " (WECHATPAY_MODE=cloudhosting places JSAPI and NATIVE only)",
                "trade_type_unavailable",
            )
        if new.trade_type == "H5" and not new.client_ip:
            raise InvalidRequest("client_ip is required for H5", "client_ip_required")
        if self._merchant.appid_for(new.trade_type) is None:
            raise InvalidRequest(
                f"{new.trade_type} payments are not configured here"
                " (the order service has no WECHATPAY_APP_APPID)",
                "trade_type_unavailable",
            )
        unplaced: OrderRow | None = None
        # READ COMMITTED: once the user's row lock is granted (_lock_user), each read sees
        # what the placements before it committed, without locking reads, whose gap locks
        # deadlocked concurrent placements' inserts.
        async with transaction(self._pool, isolation="READ COMMITTED") as cur:
            user = await self._user(cur, new)
            if new.idempotency_key:
                existing = await self._by_idempotency_key(cur, user["id"], new.idempotency_key)
                if existing is not None:
                    if (existing["package_type"], existing["trade_type"]) != (
                        new.package.name,
                        new.trade_type,
                    ):
                        raise Conflict(
                            "Idempotency-Key was used for a different order",
                            "idempotency_key_reused",
                        )
                    if not _unplaced(existing):
                        return existing, False
                    unplaced = existing
            terms = new.business
            if unplaced is None and terms is not None and terms.external_id:
                existing = await self._by_external_id(cur, terms.external_id)
                if existing is not None:
                    _same_business_order(existing, new, user["id"])
                    if not _unplaced(existing):
                        return existing, False
                    unplaced = existing
            if unplaced is None and terms is None:
                # A user's double tap; the backend's business orders have external_id.
                await self._lock_user(cur, user["id"])
                twin = None if new.idempotency_key else await self._twin(cur, user["id"], new)
                if twin is not None and not _unplaced(twin):
                    return twin, False
                unplaced = twin
            if unplaced is None:
                if terms is None:  # the cap is on what users place themselves
                    await self._check_pending(cur, user["id"])
                out_trade_no, openid, expires_at = await self._insert(cur, new, user)
        if unplaced is not None:
            # A retry after a failed placement (a 503): the same body as the first attempt,
            # which WeChat Pay answers with the same prepay answer if it did get it. So the
            # order's own amount, whatever the catalog says now (as pay_again does).
            expiry = unplaced["expires_at"]
            assert expiry is not None  # _unplaced: not expired yet
            package = new.package.model_copy(update={"price_fen": unplaced["amount_total"]})
            # Not the first placement: another request's may still be in flight, and a
            # refusal of this one (e.g. another body for the same out_trade_no) must not
            # fail an order WeChat Pay holds; the reconciler settles one never placed.
            placed = await self._place(
                unplaced["out_trade_no"],
                replace(new, package=package, generation_id=unplaced["generation_id"]),
                unplaced["_openid"],
                expiry.replace(tzinfo=UTC),
                first=False,
            )
            return placed, False
        order = await self._place(out_trade_no, new, openid, expires_at)
        return order, True

    async def _insert(
        self, cur: aiomysql.Cursor, new: NewOrder, user: UserRef
    ) -> tuple[str, str | None, datetime]:
        """A new ``pending`` row: (out_trade_no, openid, expires_at)."""
        openid: str | None = new.openid or user["openid"]
        if new.trade_type == "JSAPI" and not openid:
            raise InvalidRequest("openid is required for JSAPI", "openid_required")
        terms = new.business
        out_trade_no = (terms and terms.out_trade_no) or new_out_trade_no()
        ttl_s = (terms and terms.expires_in_s) or self._merchant.order_ttl_s
        expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
        try:
            # ``amount`` in yuan; ``amount_total`` (fen) is generated from it. A business
            # order's fulfilment is pending from the start: the backend reports it once paid.
            await cur.execute(
                "INSERT INTO payment_orders (id, out_trade_no, user_id, package_type, trade_type,"
                " amount, mchid, appid, _openid, generation_id, idempotency_key,"
                " expires_at, description, external_id, attach, fulfilment_status)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    new_row_id("order"),
                    out_trade_no,
                    user["id"],
                    new.package.name,
                    new.trade_type,
                    yuan(new.package.price_fen),
                    self._merchant.mchid,
                    self._merchant.appid_for(new.trade_type),
                    openid,
                    new.generation_id or "",  # NOT NULL in the shared schema
                    new.idempotency_key,
                    expires_at.replace(tzinfo=None),
                    terms.description if terms else None,
                    terms.external_id if terms else None,
                    terms.attach if terms else None,
                    "pending" if terms else None,
                ),
            )
        except Exception as exc:
            if not is_duplicate_key(exc):
                raise
            if terms is not None and terms.out_trade_no and "out_trade_no" in str(exc):
                raise Conflict(
                    f"out_trade_no {terms.out_trade_no} is another order's", "out_trade_no_taken"
                ) from None
            if terms is not None and terms.external_id and "external_id" in str(exc):
                raise Conflict("a request with this external_id is in progress") from None
            if new.idempotency_key:
                raise Conflict("a request with this Idempotency-Key is in progress") from None
            raise
        return out_trade_no, openid, expires_at

    async def _lock_user(self, cur: aiomysql.Cursor, user_id: str) -> None:
        """The user's row locked until the placement commits: a user's placements wait on
        each other (briefly), so that two at once can neither both count one short of the
        pending cap nor both miss the other's twin. The transaction is READ COMMITTED, so
        the reads after it see the order placed meanwhile (under REPEATABLE READ they would
        see the snapshot taken before the lock was granted)."""
        if self._max_pending > 0 or self._duplicate_window_s > 0:
            await cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (user_id,))

    async def _twin(self, cur: aiomysql.Cursor, user_id: str, new: NewOrder) -> OrderRow | None:
        """The user's newest order paylane placed for the same package, trade type and
        generation, still pending and payable, younger than the duplicate window: what a
        double tap (or a client's retry without an Idempotency-Key) meant."""
        if self._duplicate_window_s <= 0:
            return None
        await cur.execute(
            "SELECT * FROM payment_orders WHERE user_id = %s AND package_type = %s"
            " AND trade_type = %s AND generation_id = %s AND status = 'pending'"
            " AND mchid IS NOT NULL AND expires_at > UTC_TIMESTAMP(6)"
            " AND created_at > UTC_TIMESTAMP(6) - INTERVAL %s SECOND"
            " ORDER BY created_at DESC, id DESC LIMIT 1",
            (
                user_id,
                new.package.name,
                new.trade_type,
                new.generation_id or "",
                self._duplicate_window_s,
            ),
        )
        twin = await fetch_one(cur, OrderRow)
        if twin is not None:
            log.info("order_repeated", out_trade_no=twin["out_trade_no"])
        return twin

    async def _check_pending(self, cur: aiomysql.Cursor, user_id: str) -> None:
        """409 when the user already has ``max_pending`` unpaid orders that may still be
        paid (the user's row locked: :meth:`_lock_user`)."""
        if self._max_pending <= 0:
            return
        await cur.execute(
            "SELECT COUNT(*) AS n FROM payment_orders WHERE user_id = %s AND status = 'pending'"
            " AND (expires_at IS NULL OR expires_at > UTC_TIMESTAMP(6))",
            (user_id,),
        )
        row = await cur.fetchone()
        if row["n"] >= self._max_pending:
            raise Conflict(
                f"the user has {row['n']} unpaid pending orders, the most allowed"
                f" (MAX_PENDING_ORDERS={self._max_pending}): pay or close one, or wait until"
                " one expires",
                "too_many_pending_orders",
            )

    async def _user(self, cur: aiomysql.Cursor, new: NewOrder) -> UserRef:
        if new.acting_user is not None:
            await cur.execute("SELECT id, openid FROM users WHERE id = %s", (new.acting_user,))
            me = await fetch_one(cur, UserRef)
            if me is None:
                raise Unauthorized("the token's user no longer exists")
            if new.user_id not in (None, me["id"]) or new.openid not in (None, me["openid"]):
                raise Forbidden("a user places orders only for themselves")
            return me
        if new.user_id is not None:
            await cur.execute("SELECT id, openid FROM users WHERE id = %s", (new.user_id,))
            user = await fetch_one(cur, UserRef)
            if user is not None:
                return user
            if not new.openid:
                raise NotFound(f"user {new.user_id} does not exist", "unknown_user")
        if not new.openid:
            raise InvalidRequest("user_id or openid is required", "user_required")
        return await user_by_openid(cur, new.openid)

    async def user_exists(self, user_id: str) -> bool:
        async with transaction(self._pool) as cur:
            await cur.execute("SELECT 1 FROM users WHERE id = %s", (user_id,))
            return await cur.fetchone() is not None

    async def sign_in(self, openid: str) -> str:
        """The user with this openid, created if new (a mini-program login)."""
        async with transaction(self._pool) as cur:
            user = await user_by_openid(cur, openid, login=True)
        return user["id"]

    async def _by_external_id(self, cur: aiomysql.Cursor, external_id: str) -> OrderRow | None:
        await cur.execute("SELECT * FROM payment_orders WHERE external_id = %s", (external_id,))
        return await fetch_one(cur, OrderRow)

    async def platform_user(self, openid: str, unionid: str | None = None) -> str:
        """The user WeChat Cloud Hosting names (``X-WX-OPENID``), created if new as the
        cloud function creates one; a ``unionid`` the row lacks is filled in."""
        async with transaction(self._pool) as cur:
            user = await user_by_openid(cur, openid)
            if unionid:
                await cur.execute(
                    "UPDATE users SET unionid = %s WHERE id = %s AND unionid IS NULL",
                    (unionid[:100], user["id"]),
                )
        return user["id"]

    async def _by_idempotency_key(
        self, cur: aiomysql.Cursor, user_id: str, key: str
    ) -> OrderRow | None:
        await cur.execute(
            "SELECT * FROM payment_orders WHERE user_id = %s AND idempotency_key = %s",
            (user_id, key),
        )
        return await fetch_one(cur, OrderRow)

    # -- pay again -------------------------------------------------------------------------

    async def pay_again(
        self, order: OrderRow, package: Package | None, client_ip: str | None
    ) -> tuple[OrderRow, bool]:
        """(the order, placed again): a pending order paylane placed, to be paid once more
        (the payer cancelled the payment sheet). The prepay answer it holds while WeChat Pay
        still does; otherwise the order placed again under the same out_trade_no with the
        same body, which WeChat Pay answers with a prepay answer for it. Never a new
        out_trade_no: that is a new order (``POST /orders``), and an expired one is
        refused (409 ``order_expired``)."""
        no = order["out_trade_no"]
        if order["status"] != "pending":
            raise Conflict(f"order {no} is {order['status']}, not pending", "order_not_pending")
        trade_type = order["trade_type"]
        if order["mchid"] is None or order["expires_at"] is None or trade_type is None:
            raise Conflict(
                f"order {no} was placed by another writer, whose pay parameters paylane does"
                " not hold: pay it there, or place a new order",
                "order_not_repayable",
            )
        now = datetime.now(UTC).replace(tzinfo=None)
        if order["expires_at"] <= now:
            raise Conflict(f"order {no} has expired: place a new order", "order_expired")
        created = order["created_at"]
        ttl = timedelta(seconds=PREPAY_ID_TTL_S - PREPAY_MARGIN_S)
        if not _unplaced(order) and created is not None and created + ttl > now:
            return order, False
        terms = None
        if is_business(order):
            assert order["description"] is not None  # is_business
            package = business_package(order["description"], order["amount_total"])
            terms = BusinessTerms(order["description"], order["external_id"], order["attach"])
        if package is None:
            raise Conflict(
                f"package {order['package_type']!r} is no longer sold: place a new order",
                "order_not_repayable",
            )
        again = NewOrder(
            user_id=order["user_id"],
            acting_user=None,
            # The body of the first placement: the order's own amount, whatever the
            # catalog says now.
            package=package.model_copy(update={"price_fen": order["amount_total"]}),
            trade_type=trade_type,
            openid=order["_openid"],
            generation_id=order["generation_id"] or None,
            client_ip=client_ip,
            idempotency_key=None,
            business=terms,
        )
        expires_at = order["expires_at"].replace(tzinfo=UTC)
        return await self._place(no, again, order["_openid"], expires_at, first=False), True

    async def _place(
        self,
        out_trade_no: str,
        new: NewOrder,
        openid: str | None,
        expires_at: datetime,
        *,
        first: bool = True,
    ) -> OrderRow:
        """The order placed at WeChat Pay, its answer recorded. A refusal fails the order
        when it is the ``first`` placement; a later one (pay again) leaves it as it is:
        WeChat Pay may refuse because it was paid meanwhile (``TRADE_ERROR``)."""
        payload: dict[str, Any] = {
            "appid": self._merchant.appid_for(new.trade_type),
            "mchid": self._merchant.mchid,
            "description": new.package.description,
            "out_trade_no": out_trade_no,
            "time_expire": expires_at.astimezone(CHINA).isoformat(timespec="seconds"),
            "notify_url": self._merchant.notify_url,
            "amount": {"total": new.package.price_fen, "currency": "CNY"},
        }
        if new.business is not None and new.business.attach:
            payload["attach"] = new.business.attach
        elif new.generation_id:
            payload["attach"] = new.generation_id[:128]
        if new.trade_type == "JSAPI":
            payload["payer"] = {"openid": openid}
        if new.trade_type == "H5":
            payload["scene_info"] = {
                "payer_client_ip": new.client_ip,
                "h5_info": {"type": "Wap"},
            }
        try:
            answer = await self._client.place(new.trade_type, payload)
        except WechatPayApiError as exc:
            if not exc.retryable:
                refused = audit.order_create(
                    "placement_refused",
                    out_trade_no,
                    new.package.price_fen,
                    request=payload,
                    response={"code": exc.code, "message": exc.message},
                    source="api",
                )
                await self._refused(out_trade_no, f"placement refused: {exc.code}", refused, first)
                raise UpstreamRejected(
                    f"WeChat Pay refused the order: {exc.code} {exc.message}"
                ) from None
            raise UpstreamUnavailable(f"WeChat Pay failed: {exc.code}") from None
        # Cloud Hosting's open interface answers the JSAPI pay parameters it signed
        # (``payment``): kept as they are, handed out as they are.
        payment = answer.get("payment")
        kept = json.dumps(payment, separators=(",", ":")) if isinstance(payment, dict) else None
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE payment_orders SET prepay_id = %s, code_url = %s, h5_url = %s"
                + (", pay_params = %s" if kept is not None else "")
                + " WHERE out_trade_no = %s",
                (
                    answer.get("prepay_id"),
                    answer.get("code_url"),
                    answer.get("h5_url"),
                    *((kept,) if kept is not None else ()),
                    out_trade_no,
                ),
            )
            await cur.execute(
                "SELECT * FROM payment_orders WHERE out_trade_no = %s", (out_trade_no,)
            )
            row = await fetch_one(cur, OrderRow)
            placed = audit.order_create(
                "placed",
                out_trade_no,
                new.package.price_fen,
                request=payload,
                response=answer,
                source="api",
            )
            await audit.write(cur, placed)
        assert row is not None  # written by this service, updated just above
        log.info("order_placed", out_trade_no=out_trade_no, trade_type=new.trade_type)
        return row

    async def _refused(
        self, out_trade_no: str, reason: str, entry: audit.Entry, first: bool
    ) -> None:
        """WeChat Pay refused a placement (``entry``: the ``order_create`` row saying why).
        The ``first`` placement's refusal fails the order; a later one (pay again) leaves it
        as it is: WeChat Pay may refuse because it was paid meanwhile (``TRADE_ERROR``)."""
        async with transaction(self._pool) as cur:
            if first:
                await fail(cur, out_trade_no, "failed", detail=reason)
            await audit.write(cur, entry)

    def pay_params(self, order: OrderRow) -> dict[str, Any]:
        """What the client needs to pay: JSAPI and APP signed params (under the appid the
        order was placed for), NATIVE code_url, H5 h5_url."""
        if order["trade_type"] in ("JSAPI", "APP"):
            if not order["prepay_id"]:
                return {}
            kept = order.get("pay_params")
            if kept:
                params: dict[str, Any] = json.loads(kept)
                return params
            if self._signer is None:
                return {}
            appid = str(order["appid"] or self._merchant.appid_for(order["trade_type"]))
            if order["trade_type"] == "APP":
                return self._signer.app_pay_params(appid, order["prepay_id"])
            return self._signer.jsapi_pay_params(appid, order["prepay_id"])
        if order["trade_type"] == "NATIVE":
            return {"code_url": order["code_url"]}
        return {"h5_url": order["h5_url"]}

    # -- read ------------------------------------------------------------------------------

    async def get(self, out_trade_no: str) -> OrderDetail | None:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT o.*, u.payment_status, u.regenerate_count FROM payment_orders o"
                " LEFT JOIN users u ON u.id = o.user_id WHERE o.out_trade_no = %s",
                (out_trade_no,),
            )
            order = await fetch_one(cur, OrderWithUser)
            if order is None:
                return None
            await cur.execute(
                "SELECT out_refund_no, refund_id, amount_refund, reason, status, refunded_at,"
                " created_at FROM refunds WHERE out_trade_no = %s ORDER BY created_at, id",
                (out_trade_no,),
            )
            refunds = await fetch_all(cur, OrderRefund)
            shipping = await shipping_of(cur, out_trade_no)
        return {**order, "refunds": refunds, "shipping": shipping}

    # -- remark ----------------------------------------------------------------------------

    async def set_remark(self, out_trade_no: str, remark: str) -> OrderDetail:
        """The backend's note on an order (``payment_orders.remark``, as the existing
        backend writes it); the order as it is then."""
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE payment_orders SET remark = %s WHERE out_trade_no = %s",
                (remark, out_trade_no),
            )
        order = await self.get(out_trade_no)
        if order is None:
            raise NotFound(f"order {out_trade_no} does not exist")
        return order

    # -- close -----------------------------------------------------------------------------

    async def close(self, out_trade_no: str) -> OrderDetail:
        order = await self.get(out_trade_no)
        if order is None:
            raise NotFound(f"order {out_trade_no} does not exist")
        if order["status"] == "failed":  # closed (timed out or cancelled) already
            return order
        if order["status"] != "pending":
            raise Conflict(f"order is {order['status']}, not pending", "order_not_pending")
        response: dict[str, Any] = {}
        try:
            await self._client.close(out_trade_no)
        except WechatPayApiError as exc:
            if exc.code == "ORDER_NOT_EXIST":
                response = {"code": exc.code}  # never placed: closing locally is all there is
            elif exc.retryable:
                raise UpstreamUnavailable(f"WeChat Pay failed: {exc.code}") from None
            else:
                # e.g. ORDER_PAID: the payment is on its way (notification or reconciler).
                raise Conflict(
                    f"WeChat Pay refused to close: {exc.code} {exc.message}", "close_refused"
                ) from None
        async with transaction(self._pool) as cur:
            if await fail(cur, out_trade_no, "closed"):
                entry = audit.order_close(
                    "closed",
                    out_trade_no,
                    order["amount_total"],
                    source="api",
                    request={"out_trade_no": out_trade_no, "mchid": self._merchant.mchid},
                    response=response,
                )
                await audit.write(cur, entry)
        log.info("order_closed", out_trade_no=out_trade_no)
        closed = await self.get(out_trade_no)
        assert closed is not None
        return closed


def _same_business_order(existing: OrderRow, new: NewOrder, user_id: str) -> None:
    """409 unless ``new`` asks for the order its ``external_id`` already names."""
    terms = new.business
    assert terms is not None
    differs = [
        name
        for name, theirs, ours in (
            ("user", existing["user_id"], user_id),
            ("amount_fen", existing["amount_total"], new.package.price_fen),
            ("description", existing["description"], terms.description),
            ("trade_type", existing["trade_type"], new.trade_type),
            ("attach", existing["attach"], terms.attach),
        )
        if theirs != ours
    ]
    if terms.out_trade_no and terms.out_trade_no != existing["out_trade_no"]:
        differs.append("out_trade_no")
    if differs:
        raise Conflict(
            f"external_id {terms.external_id} names order {existing['out_trade_no']}, whose"
            f" {', '.join(differs)} differ",
            "external_id_reused",
        )


def _unplaced(order: OrderRow) -> bool:
    """A pending order WeChat Pay never answered for (the placement failed), not expired."""
    return (
        order["status"] == "pending"
        and not (order["prepay_id"] or order["code_url"] or order["h5_url"])
        and order["expires_at"] is not None
        and order["expires_at"] > datetime.now(UTC).replace(tzinfo=None)
    )
