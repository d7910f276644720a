"""Shipping declared to WeChat (发货信息管理, docs/shipping.md).

A mini-program under WeChat's trade management must declare the shipping of every payment;
until it does, the payment's funds stay frozen. With ``SHIPPING_UPLOAD=virtual`` the order
service declares each JSAPI payment once its effect is done:

* :class:`ShippingQueue`, a handler of the order consumer: ``entitlement.granted`` (a
  package order's plan granted) or ``fulfilment.succeeded`` (the backend confirmed a
  business order's effect) queues the order, a row of ``paylane_shipping`` written in the
  transaction of the inbox claim (the row's primary key makes it once per order);
* :class:`ShippingUploader`, a loop in every replica, one at a time (the lease
  ``paylane.shipping``): it uploads the rows due with ``upload_shipping_info`` and records
  the answer on the row. WeChat's "busy", "order not found yet" and system errors are
  retried with backoff (``next_attempt_at``, so retries survive restarts) for
  ``SHIPPING_RETRY_FOR_S`` after the order was queued; "already shipped" answers count
  as done; any other errcode flags the order (state ``failed``, its reason; the metric
  ``paylane_shipping_uploads_total{outcome="failed"}`` and its alert);
* :class:`AccessTokens`: WeChat's access token from ``stable_token``, kept in MySQL
  (``paylane_wechat_tokens``) so the replicas share it, refreshed before it expires by
  one replica at a time (the lease ``paylane.wechat_token``), cached in memory meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypedDict

import aiohttp
import aiomysql
import structlog

from paylane_common.contract.catalog import Package
from paylane_common.contract.china_time import CHINA
from paylane_common.contract.events import Entitlement, Envelope, FulfilmentSettled
from paylane_common.delivery import inbox
from paylane_common.runtime.background import BackgroundLoop
from paylane_common.runtime.exceptions import PaylaneError
from paylane_common.storage.db import is_duplicate_key, transaction
from paylane_common.storage.leases import Lease
from paylane_common.storage.rows import fetch_all, fetch_one

from . import INBOX_CONSUMER, metrics
from .config import ShippingConfig

log = structlog.get_logger(__name__)

#: WeChat's errcodes an upload is retried after: busy, the order not known yet (also
#: right after the payment), system errors.
RETRYABLE = frozenset({-1, 10060001, 10060012, 10060019})
#: The upload is done already: fully shipped, the one re-upload used, nothing changed.
ALREADY_DONE = frozenset({10060002, 10060003, 10060023})
#: The access token is invalid or expired: a new one, then the upload again.
TOKEN_REFUSED = frozenset({40001, 42001})
#: ``logistics_type`` 3: virtual goods; ``delivery_mode`` 1: unified (one item).
LOGISTICS_VIRTUAL = 3
DELIVERY_UNIFIED = 1
#: ``order_number_type`` 2: the order named by its WeChat Pay ``transaction_id``.
BY_TRANSACTION_ID = 2
#: ``shipping_list[].item_desc`` is at most 120 characters.
ITEM_DESC_MAX = 120
#: A retry waits at most this long.
MAX_BACKOFF_S = 3600.0
#: A token is refreshed this long before it expires (half its life when it is shorter).
REFRESH_BEFORE_S = 300
#: Rows the uploader reads a page.
PAGE = 50
TIMEOUT = aiohttp.ClientTimeout(total=10)


class WechatUnavailable(PaylaneError):
    """WeChat's API did not answer, or not with JSON: tried again later."""


class TokenUnavailable(PaylaneError):
    """No access token now (stable_token refused, or another replica is refreshing it)."""


class WechatApi:
    """The calls paylane makes to WeChat's mini-program API (``WECHAT_API_BASE``):
    ``stable_token`` and ``upload_shipping_info``. Answers are JSON objects, errors an
    ``errcode`` in them (HTTP 200). The access token goes in the query string: never
    logged, nor any URL that carries it."""

    def __init__(self, api_base: str, appid: str, app_secret: str) -> None:
        self._base = api_base.rstrip("/")
        self.appid = appid
        self._secret = app_secret
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def stable_token(self, force_refresh: bool = False) -> dict[str, Any]:
        body = {
            "grant_type": "client_credential",
            "appid": self.appid,
            "secret": self._secret,
            "force_refresh": force_refresh,
        }
        return await self._post("/cgi-bin/stable_token", body)

    async def upload_shipping_info(self, token: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self._post(
            "/wxa/sec/order/upload_shipping_info", body, {"access_token": token}
        )

    async def _post(
        self, path: str, body: Mapping[str, Any], params: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=TIMEOUT)
        try:
            async with self._http.post(self._base + path, json=body, params=params) as response:
                text = await response.text()
                if response.status >= 500:
                    raise WechatUnavailable(f"WeChat {path} answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WechatUnavailable(f"WeChat {path} unreachable: {type(exc).__name__}") from None
        try:
            answer = json.loads(text)
        except ValueError:
            raise WechatUnavailable(f"WeChat {path} answered something not JSON") from None
        if not isinstance(answer, dict):
            raise WechatUnavailable(f"WeChat {path} answered something not an object")
        return answer


class _TokenRow(TypedDict):
    access_token: str
    remaining_us: int | None
    fresh: int
    refused: int


class AccessTokens:
    """WeChat's access token of one mini-program, shared by the replicas through
    ``paylane_wechat_tokens``: read from there while it is fresh (refreshed
    ``REFRESH_BEFORE_S`` before it expires), cached in memory as long; refreshed with
    ``stable_token`` by one replica at a time, which takes the lease, reads the row again
    (another may have just refreshed it) and only then asks WeChat."""

    LOCK = "paylane.wechat_token"

    def __init__(self, pool: aiomysql.Pool, api: WechatApi, *, wait_s: float = 15.0) -> None:
        self._pool = pool
        self._api = api
        self._wait_s = wait_s
        self._lock = asyncio.Lock()
        self._cached: tuple[str, float] | None = None  # token, monotonic time to drop it

    async def token(self) -> str:
        cached = self._cached
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        async with self._lock:  # one refresher in this process
            cached = self._cached
            if cached is not None and time.monotonic() < cached[1]:
                return cached[0]
            found = await self._read()
            if found is None:
                async with Lease(self._pool, self.LOCK).held(self._wait_s) as held:
                    if not held:
                        raise TokenUnavailable("another replica is refreshing the access token")
                    found = await self._read() or await self._refresh()
            token, fresh_for_s = found
            self._cached = (token, time.monotonic() + fresh_for_s)
            return token

    async def invalidate(self, token: str) -> None:
        """WeChat refused ``token`` (40001, 42001): no replica uses it again, and the
        next refresh, whichever replica makes it, asks for a new one (``force_refresh``:
        a plain call would answer the same token while WeChat thinks it valid)."""
        self._cached = None
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE paylane_wechat_tokens SET refresh_after = NOW(6),"
                " invalidated_at = NOW(6) WHERE appid = %s AND access_token = %s",
                (self._api.appid, token),
            )

    async def _read(self) -> tuple[str, float] | None:
        """The shared token and how long it stays fresh; None when it is due."""
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT access_token,"
                " TIMESTAMPDIFF(MICROSECOND, NOW(6), refresh_after) AS remaining_us,"
                " refresh_after > NOW(6) AND expires_at > NOW(6) AS fresh,"
                " invalidated_at IS NOT NULL AS refused"
                " FROM paylane_wechat_tokens WHERE appid = %s",
                (self._api.appid,),
            )
            row = await fetch_one(cur, _TokenRow)
        if row is None or not row["fresh"] or row["refused"]:
            return None
        return row["access_token"], (row["remaining_us"] or 0) / 1e6

    async def _refused(self) -> bool:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT 1 FROM paylane_wechat_tokens WHERE appid = %s"
                " AND invalidated_at IS NOT NULL",
                (self._api.appid,),
            )
            return await cur.fetchone() is not None

    async def _refresh(self) -> tuple[str, float]:
        answer = await self._api.stable_token(force_refresh=await self._refused())
        token, expires_in = answer.get("access_token"), answer.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(expires_in, int):
            metrics.WECHAT_TOKEN_REFRESHES.labels("failed").inc()
            log.error(
                "wechat_token_refused", errcode=answer.get("errcode"), errmsg=answer.get("errmsg")
            )
            raise TokenUnavailable(
                f"stable_token refused: {answer.get('errcode')} {answer.get('errmsg')}"
            )
        fresh_for_s = max(expires_in - REFRESH_BEFORE_S, expires_in // 2)
        async with transaction(self._pool) as cur:
            await cur.execute(
                "INSERT INTO paylane_wechat_tokens"
                " (appid, access_token, expires_at, refresh_after, refreshed_at)"
                " VALUES (%s, %s, NOW(6) + INTERVAL %s SECOND, NOW(6) + INTERVAL %s SECOND,"
                " NOW(6)) ON DUPLICATE KEY UPDATE access_token = VALUES(access_token),"
                " expires_at = VALUES(expires_at), refresh_after = VALUES(refresh_after),"
                " refreshed_at = VALUES(refreshed_at), invalidated_at = NULL",
                (self._api.appid, token, expires_in, fresh_for_s),
            )
        metrics.WECHAT_TOKEN_REFRESHES.labels("refreshed").inc()
        log.info("wechat_token_refreshed", expires_in=expires_in)
        return token, float(fresh_for_s)


# --- queueing an order ------------------------------------------------------------------


class _OrderToShip(TypedDict):
    out_trade_no: str
    trade_type: str | None
    status: str | None
    package_type: str
    transaction_id: str | None
    payer_openid: str | None


class ShippingQueue:
    """The order consumer's handler of ``entitlement.granted`` and ``fulfilment.succeeded``:
    a JSAPI order whose effect is done gets its ``paylane_shipping`` row (once); anything
    else is acknowledged with the reason as its outcome."""

    def __init__(
        self,
        pool: aiomysql.Pool,
        config: ShippingConfig,
        catalog: Mapping[str, Package],
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.pool = pool
        self._config = config
        self._catalog = catalog
        self._on_commit = on_commit

    @property
    def enabled(self) -> bool:
        """``SHIPPING_UPLOAD`` is on: an effect done queues a shipping row."""
        return self._config.enabled

    async def __call__(self, envelope: Envelope, data: Entitlement | FulfilmentSettled) -> str:
        if not self._config.enabled:
            return "shipping_off"
        async with transaction(self.pool) as cur:
            if not await inbox.claim(cur, INBOX_CONSUMER, envelope.event_id):
                return "duplicate"
            # o.*: the order's own description where the row has one (business orders).
            await cur.execute(
                "SELECT o.*, COALESCE(NULLIF(o._openid, ''), u.openid) AS payer_openid"
                " FROM payment_orders o LEFT JOIN users u ON u.id = o.user_id"
                " WHERE o.out_trade_no = %s",
                (data.out_trade_no,),
            )
            order: dict[str, Any] | None = await cur.fetchone()
            outcome = self._skip(order, isinstance(data, Entitlement))
            if outcome is not None or order is None:
                return outcome or "shipping_no_order"
            queued = await self._queue(cur, order)
        if queued and self._on_commit is not None:
            self._on_commit()
        return "shipping_queued" if queued else "shipping_queued_before"

    async def _queue(self, cur: aiomysql.Cursor, order: Mapping[str, Any]) -> bool:
        """The order's shipping row; False when it has one already (a replay, or both a
        grant and a fulfilment of one order)."""
        try:
            await cur.execute(
                "INSERT INTO paylane_shipping"
                " (out_trade_no, transaction_id, openid, item_desc, logistics_type)"
                " VALUES (%s, %s, %s, %s, %s)",
                (
                    order["out_trade_no"],
                    order["transaction_id"] or "",
                    order["payer_openid"] or "",
                    self._item_desc(order),
                    LOGISTICS_VIRTUAL,
                ),
            )
        except Exception as exc:
            if is_duplicate_key(exc):
                return False
            raise
        return True

    def _skip(self, order: Mapping[str, Any] | None, granted: bool) -> str | None:
        """Why this order's shipping is not declared (None: it is)."""
        if order is None:
            return "shipping_no_order"
        if order["trade_type"] != "JSAPI":
            return "shipping_not_jsapi"  # only mini-program payments are trade-managed
        if order["status"] != "paid":
            return "shipping_not_paid"
        if granted and order["package_type"] == "free":
            return "shipping_awaits_fulfilment"  # a business order: the backend says when
        return None

    def _item_desc(self, order: Mapping[str, Any]) -> str:
        """The order's own description, else its package's (what WeChat Pay was told)."""
        package = self._catalog.get(order["package_type"])
        text = order.get("description") or (package.description if package else None)
        return (text or order["out_trade_no"])[:ITEM_DESC_MAX]


# --- uploading --------------------------------------------------------------------------


class ShippingRow(TypedDict):
    out_trade_no: str
    transaction_id: str
    openid: str
    item_desc: str
    logistics_type: int
    attempts: int
    age_us: int


def upload_body(row: ShippingRow, now: datetime) -> dict[str, Any]:
    """``upload_shipping_info``'s body for ``row``: one virtual item, the order by its
    transaction id, the payer, the upload time in China time (RFC 3339, +08:00)."""
    return {
        "order_key": {
            "order_number_type": BY_TRANSACTION_ID,
            "transaction_id": row["transaction_id"],
        },
        "logistics_type": row["logistics_type"],
        "delivery_mode": DELIVERY_UNIFIED,
        "shipping_list": [{"item_desc": row["item_desc"]}],
        "upload_time": now.astimezone(CHINA).isoformat(timespec="seconds"),
        "payer": {"openid": row["openid"]},
    }


class ShippingUploader(BackgroundLoop):
    """Uploads the shipping rows due, one replica at a time (the lease
    ``paylane.shipping``); woken when an order is queued, else every ``interval_s``."""

    LOCK = "paylane.shipping"
    task_name = "shipping"

    def __init__(
        self,
        pool: aiomysql.Pool,
        api: WechatApi,
        tokens: AccessTokens,
        config: ShippingConfig,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._pool = pool
        self._api = api
        self._tokens = tokens
        self._config = config
        self._clock = clock or (lambda: datetime.now(CHINA))
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def _run(self) -> None:
        while True:
            self._woken.clear()
            try:
                await self.run_once()
            except Exception as exc:
                log.warning("shipping_pass_failed", error=repr(exc))
            try:
                await asyncio.wait_for(self._woken.wait(), self._config.interval_s)
            except TimeoutError:
                pass

    async def run_once(self, wait_for_lock_s: float = 0) -> Counter[str]:
        """Upload what is due; the outcomes (empty when another replica holds the lease)."""
        outcomes: Counter[str] = Counter()
        async with Lease(self._pool, self.LOCK).held(wait_for_lock_s) as held:
            if not held:
                return outcomes
            while True:
                rows = await self._due()
                for row in rows:
                    outcome = await self._upload(row)
                    metrics.SHIPPING_UPLOADS.labels(outcome).inc()
                    outcomes[outcome] += 1
                if len(rows) < PAGE:
                    break
        return outcomes

    async def _due(self) -> list[ShippingRow]:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "SELECT out_trade_no, transaction_id, openid, item_desc, logistics_type,"
                " attempts, TIMESTAMPDIFF(MICROSECOND, queued_at, NOW(6)) AS age_us"
                " FROM paylane_shipping WHERE state = 'pending' AND next_attempt_at <= NOW(6)"
                " ORDER BY next_attempt_at LIMIT %s",
                (PAGE,),
            )
            return await fetch_all(cur, ShippingRow)

    async def _upload(self, row: ShippingRow) -> str:
        """One upload and its answer recorded: ``uploaded``, ``already_done``, ``retry``
        or ``failed``."""
        bound = log.bind(out_trade_no=row["out_trade_no"])
        if not row["transaction_id"] or not row["openid"]:
            missing = "transaction_id" if not row["transaction_id"] else "payer openid"
            return await self._fail(row, None, "", f"the order has no {missing}")
        try:
            token = await self._tokens.token()
            answer = await self._api.upload_shipping_info(token, upload_body(row, self._clock()))
        except (WechatUnavailable, TokenUnavailable) as exc:
            return await self._retry(row, None, str(exc))
        errcode, errmsg = _errcode(answer), str(answer.get("errmsg") or "")[:255]
        if errcode == 0:
            await self._done(row, None, "")
            bound.info("shipping_uploaded", attempts=row["attempts"] + 1)
            return "uploaded"
        if errcode in ALREADY_DONE:
            await self._done(row, errcode, errmsg)
            bound.info("shipping_already_done", errcode=errcode, errmsg=errmsg)
            return "already_done"
        if errcode in TOKEN_REFUSED:
            await self._tokens.invalidate(token)
            return await self._retry(row, errcode, errmsg)
        if errcode in RETRYABLE:
            return await self._retry(row, errcode, errmsg)
        return await self._fail(row, errcode, errmsg, f"WeChat refused it: {errcode} {errmsg}")

    def _backoff_s(self, attempts: int) -> float:
        return float(min(self._config.retry_base_s * 2 ** max(attempts - 1, 0), MAX_BACKOFF_S))

    async def _retry(self, row: ShippingRow, errcode: int | None, errmsg: str) -> str:
        attempts = row["attempts"] + 1
        delay_s = self._backoff_s(attempts)
        if row["age_us"] / 1e6 + delay_s > self._config.retry_for_s:
            why = f"{errcode} {errmsg}" if errcode is not None else errmsg
            reason = f"still not accepted after {self._config.retry_for_s:.0f} s: {why}"
            return await self._fail(row, errcode, errmsg, reason)
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE paylane_shipping SET attempts = attempts + 1,"
                " next_attempt_at = NOW(6) + INTERVAL %s MICROSECOND,"
                " last_errcode = %s, last_errmsg = %s"
                " WHERE out_trade_no = %s AND state = 'pending'",
                (int(delay_s * 1e6), errcode, errmsg[:255], row["out_trade_no"]),
            )
        log.info(
            "shipping_retry",
            out_trade_no=row["out_trade_no"],
            errcode=errcode,
            errmsg=errmsg,
            attempts=attempts,
            delay_s=delay_s,
        )
        return "retry"

    async def _done(self, row: ShippingRow, errcode: int | None, errmsg: str) -> None:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE paylane_shipping SET state = 'uploaded', attempts = attempts + 1,"
                " uploaded_at = NOW(6), last_errcode = %s, last_errmsg = %s"
                " WHERE out_trade_no = %s AND state = 'pending'",
                (errcode, errmsg or None, row["out_trade_no"]),
            )

    async def _fail(self, row: ShippingRow, errcode: int | None, errmsg: str, reason: str) -> str:
        async with transaction(self._pool) as cur:
            await cur.execute(
                "UPDATE paylane_shipping SET state = 'failed', attempts = attempts + 1,"
                " last_errcode = %s, last_errmsg = %s, failed_reason = %s"
                " WHERE out_trade_no = %s AND state = 'pending'",
                (errcode, errmsg or None, reason[:255], row["out_trade_no"]),
            )
        log.error(
            "shipping_failed",
            alert=True,
            out_trade_no=row["out_trade_no"],
            errcode=errcode,
            reason=reason,
        )
        return "failed"


def _errcode(answer: Mapping[str, Any]) -> int:
    try:
        return int(answer.get("errcode") or 0)
    except (TypeError, ValueError):
        return -1


# --- what GET /orders/{no} shows ----------------------------------------------------------


class OrderShipping(TypedDict):
    state: str
    attempts: int
    queued_at: datetime
    next_attempt_at: datetime
    uploaded_at: datetime | None
    last_errcode: int | None
    last_errmsg: str | None
    failed_reason: str | None


async def of_order(cur: aiomysql.Cursor, out_trade_no: str) -> OrderShipping | None:
    """The order's shipping row as ``GET /orders/{no}`` shows it (None: not declared)."""
    await cur.execute(
        "SELECT state, attempts, queued_at, next_attempt_at, uploaded_at, last_errcode,"
        " last_errmsg, failed_reason FROM paylane_shipping WHERE out_trade_no = %s",
        (out_trade_no,),
    )
    return await fetch_one(cur, OrderShipping)
