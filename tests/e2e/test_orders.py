"""Placing, settling and refunding orders at WeChat Pay (the sandbox as a process), end
to end with every service (issue: placing, settling and refunding orders)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from typing import Any

import aiohttp
import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from wechatpayv3 import WeChatPay, WeChatPayType

from paylane_common.storage.db import transaction
from tests.support.clients import wait_for_types, ws_next
from tests.support.dead_letters import dead_letter
from tests.support.polling import eventually
from tests.support.queries import fetch_one, grants, order_status, user_state
from tests.support.stack import Stack
from tests.support.stack_api import Order, call, new_order, sandbox
from tests.support.stack_config import BACKEND, INTERNAL, order_env
from tests.support.wechat import APP_APPID, FakeWechat

pytestmark = pytest.mark.e2e


async def until_status(pool: aiomysql.Pool, out_trade_no: str, status: str, timeout: float = 20):
    async def reached() -> bool:
        return await order_status(pool, out_trade_no) == status

    await eventually(reached, timeout, what=f"{out_trade_no} {status}")


async def api(
    stack: Stack, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    return await call(stack, "order", method, path, body, headers)


def check_app_pay_params(pay: dict[str, str], wechat: FakeWechat) -> None:
    """The APP SDK's ``PayReq`` (its field names: the library's tests), placed under the
    mobile app's appid; ``sign`` exactly what the independent SDK (wechatpayv3) computes."""
    assert (pay["appid"], pay["partnerid"], pay["package"]) == (
        APP_APPID,
        wechat.mchid,
        "Sign=WXPay",
    )
    assert pay["prepayid"].startswith("wx") and pay["timestamp"].isdigit()
    independent = WeChatPay(
        wechatpay_type=WeChatPayType.APP,
        mchid=wechat.mchid,
        private_key=wechat.merchant_private_key_pem,
        cert_serial_no=wechat.merchant_serial_no,
        appid=APP_APPID,
        apiv3_key=wechat.apiv3_key,
        public_key=wechat.platform_public_key_pem,
        public_key_id=wechat.public_key_id,
    )
    fields = [pay["appid"], pay["timestamp"], pay["noncestr"], pay["prepayid"]]
    assert pay["sign"] == independent.sign(fields)


@pytest.mark.parametrize("trade_type", ["JSAPI", "NATIVE", "H5", "APP"])
async def test_order_placed_paid_pushed_and_granted(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat, trade_type: str
) -> None:
    extra = {"client_ip": "203.0.113.7"} if trade_type == "H5" else {}
    order = await new_order(stack, "basic", trade_type, generation_id="gen-e2e-1", **extra)
    assert order.amount_total == 1  # from the server-side catalog: basic is 0.01 yuan
    if trade_type == "JSAPI":
        pay = order.pay
        assert pay["signType"] == "RSA" and pay["package"].startswith("prepay_id=")
        message = "".join(
            f"{pay[k]}\n" for k in ("appId", "timeStamp", "nonceStr", "package")
        ).encode()
        wechat.merchant_key.public_key().verify(
            base64.b64decode(pay["paySign"]), message, padding.PKCS1v15(), hashes.SHA256()
        )
    elif trade_type == "APP":
        check_app_pay_params(order.pay, wechat)
    elif trade_type == "NATIVE":
        assert order.pay["code_url"].startswith("weixin://")
    else:
        assert order.pay["h5_url"].startswith("https://")

    async with aiohttp.ClientSession() as http:
        # POST /orders's ticket, under its older parameter name (docs/notifier.md).
        ws = await http.ws_connect(
            f"{stack.services['notifier'].url}/ws?token={order.stream_ticket}"
        )
        assert (await ws_next(ws))["type"] == "order.state"
        status, paid = await sandbox(stack, "POST", f"/sandbox/orders/{order.out_trade_no}/pay")
        assert status == 200, paid
        seen = await wait_for_types(lambda: ws_next(ws), {"order.paid", "entitlement.granted"})
        await ws.close()
    assert {m["type"] for m in seen} >= {"order.paid", "entitlement.granted"}
    assert await order_status(db_pool, order.out_trade_no) == "paid"
    assert await user_state(db_pool, order.user_id) == ("basic", 23)

    # The owner polls the status as a fallback; anyone else gets 404.
    status, view = await api(
        stack,
        "GET",
        f"/orders/{order.out_trade_no}",
        headers={"Authorization": f"Bearer {order.client_token}"},
    )
    assert status == 200
    assert (view["status"], view["transaction_id"]) == ("paid", paid["transaction_id"])
    assert (view["amount"], view["generation_id"]) == ("0.01", "gen-e2e-1")
    other = await new_order(stack, "basic", "NATIVE")
    status, _ = await api(
        stack,
        "GET",
        f"/orders/{order.out_trade_no}",
        headers={"Authorization": f"Bearer {other.client_token}"},
    )
    assert status == 404


async def test_dropped_notification_is_recovered_by_the_reconciler_once(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    order = await new_order(stack, "premium", "NATIVE")
    await sandbox(stack, "PUT", "/sandbox/switches", {"drop_next": 1})
    try:
        status, paid = await sandbox(stack, "POST", f"/sandbox/orders/{order.out_trade_no}/pay")
        assert status == 200
    finally:
        await sandbox(stack, "PUT", "/sandbox/switches", {"drop_next": 0})
    _, notes = await sandbox(
        stack, "GET", f"/sandbox/notifications?out_trade_no={order.out_trade_no}"
    )
    assert [n["dropped"] for n in _items(notes)] == [True]

    await until_status(db_pool, order.out_trade_no, "paid")
    log = await fetch_one(
        db_pool,
        "SELECT source FROM payment_logs WHERE out_trade_no = %s AND kind = 'paid'",
        order.out_trade_no,
    )
    assert log["source"] == "reconcile"

    # The notification WeChat finally delivers late changes nothing.
    _, state = await sandbox(stack, "GET", f"/sandbox/orders/{order.out_trade_no}")
    late = wechat.notify(state["transaction"])
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{stack.services['ingress'].url}/notify/wechatpay", data=late[1], headers=late[0]
        ) as response:
            assert response.status == 204

    async def late_seen() -> bool:
        row = await fetch_one(
            db_pool,
            "SELECT COUNT(*) AS n FROM payment_logs WHERE out_trade_no = %s"
            " AND kind = 'duplicate_notification'",
            order.out_trade_no,
        )
        return row["n"] >= 1

    await eventually(late_seen, what="the late notification consumed")
    assert (await grants(db_pool, order.out_trade_no))["n"] == 1
    assert await user_state(db_pool, order.user_id) == ("premium", 103)
    assert paid["transaction_id"] == state["transaction_id"]


async def test_unpaid_order_expires_then_a_late_payment_is_honoured(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    order = await new_order(stack, "basic", "NATIVE")
    # failed: the shared schema's word for an order that timed out or was cancelled.
    await until_status(db_pool, order.out_trade_no, "failed", timeout=30)
    _, state = await sandbox(stack, "GET", f"/sandbox/orders/{order.out_trade_no}")
    assert state["trade_state"] == "CLOSED"  # closed at WeChat Pay too

    status, _ = await sandbox(
        stack, "POST", f"/sandbox/orders/{order.out_trade_no}/pay", {"force": True}
    )
    assert status == 200
    await until_status(db_pool, order.out_trade_no, "paid")
    row = await fetch_one(
        db_pool,
        "SELECT detail FROM payment_logs WHERE out_trade_no = %s AND kind = 'paid'",
        order.out_trade_no,
    )
    assert row["detail"] == "paid after close"

    async def granted() -> bool:
        return (await grants(db_pool, order.out_trade_no))["n"] == 1

    await eventually(granted, what="grant after a late payment")


async def _paid_order(stack: Stack, pool: aiomysql.Pool, package: str) -> Order:
    order = await new_order(stack, package, "NATIVE")
    status, _ = await sandbox(stack, "POST", f"/sandbox/orders/{order.out_trade_no}/pay")
    assert status == 200

    async def granted() -> bool:
        return (await grants(pool, order.out_trade_no))["n"] == 1

    await eventually(granted, what="grant")
    return order


async def _refund(stack: Stack, out_trade_no: str, body: dict[str, Any]) -> str:
    status, answer = await api(stack, "POST", f"/orders/{out_trade_no}/refunds", body, BACKEND)
    assert status == 202, answer
    return str(answer["out_refund_no"])


async def test_partial_then_full_refund_revokes_exactly_once(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    order = await _paid_order(stack, db_pool, "premium")
    assert await user_state(db_pool, order.user_id) == ("premium", 103)

    partial = await _refund(stack, order.out_trade_no, {"amount": 1000, "reason": "goodwill"})
    await sandbox(stack, "POST", f"/sandbox/refunds/{partial}/complete", {"status": "SUCCESS"})

    async def partial_recorded() -> bool:
        row = await fetch_one(
            db_pool,
            "SELECT amount_refunded FROM payment_orders WHERE out_trade_no = %s",
            order.out_trade_no,
        )
        return row["amount_refunded"] == 1000

    await eventually(partial_recorded, what="partial refund recorded")
    assert await order_status(db_pool, order.out_trade_no) == "paid"
    assert await user_state(db_pool, order.user_id) == ("premium", 103)

    # The rest, with WeChat's refund notification arriving twice.
    rest = await _refund(stack, order.out_trade_no, {"reason": "cancelled"})
    await sandbox(stack, "PUT", "/sandbox/switches", {"duplicate": 1})
    try:
        await sandbox(stack, "POST", f"/sandbox/refunds/{rest}/complete", {"status": "SUCCESS"})
        await until_status(db_pool, order.out_trade_no, "refunded")

        async def revoked() -> bool:
            return (await grants(db_pool, order.out_trade_no))["revoked"] == 1

        await eventually(revoked, what="entitlement revoked")
        _, notes = await sandbox(stack, "GET", f"/sandbox/notifications?out_refund_no={rest}")
        assert len(_items(notes)) >= 1
    finally:
        await sandbox(stack, "PUT", "/sandbox/switches", {"duplicate": 0})
    assert await user_state(db_pool, order.user_id) == ("free", 3)
    revocations = await fetch_one(
        db_pool,
        "SELECT COUNT(*) AS n FROM outbox WHERE routing_key = 'entitlement.revoked'"
        " AND payload LIKE %s",
        f"%{order.out_trade_no}%",
    )
    assert revocations["n"] == 1


async def test_abnormal_refund_is_recorded_and_surfaced(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    order = await _paid_order(stack, db_pool, "basic")
    refund = await _refund(stack, order.out_trade_no, {"reason": "card closed"})
    await sandbox(stack, "POST", f"/sandbox/refunds/{refund}/complete", {"status": "ABNORMAL"})

    async def surfaced() -> bool:
        _, view = await api(stack, "GET", f"/orders/{order.out_trade_no}", headers=BACKEND)
        return [r["status"] for r in view["refunds"]] == ["abnormal"]

    await eventually(surfaced, what="abnormal refund surfaced")
    assert await order_status(db_pool, order.out_trade_no) == "paid"
    assert (await grants(db_pool, order.out_trade_no))["revoked"] == 0


async def _abnormal_refund(stack: Stack, pool: aiomysql.Pool) -> tuple[Order, str]:
    """A paid order whose refund WeChat Pay reports ABNORMAL, recorded here as such."""
    order = await _paid_order(stack, pool, "basic")
    refund = await _refund(stack, order.out_trade_no, {"reason": "card closed"})
    await sandbox(stack, "POST", f"/sandbox/refunds/{refund}/complete", {"status": "ABNORMAL"})

    async def recorded() -> bool:
        row = await fetch_one(pool, "SELECT status FROM refunds WHERE out_refund_no = %s", refund)
        return row["status"] == "abnormal"

    await eventually(recorded, what="abnormal refund recorded")
    return order, refund


async def _paylane(stack: Stack, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """The ``paylane`` command with the order service's settings."""
    env = {**os.environ, **stack.base_env, **order_env(stack.services["sandbox"].url)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paylane.cli",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_abnormal_refund_remedied_to_a_card_through_the_api(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    order, refund = await _abnormal_refund(stack, db_pool)
    status, listed = await api(stack, "GET", "/refunds/abnormal", headers=BACKEND)
    assert status == 200
    [row] = [r for r in listed["refunds"] if r["out_refund_no"] == refund]
    assert row["abnormal_at"] and row["remedy"] is None
    assert (await api(stack, "GET", "/refunds/abnormal"))[0] == 401

    path = f"/refunds/{refund}/apply-abnormal-refund"
    card = {
        "type": "USER_BANK_CARD",
        "bank_type": "ICBC_DEBIT",
        "bank_account": "6214830000000001",
        "real_name": "李四",
    }
    assert (await api(stack, "POST", path, card))[0] == 401  # backend only
    bad = {"type": "USER_BANK_CARD", "bank_type": "ICBC_DEBIT"}
    status, answer = await api(stack, "POST", path, bad, BACKEND)
    assert (status, answer["error"]) == (400, "invalid_remedy")
    status, answer = await api(stack, "POST", path, card, BACKEND)
    assert status == 202, answer
    assert (answer["status"], answer["remedy"], answer["remedy_result"]) == (
        "pending",
        "USER_BANK_CARD",
        "PROCESSING",
    )
    _, at_wechat = await sandbox(stack, "GET", f"/sandbox/refunds/{refund}")
    assert at_wechat["abnormal_refund"] == {
        "type": "USER_BANK_CARD",
        "bank_type": "ICBC_DEBIT",
        "bank_account": "6214830000000001",
        "real_name": "李四",
    }
    status, again = await api(stack, "POST", path, card, BACKEND)
    assert (status, again["error"]) == (409, "refund_not_abnormal")

    # WeChat Pay pays it out to the card: REFUND.SUCCESS settles it as any refund.
    await sandbox(stack, "POST", f"/sandbox/refunds/{refund}/complete", {"status": "SUCCESS"})
    await until_status(db_pool, order.out_trade_no, "refunded")
    final = await fetch_one(
        db_pool, "SELECT status, abnormal_at, remedy FROM refunds WHERE out_refund_no = %s", refund
    )
    assert (final["status"], final["remedy"]) == ("success", "USER_BANK_CARD")
    assert final["abnormal_at"] is not None


async def test_abnormal_refund_remedied_with_the_cli(stack: Stack, db_pool: aiomysql.Pool) -> None:
    _, refund = await _abnormal_refund(stack, db_pool)
    code, out, err = await _paylane(stack, "refund", "abnormal", "list", "--json")
    assert code == 0, err
    assert refund in [r["out_refund_no"] for r in json.loads(out)]

    code, out, err = await _paylane(
        stack,
        *("refund", "abnormal", "apply", refund, "--type", "USER_BANK_CARD"),
        *("--bank-type", "CMB_DEBIT", "--json"),
        stdin="6214830000000002\n王五\n",
    )
    assert code == 0, err
    [row] = json.loads(out)
    assert (row["status"], row["remedy_result"]) == ("pending", "PROCESSING")
    assert "6214830000000002" not in out + err
    _, at_wechat = await sandbox(stack, "GET", f"/sandbox/refunds/{refund}")
    assert at_wechat["abnormal_refund"]["bank_account"] == "6214830000000002"
    assert at_wechat["abnormal_refund"]["real_name"] == "王五"

    code, _, err = await _paylane(
        stack, "refund", "abnormal", "apply", refund, "--type", "MERCHANT_BANK_CARD"
    )
    assert code == 1 and "not abnormal" in err


async def test_client_errors_are_clear(stack: Stack, db_pool: aiomysql.Pool) -> None:
    order = {"package_type": "basic", "trade_type": "NATIVE"}
    # (body, status, error, what the message names)
    cases = [
        ({**order, "openid": "o-x", "package_type": "gold"}, 400, "unknown_package", "gold"),
        ({**order, "openid": "o-x", "trade_type": "APPLET"}, 400, "invalid_request", "trade_type"),
        ({**order, "user_id": "user-1-nobody"}, 404, "unknown_user", "user-1-nobody"),
        # users.id is a string (user-1706345678901-xyz789): a number is not converted.
        ({**order, "user_id": 999999999}, 400, "invalid_request", "user_id"),
        ({**order, "user_id": "u" * 37}, 400, "invalid_request", "user_id"),
        (
            {**order, "openid": "o-x", "generation_id": "g" * 37},
            400,
            "invalid_request",
            "generation_id",
        ),
        # It becomes WeChat Pay's attach and a column of the daily bill: a comma in one
        # once failed a whole day's bill reconciliation.
        (
            {**order, "openid": "o-x", "generation_id": "gen-1,`2"},
            400,
            "invalid_request",
            "generation_id",
        ),
        (order, 400, "user_required", "user_id or openid"),
    ]
    for body, status, code, named in cases:
        got, answer = await api(stack, "POST", "/orders", body, BACKEND)
        assert (got, answer["error"]) == (status, code), (body, answer)
        assert named in answer["message"], answer

    # JSAPI needs the payer's openid: a user created without one cannot pay by JSAPI.
    native = await new_order(stack, "basic", "NATIVE")
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute("UPDATE users SET openid = NULL WHERE id = %s", (native.user_id,))
        await conn.commit()
    got, answer = await api(
        stack,
        "POST",
        "/orders",
        {"user_id": native.user_id, "package_type": "basic", "trade_type": "JSAPI"},
        BACKEND,
    )
    assert (got, answer["error"]) == (400, "openid_required")

    unpaid = await new_order(stack, "basic", "NATIVE")
    got, answer = await api(
        stack, "POST", f"/orders/{unpaid.out_trade_no}/refunds", {"reason": "x"}, BACKEND
    )
    assert (got, answer["error"]) == (409, "order_not_paid")

    paid = await _paid_order(stack, db_pool, "premium")
    got, answer = await api(
        stack,
        "POST",
        f"/orders/{paid.out_trade_no}/refunds",
        {"amount": 2991, "reason": "x"},
        BACKEND,
    )
    assert (got, answer["error"]) == (400, "refund_exceeds_paid")
    got, answer = await api(stack, "POST", f"/orders/{paid.out_trade_no}/refunds", {"reason": "x"})
    assert got == 401  # refunds need the backend secret


async def test_a_key_given_twice_on_a_money_route_is_400_and_nothing_is_done(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    """``{"amount": 1, "amount": 2990}`` once refunded 2990 (a JSON parser keeps the last
    of two equal keys; the caller, or a proxy that checked the body, may have read the
    first): a body two readers would understand differently is refused."""
    paid = await _paid_order(stack, db_pool, "premium")
    status, answer = await call(
        stack,
        "order",
        "POST",
        f"/orders/{paid.out_trade_no}/refunds",
        headers=BACKEND,
        raw=b'{"amount": 1, "amount": 2990, "reason": "goodwill"}',
    )
    assert (status, answer["error"]) == (400, "invalid_request"), answer
    assert "amount" in answer["message"]
    assert await _refund_rows(db_pool, paid.out_trade_no) == []

    order = b'{"openid": "o-twice", "package_type": "basic", "package_type": "premium",'
    status, answer = await call(
        stack, "order", "POST", "/orders", headers=BACKEND, raw=order + b' "trade_type": "NATIVE"}'
    )
    assert (status, answer["error"]) == (400, "invalid_request"), answer
    assert "package_type" in answer["message"]


async def test_idempotency_key_returns_the_same_order(stack: Stack) -> None:
    body = {"openid": "o-idem-user", "package_type": "premium", "trade_type": "NATIVE"}
    headers = {"Idempotency-Key": "checkout-42", **BACKEND}
    first = await api(stack, "POST", "/orders", body, headers)
    again = await api(stack, "POST", "/orders", body, headers)
    assert (first[0], again[0]) == (201, 200)
    assert first[1]["out_trade_no"] == again[1]["out_trade_no"]
    other = await api(stack, "POST", "/orders", {**body, "package_type": "basic"}, headers)
    assert (other[0], other[1]["error"]) == (409, "idempotency_key_reused")


async def test_wechatpay_errors_retried_or_surfaced(stack: Stack) -> None:
    await sandbox(stack, "DELETE", "/sandbox/faults")
    await sandbox(
        stack,
        "POST",
        "/sandbox/faults",
        {
            "path_prefix": "/v3/pay/transactions",
            "method": "POST",
            "count": 1,
            "status": 500,
            "code": "SYSTEM_ERROR",
        },
    )
    order = await new_order(stack, "basic", "NATIVE")  # succeeded on the second attempt
    assert order.pay["code_url"]
    _, faults = await sandbox(stack, "GET", "/sandbox/faults")
    assert _items(faults) == []

    await sandbox(
        stack,
        "POST",
        "/sandbox/faults",
        {
            "path_prefix": "/v3/pay/transactions",
            "method": "POST",
            "count": 2,
            "status": 400,
            "code": "PARAM_ERROR",
            "message": "description too long",
        },
    )
    try:
        status, answer = await api(
            stack,
            "POST",
            "/orders",
            {"openid": "o-err", "package_type": "basic", "trade_type": "NATIVE"},
            BACKEND,
        )
        assert (status, answer["error"]) == (502, "wechatpay_rejected")
        assert "PARAM_ERROR" in answer["message"]
        assert len(answer["wechatpay_request_id"]) == 32  # what WeChat support asks for
        _, faults = await sandbox(stack, "GET", "/sandbox/faults")
        assert [f["remaining"] for f in _items(faults)] == [1]  # not retried
    finally:
        await sandbox(stack, "DELETE", "/sandbox/faults")


async def test_an_unverifiable_answer_is_a_502_with_wechats_request_id(stack: Stack) -> None:
    """The order service holds the public key only: answers signed under the platform
    certificate cannot be verified (no 500); in the migration mode it names its key."""
    body = {"openid": "o-unverified", "package_type": "basic", "trade_type": "NATIVE"}
    await sandbox(stack, "PUT", "/sandbox/switches", {"sign_mode": "certificate"})
    try:
        status, answer = await api(stack, "POST", "/orders", body, BACKEND)
        assert (status, answer["error"]) == (502, "wechatpay_unverified"), answer
        assert "unknown_serial" in answer["message"]
        assert len(answer["wechatpay_request_id"]) == 32

        await sandbox(stack, "PUT", "/sandbox/switches", {"sign_mode": "mixed"})
        order = await new_order(stack, "basic", "NATIVE")
        assert order.pay["code_url"]
    finally:
        await sandbox(stack, "PUT", "/sandbox/switches", {"sign_mode": "public_key"})


async def test_internal_notify_without_amount_is_confirmed_by_a_query(
    stack: Stack, db_pool: aiomysql.Pool, amqp_connection: AbstractRobustConnection
) -> None:
    order = await new_order(stack, "basic", "NATIVE")
    _, paid = await sandbox(
        stack, "POST", f"/sandbox/orders/{order.out_trade_no}/pay", {"notify": False}
    )
    forged = await new_order(stack, "basic", "NATIVE")  # not paid at WeChat Pay
    async with aiohttp.ClientSession() as http:
        for out_trade_no, txn in (
            (order.out_trade_no, paid["transaction_id"]),
            (forged.out_trade_no, "4200000000000000000000000001"),
        ):
            async with http.post(
                f"{stack.services['ingress'].url}/api/payment/internal/notify",
                json={"outTradeNo": out_trade_no, "transactionId": txn, "status": "paid"},
                headers=INTERNAL,
            ) as response:
                assert response.status == 200
    await until_status(db_pool, order.out_trade_no, "paid")

    letter = await dead_letter(amqp_connection, "order.payments", forged.out_trade_no)
    assert "does not confirm the payment" in str(letter.headers["x-paylane-reason"])
    assert await order_status(db_pool, forged.out_trade_no) in ("pending", "failed")  # not paid
    assert (await grants(db_pool, forged.out_trade_no))["n"] == 0


def _items(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        for key in ("notifications", "faults", "items"):
            if key in data:
                return list(data[key])
    return list(data)


async def test_close_an_unpaid_order_and_refuse_closing_a_paid_one(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    order = await new_order(stack, "basic", "NATIVE")
    owner = {"Authorization": f"Bearer {order.client_token}"}
    status, view = await api(stack, "POST", f"/orders/{order.out_trade_no}/close", None, owner)
    assert (status, view["status"]) == (200, "failed")
    assert view["closed_at"] is not None
    _, state = await sandbox(stack, "GET", f"/sandbox/orders/{order.out_trade_no}")
    assert state["trade_state"] == "CLOSED"

    paid = await _paid_order(stack, db_pool, "basic")
    status, answer = await api(stack, "POST", f"/orders/{paid.out_trade_no}/close", None, BACKEND)
    assert (status, answer["error"]) == (409, "order_not_pending")
    status, _ = await api(stack, "POST", f"/orders/{paid.out_trade_no}/close")
    assert status == 401  # no credentials


async def _fail_next(stack: Stack, path_prefix: str, count: int = 4) -> None:
    """WeChat Pay answers the next ``count`` POSTs under ``path_prefix`` with 500: enough
    for paylane's client to give up (503)."""
    await sandbox(stack, "DELETE", "/sandbox/faults")
    status, _ = await sandbox(
        stack,
        "POST",
        "/sandbox/faults",
        {"path_prefix": path_prefix, "method": "POST", "count": count, "status": 500},
    )
    assert status == 201


async def _refund_rows(pool: aiomysql.Pool, out_trade_no: str) -> list[tuple[int, str]]:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT amount_refund, status FROM refunds WHERE out_trade_no = %s"
            " ORDER BY created_at, id",
            (out_trade_no,),
        )
        rows = await cur.fetchall()
    return [(int(r["amount_refund"]), str(r["status"])) for r in rows]


async def test_a_refund_retried_after_a_503_is_one_refund(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    order = await _paid_order(stack, db_pool, "premium")
    path = f"/orders/{order.out_trade_no}/refunds"
    body = {"amount": 300, "reason": "goodwill"}
    keyed = {**BACKEND, "Idempotency-Key": "refund-goodwill-1"}
    await _fail_next(stack, "/v3/refund/domestic/refunds")
    try:
        status, answer = await api(stack, "POST", path, body, keyed)
        assert (status, answer["error"]) == (503, "wechatpay_unavailable")
    finally:
        await sandbox(stack, "DELETE", "/sandbox/faults")
    status, first = await api(stack, "POST", path, body, keyed)  # the caller's retry
    assert status == 202, first
    status, again = await api(stack, "POST", path, body, keyed)  # and once more
    assert (status, again) == (202, first)
    assert await _refund_rows(db_pool, order.out_trade_no) == [(300, "pending")]
    _, at_wechat = await sandbox(stack, "GET", f"/sandbox/refunds/{first['out_refund_no']}")
    assert at_wechat["amount"]["refund"] == 300  # placed at WeChat Pay by the retry

    # A caller-given out_refund_no is as good as a key.
    named = {"amount": 200, "reason": "second", "out_refund_no": f"MY-{order.out_trade_no}"}
    await _fail_next(stack, "/v3/refund/domestic/refunds")
    try:
        status, _ = await api(stack, "POST", path, named, BACKEND)
        assert status == 503
    finally:
        await sandbox(stack, "DELETE", "/sandbox/faults")
    status, answer = await api(stack, "POST", path, named, BACKEND)
    assert (status, answer["out_refund_no"]) == (202, named["out_refund_no"])
    assert await _refund_rows(db_pool, order.out_trade_no) == [(300, "pending"), (200, "pending")]

    # The same key for another amount is refused; an over-long key is a 400.
    status, answer = await api(stack, "POST", path, {**body, "amount": 400}, keyed)
    assert (status, answer["error"]) == (409, "idempotency_key_reused")
    status, answer = await api(stack, "POST", path, body, {**BACKEND, "Idempotency-Key": "k" * 129})
    assert (status, answer["error"]) == (400, "invalid_request")


async def test_an_order_retried_after_a_503_is_placed_at_wechatpay(stack: Stack) -> None:
    body = {"openid": "o-retry-user", "package_type": "basic", "trade_type": "NATIVE"}
    headers = {"Idempotency-Key": "checkout-retry-1", **BACKEND}
    await _fail_next(stack, "/v3/pay/transactions/native")
    try:
        status, answer = await api(stack, "POST", "/orders", body, headers)
        assert (status, answer["error"]) == (503, "wechatpay_unavailable")
    finally:
        await sandbox(stack, "DELETE", "/sandbox/faults")
    status, answer = await api(stack, "POST", "/orders", body, headers)
    assert status == 200, answer
    assert answer["pay"]["code_url"].startswith("weixin://")
    status, state = await sandbox(stack, "GET", f"/sandbox/orders/{answer['out_trade_no']}")
    assert (status, state["trade_state"]) == (200, "NOTPAY")

    status, answer = await api(
        stack, "POST", "/orders", body, {"Idempotency-Key": "k" * 129, **BACKEND}
    )
    assert (status, answer["error"]) == (400, "invalid_request")


async def test_money_is_fen_integers_or_yuan_strings(stack: Stack, db_pool: aiomysql.Pool) -> None:
    status, prices = await api(stack, "GET", "/prices/current")
    assert status == 200
    assert prices["packages"] == {"basic": "0.01", "premium": "29.90"}
    order = await _paid_order(stack, db_pool, "premium")
    _, view = await api(stack, "GET", f"/orders/{order.out_trade_no}", headers=BACKEND)
    assert (view["amount"], view["amount_total"], view["amount_refunded"]) == ("29.90", 2990, 0)


async def test_orders_the_system_before_paylane_wrote_are_read_as_they_are(stack: Stack) -> None:
    """The seed's rows (tests/support/seed_db.py), written by the cloud function in 2024:
    none of paylane's columns set, amounts in yuan only. The API shows them all the same,
    the fen generated from the yuan."""
    status, paid = await api(stack, "GET", "/orders/170634568000254321", headers=BACKEND)
    assert status == 200, paid
    assert {k: paid[k] for k in ("user_id", "status", "amount", "amount_total")} == {
        "user_id": "user-1706345679999-abc123",
        "status": "paid",
        "amount": "29.90",
        "amount_total": 2990,
    }
    assert (paid["generation_id"], paid["expires_at"], paid["amount_refunded"]) == (
        "gen-0002",
        None,
        0,
    )
    assert paid["paid_at"].startswith("2024-01-27T09:02:00")
    status, refunded = await api(stack, "GET", "/orders/170634568000398765", headers=BACKEND)
    assert (status, refunded["status"], refunded["amount_refunded"]) == (200, "refunded", 2990)
    assert [(r["out_refund_no"], r["amount_refund"], r["status"]) for r in refunded["refunds"]] == [
        ("RF170634569000123456", 2990, "success")
    ]
    status, failed = await api(stack, "GET", "/orders/170634568000411111", headers=BACKEND)
    assert (status, failed["status"], failed["trade_type"]) == (200, "failed", "H5")
