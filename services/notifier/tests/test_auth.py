"""Missing, forged, expired and foreign tokens get 401 before any upgrade or stream."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
import structlog
from aiohttp.test_utils import TestClient

from paylane_common.ids import new_row_id
from paylane_common.tokens import ISSUER, issue_client_token
from services.notifier.tests.support import SECRET, token_for

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


USER, OTHER = new_row_id("user"), new_row_id("user")


def _forged() -> str:
    """USER's genuine token with the user changed to OTHER (the signature no longer fits)."""
    header, payload, signature = token_for(USER).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = OTHER
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


BAD_TOKENS = {
    "missing": None,
    "empty": "",
    "garbage": "not-a-token",
    "forged": _forged(),
    "expired": issue_client_token(SECRET, USER, ttl_s=-60),
    "other secret": issue_client_token("another-secret-0123456789abcdefghij", USER),
    # Well signed, but ``sub`` is no users.id string (a token of the integer-id era).
    "integer sub": jwt.encode(
        {"sub": 7, "iss": ISSUER, "iat": int(time.time()), "exp": int(time.time()) + 600},
        SECRET,
        algorithm="HS256",
    ),
}


@pytest.mark.parametrize("path", ["/ws", "/events"])
@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
async def test_bad_tokens_are_refused_with_401(
    path: str, token: str | None, notifier: Client
) -> None:
    params = {} if token is None else {"token": token}
    response = await notifier.get(path, params=params)
    assert response.status == 401
    body = await response.json()
    assert body["error"] == "unauthorized"
    assert body["message"]
    assert token is None or not token or token not in body["message"]


async def test_a_websocket_upgrade_is_refused_before_the_handshake(notifier: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await notifier.ws_connect("/ws", params={"token": BAD_TOKENS["expired"]})
    assert refused.value.status == 401


async def test_a_bearer_header_is_accepted_too(notifier: Client) -> None:
    response = await notifier.get("/events", headers={"Authorization": f"Bearer {token_for(USER)}"})
    try:
        assert response.status == 200
    finally:
        response.close()


async def test_tokens_never_reach_the_logs(notifier: Client) -> None:
    good, bad = token_for(USER), BAD_TOKENS["forged"]
    assert bad is not None
    with structlog.testing.capture_logs() as logs:
        refused = await notifier.get("/events", params={"token": bad})
        accepted = await notifier.get("/events", params={"token": good})
        accepted.close()
    assert refused.status == 401
    assert accepted.status == 200
    assert any(entry["event"] == "client_unauthorized" for entry in logs)
    assert good not in repr(logs) and bad not in repr(logs)
