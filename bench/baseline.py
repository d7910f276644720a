"""The baseline: what teams write today. One aiohttp handler that verifies, decrypts and
updates MySQL inline (order + user in one transaction) before answering WeChat Pay.

Run as a process: ``python -m bench.baseline`` with MYSQL_URL, WECHATPAY_APIV3_KEY,
WECHATPAY_PUBLIC_KEY(_ID), HTTP_PORT. Same crypto as paylane, so the comparison is about
the architecture, not the code quality of the handler.
"""

from __future__ import annotations

import os

import aiomysql
import uvloop
from aiohttp import web

from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_common.storage import db
from paylane_common.wechatpay import (
    NotificationHeaders,
    NotificationVerifier,
    VerifierKeys,
    WechatPayError,
    decrypt_notification,
    load_public_key,
    parse_notification,
)

POOL = web.AppKey("pool", aiomysql.Pool)
VERIFIER = web.AppKey("verifier", NotificationVerifier)
APIV3_KEY = web.AppKey("apiv3_key", bytes)


async def notify(request: web.Request) -> web.Response:
    body = await request.read()
    try:
        request.app[VERIFIER].verify(NotificationHeaders.from_mapping(request.headers), body)
        resource = decrypt_notification(parse_notification(body), request.app[APIV3_KEY])
    except (WechatPayError, ValueError):
        return web.json_response({"code": "FAIL", "message": "bad notification"}, status=401)
    amount = resource["amount"]["total"]
    async with db.transaction(request.app[POOL]) as cur:
        await cur.execute(
            "SELECT user_id, package_type, amount_total, status FROM payment_orders"
            " WHERE out_trade_no = %s FOR UPDATE",
            (resource["out_trade_no"],),
        )
        order = await cur.fetchone()
        if order is None or order["amount_total"] != amount:
            return web.json_response({"code": "FAIL", "message": "no such order"}, status=404)
        if order["status"] == "pending":
            package = DEFAULT_CATALOG[order["package_type"]]
            await cur.execute(
                "UPDATE payment_orders SET status = 'paid', transaction_id = %s, paid_at = NOW(6)"
                " WHERE out_trade_no = %s",
                (resource["transaction_id"], resource["out_trade_no"]),
            )
            await cur.execute(
                "UPDATE users SET payment_status = %s, regenerate_count = regenerate_count + %s"
                " WHERE id = %s",
                (package.payment_status, package.regenerate_grant, order["user_id"]),
            )
    return web.Response(status=204)


async def pool_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    async with db.create_pool(os.environ["MYSQL_URL"], maxsize=10) as pool:
        app[POOL] = pool
        yield


def main() -> None:
    keys = VerifierKeys(
        os.environ["WECHATPAY_PUBLIC_KEY_ID"], load_public_key(os.environ["WECHATPAY_PUBLIC_KEY"])
    )
    app = web.Application()
    app[VERIFIER] = NotificationVerifier(
        keys, max_skew_s=int(os.environ.get("NOTIFY_MAX_SKEW_S", "300"))
    )
    app[APIV3_KEY] = os.environ["WECHATPAY_APIV3_KEY"].encode()
    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post("/notify/wechatpay", notify)
    app.router.add_get("/readyz", lambda _r: web.json_response({"status": "ready"}))
    web.run_app(  # on uvloop, as paylane's services run: the comparison is of designs
        app,
        host="127.0.0.1",
        port=int(os.environ["HTTP_PORT"]),
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
