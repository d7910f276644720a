"""Client tokens: the order service signs (Ed25519), everyone else only checks; a session
token is for the order API, a stream ticket for the notifier, and neither opens the
other's door; revoking a user's sessions ends every token issued to them before.

Everything runs against the stack's processes: the notifier there was started without
the private key (tests/support/stack_config.py gives it only to the order service).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import aiohttp
import jwt
import pytest

from paylane_common.contract.tokens import ISSUER
from tests.e2e.test_auth import bearer, login
from tests.support.stack import Stack
from tests.support.stack_api import call, new_order, stream_ticket
from tests.support.stack_config import BACKEND, TOKENS

pytestmark = pytest.mark.e2e

#: The HMAC key client tokens were signed with before (CLIENT_TOKEN_SECRET): whoever
#: still holds it must not be able to sign a user in.
OLD_SHARED_SECRET = "e2e-client-token-secret-of-at-least-32-bytes"


async def _stream_status(stack: Stack, path: str, **request: Any) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{stack.services['notifier'].url}{path}", **request) as response:
            return response.status


async def test_a_stream_ticket_is_refused_by_the_order_api(stack: Stack) -> None:
    order = await new_order(stack, "basic", "NATIVE")
    as_ticket = bearer(order.stream_ticket)
    no = order.out_trade_no
    for method, path, body in [
        ("GET", f"/orders/{no}", None),
        ("POST", f"/orders/{no}/close", None),
        ("POST", "/orders", {"package_type": "basic", "trade_type": "NATIVE"}),
        ("POST", "/stream-tickets", None),  # a ticket does not renew itself
    ]:
        status, answer = await call(stack, "order", method, path, body, as_ticket)
        assert (status, answer["error"]) == (401, "unauthorized"), (method, path, answer)
        assert "audience" in answer["message"]
    # The session token of the same answer reads the order.
    status, view = await call(
        stack, "order", "GET", f"/orders/{no}", None, bearer(order.client_token)
    )
    assert (status, view["status"]) == (200, "pending")


@pytest.mark.parametrize("path", ["/ws", "/events"])
async def test_a_session_token_does_not_open_a_stream(stack: Stack, path: str) -> None:
    user = await login(stack)
    for request in (
        {"params": {"ticket": user["token"]}},
        {"params": {"token": user["token"]}},
        {"headers": bearer(user["token"])},
    ):
        assert await _stream_status(stack, path, **request) == 401, request
    ticket = await stream_ticket(stack, user["token"])
    if path == "/events":
        assert await _stream_status(stack, path, params={"ticket": ticket}) == 200
    else:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{stack.services['notifier'].url}/ws?ticket={ticket}")
            await ws.close()


async def test_a_stream_ticket_is_short_lived_and_names_the_user(stack: Stack) -> None:
    user = await login(stack)
    status, issued = await call(
        stack, "order", "POST", "/stream-tickets", None, bearer(user["token"])
    )
    assert status == 200, issued
    assert issued["user_id"] == user["user_id"]
    assert 0 < issued["expires_in"] <= 60
    claims = jwt.decode(issued["ticket"], options={"verify_signature": False})
    assert claims["aud"] == "paylane-stream"
    assert claims["exp"] - claims["iat"] <= 60
    # The backend has no session to hang a ticket on; anonymous callers none at all.
    status, answer = await call(stack, "order", "POST", "/stream-tickets", None, BACKEND)
    assert (status, answer["error"]) == (401, "unauthorized")
    assert "session" in answer["message"]
    status, answer = await call(stack, "order", "POST", "/stream-tickets", None)
    assert (status, answer["error"]) == (401, "unauthorized")


@pytest.mark.parametrize("path", ["/ws", "/events"])
async def test_an_expired_ticket_is_refused(stack: Stack, path: str) -> None:
    user = await login(stack)
    session_expires_at = int(time.time()) + 3600
    expired = TOKENS.stream_ticket(user["user_id"], session_expires_at=session_expires_at, ttl_s=-1)
    assert await _stream_status(stack, path, params={"ticket": expired}) == 401


async def test_a_token_signed_with_the_old_shared_secret_is_refused(stack: Stack) -> None:
    user = await login(stack)
    order = await new_order(stack, "basic", "NATIVE")
    now = int(time.time())
    for claims, headers in [
        ({}, None),  # an old session token, as CLIENT_TOKEN_SECRET signed them
        ({"aud": "paylane-api", "ver": 0}, {"kid": TOKENS.kid}),
        ({"aud": "paylane-stream", "sexp": now + 600}, {"kid": TOKENS.kid}),
    ]:
        forged = jwt.encode(
            {"sub": order.user_id, "iss": ISSUER, "iat": now, "exp": now + 600, **claims},
            OLD_SHARED_SECRET,
            algorithm="HS256",
            headers=headers,
        )
        status, answer = await call(
            stack, "order", "GET", f"/orders/{order.out_trade_no}", None, bearer(forged)
        )
        assert (status, answer["error"]) == (401, "unauthorized"), claims
        assert await _stream_status(stack, "/events", params={"ticket": forged}) == 401
    # A genuine session of the user still works (the refusals were the signatures').
    status, _ = await call(stack, "order", "POST", "/stream-tickets", None, bearer(user["token"]))
    assert status == 200


async def test_revoking_a_users_sessions_refuses_every_older_token(stack: Stack) -> None:
    user, other = await login(stack), await login(stack)
    body = {"package_type": "basic", "trade_type": "NATIVE"}
    status, order = await call(stack, "order", "POST", "/orders", body, bearer(user["token"]))
    assert status == 201, order
    sessions = [user["token"], order["client_token"]]
    status, minted = await call(
        stack, "order", "POST", "/auth/token", {"user_id": user["user_id"]}, BACKEND
    )
    sessions.append(minted["token"])
    path = f"/orders/{order['out_trade_no']}"
    for token in sessions:
        assert (await call(stack, "order", "GET", path, None, bearer(token)))[0] == 200

    # Only the backend revokes; a user cannot, not even their own.
    revoke = f"/users/{user['user_id']}/sessions/revoke"
    status, answer = await call(stack, "order", "POST", revoke, None, bearer(user["token"]))
    assert (status, answer["error"]) == (403, "forbidden")
    status, revoked = await call(stack, "order", "POST", revoke, None, BACKEND)
    assert status == 200, revoked
    assert revoked == {"user_id": user["user_id"], "version": 1}

    for token in sessions:
        for method, route in [("GET", path), ("POST", "/stream-tickets"), ("POST", "/orders")]:
            status, answer = await call(
                stack, "order", method, route, body if route == "/orders" else None, bearer(token)
            )
            assert (status, answer["error"]) == (401, "unauthorized"), (method, route)
            assert "revoked" in answer["message"]
    # Another user's session is untouched; a new sign-in gets the new version.
    status, _ = await call(stack, "order", "POST", "/stream-tickets", None, bearer(other["token"]))
    assert status == 200
    again = await login(stack, user["openid"])
    assert again["user_id"] == user["user_id"]
    assert (await call(stack, "order", "GET", path, None, bearer(again["token"])))[0] == 200

    status, revoked = await call(stack, "order", "POST", revoke, None, BACKEND)
    assert revoked["version"] == 2
    assert (await call(stack, "order", "GET", path, None, bearer(again["token"])))[0] == 401
    status, answer = await call(
        stack, "order", "POST", "/users/user-1-nobody/sessions/revoke", None, BACKEND
    )
    assert (status, answer["error"]) == (404, "unknown_user")


async def test_the_operator_revokes_a_users_sessions_with_the_cli(stack: Stack) -> None:
    user = await login(stack)
    body = {"package_type": "basic", "trade_type": "NATIVE"}
    status, order = await call(stack, "order", "POST", "/orders", body, bearer(user["token"]))
    assert status == 201, order
    path = f"/orders/{order['out_trade_no']}"
    assert (await call(stack, "order", "GET", path, None, bearer(user["token"])))[0] == 200

    code, out, err = await _paylane(stack, "sessions", "revoke", user["user_id"])
    assert (code, err) == (0, ""), err
    assert out.strip() == f"{user['user_id']}: sessions revoked (version 1)"
    for token in (user["token"], order["client_token"]):
        status, answer = await call(stack, "order", "GET", path, None, bearer(token))
        assert (status, answer["error"]) == (401, "unauthorized")
    code, _, err = await _paylane(stack, "sessions", "revoke", "user-1-nobody")
    assert code == 1 and "does not exist" in err


async def _paylane(stack: Stack, *args: str) -> tuple[int, str, str]:
    """The ``paylane`` command with the stack's database (MYSQL_URL only)."""
    env = {**os.environ, "MYSQL_URL": stack.base_env["MYSQL_URL"], "LOG_FORMAT": "json"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paylane.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
