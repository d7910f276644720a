"""Who may act for a user (issue: security and money correctness).

Placing an order is an authenticated act: the app's backend with ``BACKEND_API_SECRET``
for any user, an end user with the session token of ``POST /auth/miniprogram`` for
themselves. Anonymous callers get 401; a user's token never reaches another user's orders
on any route or transport; the cloud function's ``INTERNAL_API_SECRET`` opens nothing on
the order API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.support import hygiene
from tests.support.clients import SSEClient
from tests.support.dead_letters import dead_letter
from tests.support.queries import order_status
from tests.support.stack import Stack
from tests.support.stack_api import call, new_order, sandbox, stream_ticket
from tests.support.stack_config import BACKEND, INTERNAL, ORDER_ENV, order_env

pytestmark = pytest.mark.e2e


async def login(stack: Stack, openid: str | None = None) -> dict[str, Any]:
    """A mini-program login: the sandbox hands out a code for ``openid``, paylane trades it."""
    openid = openid or f"o-login-{uuid.uuid4().hex[:12]}"
    hygiene.register(openid)
    status, issued = await sandbox(stack, "POST", "/sandbox/miniprogram/codes", {"openid": openid})
    assert status == 201, issued
    status, session = await call(
        stack, "order", "POST", "/auth/miniprogram", {"code": issued["code"]}
    )
    assert status == 200, session
    return {**session, "openid": openid}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ticket(stack: Stack, session: dict[str, Any]) -> str:
    """A stream ticket for the user of ``session`` (a login's answer)."""
    return await stream_ticket(stack, session["token"])


async def test_anonymous_callers_get_401_on_every_order_route(stack: Stack) -> None:
    order = await new_order(stack, "basic", "NATIVE")
    routes = [
        ("POST", "/orders", {"openid": "o-anon", "package_type": "basic", "trade_type": "NATIVE"}),
        ("GET", f"/orders/{order.out_trade_no}", None),
        ("POST", f"/orders/{order.out_trade_no}/close", None),
        ("POST", f"/orders/{order.out_trade_no}/refunds", {"reason": "x"}),
    ]
    for method, path, body in routes:
        status, answer = await call(stack, "order", method, path, body)
        assert (status, answer["error"]) == (401, "unauthorized"), (method, path, answer)
        assert answer["message"]
    # Nothing was created or closed by the anonymous calls.
    status, view = await call(stack, "order", "GET", f"/orders/{order.out_trade_no}", None, BACKEND)
    assert (status, view["status"]) == (200, "pending")


async def test_the_internal_secret_opens_nothing_on_the_order_api(stack: Stack) -> None:
    order = await new_order(stack, "basic", "NATIVE")
    routes = [
        ("POST", "/orders", {"openid": "o-int", "package_type": "basic", "trade_type": "NATIVE"}),
        ("GET", f"/orders/{order.out_trade_no}", None),
        ("POST", f"/orders/{order.out_trade_no}/close", None),
        ("POST", f"/orders/{order.out_trade_no}/refunds", {"reason": "x"}),
    ]
    for method, path, body in routes:
        status, answer = await call(stack, "order", method, path, body, INTERNAL)
        assert (status, answer["error"]) == (401, "unauthorized"), (method, path, answer)


async def test_miniprogram_login_trades_a_code_for_a_session_once(stack: Stack) -> None:
    openid = f"o-login-{uuid.uuid4().hex[:12]}"
    first = await login(stack, openid)
    assert first["token_type"] == "Bearer" and first["expires_in"] > 0
    assert str(first["user_id"]).startswith("user-")  # the shared users table's ids
    again = await login(stack, openid)
    assert again["user_id"] == first["user_id"]  # the openid names the same user

    status, issued = await sandbox(stack, "POST", "/sandbox/miniprogram/codes", {"openid": openid})
    assert status == 201
    ok, _ = await call(stack, "order", "POST", "/auth/miniprogram", {"code": issued["code"]})
    used, answer = await call(stack, "order", "POST", "/auth/miniprogram", {"code": issued["code"]})
    assert ok == 200
    assert (used, answer["error"]) == (401, "login_failed")
    assert "40163" in answer["message"]  # WeChat's "code been used"
    status, answer = await call(stack, "order", "POST", "/auth/miniprogram", {"code": "nope"})
    assert (status, answer["error"]) == (401, "login_failed")
    assert "40029" in answer["message"]  # WeChat's "invalid code"
    status, answer = await call(stack, "order", "POST", "/auth/miniprogram", {})
    assert (status, answer["error"]) == (400, "invalid_request")


async def test_a_user_places_orders_only_for_themselves(stack: Stack) -> None:
    alice, bob = await login(stack), await login(stack)
    body = {"package_type": "basic", "trade_type": "JSAPI"}
    status, order = await call(stack, "order", "POST", "/orders", body, bearer(alice["token"]))
    assert status == 201, order
    assert order["user_id"] == alice["user_id"]
    assert order["pay"]["package"].startswith("prepay_id=")  # her openid came from the login

    for other in ({"user_id": bob["user_id"]}, {"openid": bob["openid"]}):
        status, answer = await call(
            stack, "order", "POST", "/orders", {**body, **other}, bearer(alice["token"])
        )
        assert (status, answer["error"]) == (403, "forbidden"), answer


async def test_a_users_token_never_reaches_another_users_orders(stack: Stack) -> None:
    alice, bob = await login(stack), await login(stack)
    body = {"package_type": "basic", "trade_type": "NATIVE"}
    _, bobs = await call(stack, "order", "POST", "/orders", body, bearer(bob["token"]))
    no = bobs["out_trade_no"]
    as_alice = bearer(alice["token"])

    status, answer = await call(stack, "order", "GET", f"/orders/{no}", None, as_alice)
    assert (status, answer["error"]) == (404, "not_found")
    status, answer = await call(stack, "order", "POST", f"/orders/{no}/close", None, as_alice)
    assert (status, answer["error"]) == (404, "not_found")
    status, answer = await call(
        stack, "order", "POST", f"/orders/{no}/refunds", {"reason": "x"}, as_alice
    )
    assert (status, answer["error"]) == (403, "forbidden")
    status, view = await call(stack, "order", "GET", f"/orders/{no}", None, bearer(bob["token"]))
    assert (status, view["status"]) == (200, "pending")

    # Streams: Alice's snapshot and live pushes never carry Bob's order.
    notifier = stack.services["notifier"].url
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{notifier}/ws?ticket={await ticket(stack, alice)}")
        sse_url = f"{notifier}/events?ticket={await ticket(stack, alice)}"
        async with SSEClient(http, sse_url) as sse:
            status, paid = await sandbox(stack, "POST", f"/sandbox/orders/{no}/pay")
            assert status == 200, paid
            # Bob's client learns it; Alice's get nothing of it.
            async with aiohttp.ClientSession() as bob_http:
                bob_url = f"{notifier}/ws?ticket={await ticket(stack, bob)}"
                bob_ws = await bob_http.ws_connect(bob_url)
                seen: set[str] = set()
                async with asyncio.timeout(20):
                    while "entitlement.granted" not in seen:
                        seen.add(json.loads((await bob_ws.receive()).data)["type"])
                await bob_ws.close()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    message = await ws.receive()
                    raise AssertionError(f"Alice's WebSocket got {message}")
            assert sse.messages.empty(), sse.messages.get_nowait()
        await ws.close()


async def test_the_backend_places_orders_for_any_user(stack: Stack) -> None:
    user = await login(stack)
    status, order = await call(
        stack,
        "order",
        "POST",
        "/orders",
        {"user_id": user["user_id"], "package_type": "premium", "trade_type": "NATIVE"},
        BACKEND,
    )
    assert (status, order["user_id"]) == (201, user["user_id"])
    # The client_token it returns is the user's: it reads the order.
    status, view = await call(
        stack,
        "order",
        "GET",
        f"/orders/{order['out_trade_no']}",
        None,
        bearer(order["client_token"]),
    )
    assert (status, view["status"]) == (200, "pending")


async def test_an_internal_notify_is_confirmed_with_wechat_pay_before_anything_is_granted(
    stack: Stack, db_pool: aiomysql.Pool, amqp_connection: AbstractRobustConnection
) -> None:
    """Even with an amount that matches, a notify for an order WeChat Pay has not seen paid
    grants nothing: the caller holds only the cloud function's secret."""
    order = await new_order(stack, "premium", "NATIVE")
    status, answer = await call(
        stack,
        "ingress",
        "POST",
        "/api/payment/internal/notify",
        {
            "outTradeNo": order.out_trade_no,
            "transactionId": f"42000{uuid.uuid4().int % 10**23:023d}",
            "status": "paid",
            "amountTotal": order.amount_total,
        },
        INTERNAL,
    )
    assert status == 200, answer
    letter = await dead_letter(amqp_connection, "order.payments", order.out_trade_no)
    reason = letter.headers.get("x-paylane-reason") or ""
    assert isinstance(reason, str), reason
    assert b"does not confirm" in reason.encode()
    assert await order_status(db_pool, order.out_trade_no) == "pending"


async def test_the_backend_mints_a_fresh_token_for_a_users_client(stack: Stack) -> None:
    user = await login(stack)
    body = {"user_id": user["user_id"]}
    status, minted = await call(stack, "order", "POST", "/auth/token", body, BACKEND)
    assert status == 200, minted
    assert (minted["user_id"], minted["token_type"]) == (user["user_id"], "Bearer")
    status, answer = await call(stack, "order", "POST", "/auth/token", body, bearer(user["token"]))
    assert (status, answer["error"]) == (403, "forbidden")
    status, answer = await call(stack, "order", "POST", "/auth/token", body)
    assert (status, answer["error"]) == (401, "unauthorized")
    status, answer = await call(
        stack, "order", "POST", "/auth/token", {"user_id": "user-1-nobody"}, BACKEND
    )
    assert (status, answer["error"]) == (404, "unknown_user")
    status, answer = await call(stack, "order", "POST", "/auth/token", {"user_id": 10**15}, BACKEND)
    assert (status, answer["error"]) == (400, "invalid_request")  # ids are strings
    # The minted session gets the tickets that open the user's stream.
    notifier = stack.services["notifier"].url
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{notifier}/ws?ticket={await ticket(stack, minted)}")
        await ws.close()


async def test_a_users_h5_order_takes_the_payers_address_not_a_claimed_one(stack: Stack) -> None:
    """The backend says which IP the payer had; a user calling directly *is* the payer, so a
    ``client_ip`` in their body is not believed (no trusted proxy here: the peer's address)."""
    user = await login(stack)
    body = {"package_type": "basic", "trade_type": "H5", "client_ip": "203.0.113.9"}
    status, order = await call(stack, "order", "POST", "/orders", body, bearer(user["token"]))
    assert status == 201, order
    _, state = await sandbox(stack, "GET", f"/sandbox/orders/{order['out_trade_no']}")
    assert state["request"]["scene_info"]["payer_client_ip"] == "127.0.0.1"

    backend_body = {**body, "user_id": user["user_id"]}
    # A second purchase, not a double tap of the first: its own Idempotency-Key.
    second = {**BACKEND, "Idempotency-Key": uuid.uuid4().hex}
    status, order = await call(stack, "order", "POST", "/orders", backend_body, second)
    assert status == 201, order
    _, state = await sandbox(stack, "GET", f"/sandbox/orders/{order['out_trade_no']}")
    assert state["request"]["scene_info"]["payer_client_ip"] == "203.0.113.9"


#: A replica with low limits, to reach them in a few calls (the stack's own has the
#: defaults, which no other test comes near).
LIMITS = {"LOGIN_RATE_PER_MIN": "5", "ORDER_RATE_PER_MIN": "6", "MAX_PENDING_ORDERS": "2"}


@pytest.fixture(scope="module")
async def limited_order_service(stack: Stack) -> AsyncIterator[str]:
    """Stopped after this module: a second order process consumes the session's
    order.payments and runs a reconciler too, which later tests do not expect."""
    name = "order-limited"
    env = order_env(stack.services["sandbox"].url, {**ORDER_ENV, **LIMITS})
    await stack.start("order", env, alias=name)
    yield name
    await stack.stop(name)


async def test_sign_ins_past_the_address_limit_are_429_and_never_reach_wechat(
    stack: Stack, limited_order_service: str
) -> None:
    """Every garbage code used to be forwarded to WeChat's jscode2session: 40 codes, 40
    upstream calls. Now an address gets ``LOGIN_RATE_PER_MIN`` a minute."""
    service = limited_order_service
    _, before = await sandbox(stack, "GET", "/sandbox/miniprogram/calls")
    answers = [
        await call(stack, service, "POST", "/auth/miniprogram", {"code": f"garbage-{i}"})
        for i in range(40)
    ]
    _, after = await sandbox(stack, "GET", "/sandbox/miniprogram/calls")
    assert after["jscode2session"] - before["jscode2session"] == 5
    statuses = [status for status, _ in answers]
    assert statuses == [401] * 5 + [429] * 35, statuses
    assert answers[-1][1]["error"] == "too_many_requests"
    async with aiohttp.ClientSession() as http:
        url = f"{stack.services[service].url}/auth/miniprogram"
        async with http.post(url, json={"code": "one-more"}) as response:
            assert response.status == 429
            # 5 a minute: one more every 12 s.
            assert 1 <= int(response.headers["Retry-After"]) <= 12


async def test_a_users_unpaid_orders_are_capped_and_their_pace_limited(
    stack: Stack, limited_order_service: str
) -> None:
    service = limited_order_service
    openid = f"o-cap-{uuid.uuid4().hex[:12]}"
    hygiene.register(openid)
    body = {"openid": openid, "package_type": "basic", "trade_type": "NATIVE"}

    async def place() -> tuple[int, Any]:
        # Each a purchase of its own (its own Idempotency-Key), not a double tap, which
        # would answer the pending order (DUPLICATE_ORDER_WINDOW_S).
        headers = {**BACKEND, "Idempotency-Key": uuid.uuid4().hex}
        return await call(stack, service, "POST", "/orders", body, headers)

    first, second = await place(), await place()
    assert (first[0], second[0]) == (201, 201), (first, second)
    status, answer = await place()
    assert (status, answer["error"]) == (409, "too_many_pending_orders"), answer
    assert "MAX_PENDING_ORDERS=2" in answer["message"]
    # Closed, one no longer counts.
    no = first[1]["out_trade_no"]
    status, _ = await call(stack, service, "POST", f"/orders/{no}/close", None, BACKEND)
    assert status == 200
    assert (await place())[0] == 201
    # Six a minute for one user: the 5th and 6th are refused by the cap, the 7th by pace.
    assert [(await place())[0] for _ in range(2)] == [409, 409]
    status, answer = await place()
    assert (status, answer["error"]) == (429, "too_many_requests"), answer
    # Another user is not held back by the first one's pace.
    other = {**body, "openid": f"o-cap-{uuid.uuid4().hex[:12]}"}
    hygiene.register(other["openid"])
    status, _ = await call(stack, service, "POST", "/orders", other, BACKEND)
    assert status == 201
