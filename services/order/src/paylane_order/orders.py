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

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomysql
import structlog

from paylane_common.catalog import Package
from paylane_common.china_time import CHINA
from paylane_common.db import is_duplicate_key, transaction
from paylane_common.ids import new_row_id
from paylane_common.money import yuan
from paylane_common.wechatpay import (
    MerchantSigner,
    WechatPayApiError,
    WechatPayClient,
)

from . import audit
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
from .ids import new_out_trade_no
from .refund_requests import RefundRequests
from .users import user_by_openid

log = structlog.get_logger(__name__)


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


class Orders:
    def __init__(
        self,
        pool: aiomysql.Pool,
        client: WechatPayClient,
        signer: MerchantSigner,
        merchant: MerchantConfig,
        *,
        max_pending: int = 0,
    ) -> None:
        self._pool = pool
        self._client = client
        self._signer = signer
        self._merchant = merchant
        #: Unpaid pending orders a user may have at once (``MAX_PENDING_ORDERS``; 0: any).
        self._max_pending = max_pending
        self.refunds = RefundRequests(pool, client, merchant)

    # -- create ----------------------------------------------------------------------------

    async def create(self, new: NewOrder) -> tuple[dict[str, Any], bool]:
        """Returns (order row, created); an Idempotency-Key seen before returns its order,
        placed at WeChat Pay again if the first request could not place it (a 503)."""
        if new.trade_type == "H5" and not new.client_ip:
            raise InvalidRequest("client_ip is required for H5", "client_ip_required")
        if self._merchant.appid_for(new.trade_type) is None:
            raise InvalidRequest(
                f"{new.trade_type} payments are not configured here"
                " (the order service has no WECHATPAY_APP_APPID)",
                "trade_type_unavailable",
            )
        unplaced: dict[str, Any] | None = None
        async with transaction(self._pool) as cur:
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
            if unplaced is None:
                await self._check_pending(cur, user["id"])
                out_trade_no, openid, expires_at = await self._insert(cur, new, user)
        if unplaced is not None:
            # A retry after a failed placement (a 503): the same body as the first attempt,
            # which WeChat Pay answers with the same prepay answer if it did get it.
            placed = await self._place(
                unplaced["out_trade_no"],
                replace(new, generation_id=unplaced["generation_id"]),
                unplaced["_openid"],
                unplaced["expires_at"].replace(tzinfo=UTC),
            )
            return placed, False
        order = await self._place(out_trade_no, new, openid, expires_at)
        return order, True

    async def _insert(
        self, cur: aiomysql.Cursor, new: NewOrder, user: dict[str, Any]
    ) -> tuple[str, str | None, datetime]:
        """A new ``pending`` row: (out_trade_no, openid, expires_at)."""
        openid: str | None = new.openid or user["openid"]
        if new.trade_type == "JSAPI" and not openid:
            raise InvalidRequest("openid is required for JSAPI", "openid_required")
        out_trade_no = new_out_trade_no()
        expires_at = datetime.now(UTC) + timedelta(seconds=self._merchant.order_ttl_s)
        try:
            # ``amount`` in yuan; ``amount_total`` (fen) is generated from it.
            await cur.execute(
                "INSERT INTO payment_orders (id, out_trade_no, user_id, package_type, trade_type,"
                " amount, mchid, appid, _openid, generation_id, idempotency_key,"
                " expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
                ),
            )
        except Exception as exc:
            if is_duplicate_key(exc) and new.idempotency_key:
                raise Conflict("a request with this Idempotency-Key is in progress") from None
            raise
        return out_trade_no, openid, expires_at

    async def _check_pending(self, cur: aiomysql.Cursor, user_id: str) -> None:
        """409 when the user already has ``max_pending`` unpaid orders that may still be
        paid. The user's row is locked first, so that two placements at once cannot both
        count one short of the cap (a user's placements wait on each other, briefly)."""
        if self._max_pending <= 0:
            return
        await cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (user_id,))
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

    async def _user(self, cur: aiomysql.Cursor, new: NewOrder) -> dict[str, Any]:
        if new.acting_user is not None:
            await cur.execute("SELECT id, openid FROM users WHERE id = %s", (new.acting_user,))
            me: dict[str, Any] | None = await cur.fetchone()
            if me is None:
                raise Unauthorized("the token's user no longer exists")
            if new.user_id not in (None, me["id"]) or new.openid not in (None, me["openid"]):
                raise Forbidden("a user places orders only for themselves")
            return me
        if new.user_id is not None:
            await cur.execute("SELECT id, openid FROM users WHERE id = %s", (new.user_id,))
            user: dict[str, Any] | None = await cur.fetchone()
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
        return str(user["id"])

    async def _by_idempotency_key(
        self, cur: aiomysql.Cursor, user_id: str, key: str
    ) -> dict[str, Any] | None:
        await cur.execute(
            "SELECT * FROM payment_orders WHERE user_id = %s AND idempotency_key = %s",
            (user_id, key),
        )
        row: dict[str, Any] | None = await cur.fetchone()
        return row

    async def _place(
        self, out_trade_no: str, new: NewOrder, openid: str | None, expires_at: datetime
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "appid": self._merchant.appid_for(new.trade_type),
            "mchid": self._merchant.mchid,
            "description": new.package.description,
            "out_trade_no": out_trade_no,
            "time_expire": expires_at.astimezone(CHINA).isoformat(timespec="seconds"),
            "notify_url": self._merchant.notify_url,
            "amount": {"total": new.package.price_fen, "currency": "CNY"},
        }
        if new.generation_id:
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
                await self._mark_failed(out_trade_no, f"placement refused: {exc.code}", refused)
                raise UpstreamRejected(
                    f"WeChat Pay refused the order: {exc.code} {exc.message}"
                ) from None
            raise UpstreamUnavailable(f"WeChat Pay failed: {exc.code}") from None
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE payment_orders SET prepay_id = %s, code_url = %s, h5_url = %s"
                " WHERE out_trade_no = %s",
                (
                    answer.get("prepay_id"),
                    answer.get("code_url"),
                    answer.get("h5_url"),
                    out_trade_no,
                ),
            )
            await cur.execute(
                "SELECT * FROM payment_orders WHERE out_trade_no = %s", (out_trade_no,)
            )
            row: dict[str, Any] = await cur.fetchone()
            placed = audit.order_create(
                "placed",
                out_trade_no,
                new.package.price_fen,
                request=payload,
                response=answer,
                source="api",
            )
            await audit.write(cur, placed)
        log.info("order_placed", out_trade_no=out_trade_no, trade_type=new.trade_type)
        return row

    async def _mark_failed(self, out_trade_no: str, reason: str, entry: audit.Entry) -> None:
        """The order failed at its placement (``entry``: the ``order_create`` row saying
        why)."""
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE payment_orders SET status = 'failed', closed_at = NOW(6),"
                " review_reason = %s WHERE out_trade_no = %s AND status = 'pending'",
                (reason[:255], out_trade_no),
            )
            await audit.write(cur, entry)

    def pay_params(self, order: dict[str, Any]) -> dict[str, Any]:
        """What the client needs to pay: JSAPI and APP signed params (under the appid the
        order was placed for), NATIVE code_url, H5 h5_url."""
        if order["trade_type"] in ("JSAPI", "APP"):
            if not order["prepay_id"]:
                return {}
            appid = str(order["appid"] or self._merchant.appid_for(order["trade_type"]))
            if order["trade_type"] == "APP":
                return self._signer.app_pay_params(appid, order["prepay_id"])
            return self._signer.jsapi_pay_params(appid, order["prepay_id"])
        if order["trade_type"] == "NATIVE":
            return {"code_url": order["code_url"]}
        return {"h5_url": order["h5_url"]}

    # -- read ------------------------------------------------------------------------------

    async def get(self, out_trade_no: str) -> dict[str, Any] | None:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT o.*, u.payment_status, u.regenerate_count FROM payment_orders o"
                " LEFT JOIN users u ON u.id = o.user_id WHERE o.out_trade_no = %s",
                (out_trade_no,),
            )
            order: dict[str, Any] | None = await cur.fetchone()
            if order is None:
                return None
            await cur.execute(
                "SELECT out_refund_no, refund_id, amount_refund, reason, status, refunded_at,"
                " created_at FROM refunds WHERE out_trade_no = %s ORDER BY created_at, id",
                (out_trade_no,),
            )
            order["refunds"] = list(await cur.fetchall())
        return order

    # -- remark ----------------------------------------------------------------------------

    async def set_remark(self, out_trade_no: str, remark: str) -> dict[str, Any]:
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

    async def close(self, out_trade_no: str) -> dict[str, Any]:
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
            await cur.execute(
                "UPDATE payment_orders SET status = 'failed', closed_at = NOW(6)"
                " WHERE out_trade_no = %s AND status = 'pending'",
                (out_trade_no,),
            )
            if cur.rowcount == 1:
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


def _unplaced(order: dict[str, Any]) -> bool:
    """A pending order WeChat Pay never answered for (the placement failed), not expired."""
    return (
        order["status"] == "pending"
        and not (order["prepay_id"] or order["code_url"] or order["h5_url"])
        and order["expires_at"] is not None
        and order["expires_at"] > datetime.now(UTC).replace(tzinfo=None)
    )
