"""Only a stream ticket opens a stream: missing, forged, expired, foreign-key and
wrong-audience tokens (a session token above all) get 401 before any upgrade or stream;
the notifier cannot mint a ticket."""

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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from paylane_common.contract.ids import new_row_id
from paylane_common.contract.tokens import ISSUER, TokenSigner, private_pem
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.settings import load_settings
from paylane_notifier.settings import NotifierSettings
from services.notifier.tests.support import PUBLIC_KEY, TOKEN_KEY, TOKENS, token_for

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]


USER, OTHER = new_row_id("user"), new_row_id("user")
#: The HMAC key client tokens were signed with before the keys were asymmetric: a holder
#: of it (the notifier had it) must not be able to mint anything any more.
OLD_SHARED_SECRET = "notifier-test-secret-0123456789abcdef"


def _forged() -> str:
    """USER's genuine ticket with the user changed to OTHER (the signature no longer fits)."""
    header, payload, signature = token_for(USER).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = OTHER
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _hs256(claims: dict[str, object], headers: dict[str, str] | None = None) -> str:
    now = int(time.time())
    base = {"sub": USER, "iss": ISSUER, "iat": now, "exp": now + 600}
    return jwt.encode({**base, **claims}, OLD_SHARED_SECRET, algorithm="HS256", headers=headers)


BAD_TOKENS = {
    "missing": None,
    "empty": "",
    "garbage": "not-a-token",
    "forged": _forged(),
    "expired": TOKENS.stream_ticket(USER, session_expires_at=int(time.time()) + 600, ttl_s=-60),
    "another key": token_for(USER, signer=TokenSigner(Ed25519PrivateKey.generate())),
    # The order API's credential: it never opens a stream (nor travels in a URL).
    "session token": TOKENS.session(USER, version=0),
    # What the notifier's old shared secret signed, old-style and as a ticket, and with
    # the real key's kid (the algorithm must not follow the token's header).
    "old shared secret": _hs256({}),
    "old shared secret, ticket": _hs256({"aud": "paylane-stream"}),
    "old shared secret, kid": _hs256({"aud": "paylane-stream"}, {"kid": TOKENS.kid}),
    # Well signed, but ``sub`` is no users.id string (a token of the integer-id era).
    "integer sub": jwt.encode(
        {
            "sub": 7,
            "iss": ISSUER,
            "aud": "paylane-stream",
            "iat": int(time.time()),
            "exp": int(time.time()) + 600,
        },
        TOKEN_KEY,
        algorithm="EdDSA",
        headers={"kid": TOKENS.kid},
    ),
}


@pytest.mark.parametrize("param", ["ticket", "token"])
@pytest.mark.parametrize("path", ["/ws", "/events"])
@pytest.mark.parametrize("token", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
async def test_bad_tokens_are_refused_with_401(
    path: str, param: str, token: str | None, notifier: Client
) -> None:
    params = {} if token is None else {param: token}
    response = await notifier.get(path, params=params)
    assert response.status == 401
    body = await response.json()
    assert body["error"] == "unauthorized"
    assert body["message"]
    assert token is None or not token or token not in body["message"]


@pytest.mark.parametrize("path", ["/ws", "/events"])
async def test_a_session_token_is_refused_as_not_for_the_notifier(
    path: str, notifier: Client
) -> None:
    session = TOKENS.session(USER, version=0)
    requests: list[dict[str, Any]] = [
        {"params": {"ticket": session}},
        {"headers": _bearer(session)},
    ]
    for request in requests:
        response = await notifier.get(path, **request)
        assert response.status == 401
        assert "audience" in (await response.json())["message"]


async def test_a_websocket_upgrade_is_refused_before_the_handshake(notifier: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await notifier.ws_connect("/ws", params={"ticket": BAD_TOKENS["expired"]})
    assert refused.value.status == 401


@pytest.mark.parametrize(
    "request_kwargs",
    [
        lambda ticket: {"params": {"ticket": ticket}},
        # The older parameter name (docs/notifier.md), for a stream ticket as well.
        lambda ticket: {"params": {"token": ticket}},
        lambda ticket: {"headers": _bearer(ticket)},
    ],
    ids=["?ticket=", "?token=", "bearer"],
)
async def test_a_stream_ticket_opens_a_stream(request_kwargs: Any, notifier: Client) -> None:
    response = await notifier.get("/events", **request_kwargs(token_for(USER)))
    try:
        assert response.status == 200
    finally:
        response.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_tokens_never_reach_the_logs(notifier: Client) -> None:
    good, bad = token_for(USER), BAD_TOKENS["forged"]
    assert bad is not None
    with structlog.testing.capture_logs() as logs:
        refused = await notifier.get("/events", params={"ticket": bad})
        accepted = await notifier.get("/events", params={"ticket": good})
        accepted.close()
    assert refused.status == 401
    assert accepted.status == 200
    assert any(entry["event"] == "client_unauthorized" for entry in logs)
    assert good not in repr(logs) and bad not in repr(logs)


@pytest.mark.parametrize("variable", ["CLIENT_TOKEN_PRIVATE_KEY", "CLIENT_TOKEN_PRIVATE_KEY_FILE"])
def test_the_notifier_refuses_a_private_key(
    variable: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """It verifies with public keys only: given the signing key, it does not start."""
    pem = private_pem(TOKEN_KEY)
    if variable.endswith("_FILE"):
        (tmp_path / "key.pem").write_text(pem)
        monkeypatch.setenv(variable, str(tmp_path / "key.pem"))
    else:
        monkeypatch.setenv(variable, pem)
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY", PUBLIC_KEY)
    with pytest.raises(ConfigError, match="CLIENT_TOKEN_PRIVATE_KEY must not be given"):
        load_settings(NotifierSettings)


@pytest.mark.parametrize("pem", [private_pem(TOKEN_KEY), PUBLIC_KEY + private_pem(TOKEN_KEY)])
def test_the_notifier_refuses_a_private_key_among_its_public_keys(
    pem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLIENT_TOKEN_PUBLIC_KEY", pem)
    with pytest.raises(ConfigError, match=r"CLIENT_TOKEN_PUBLIC_KEY .*PRIVATE KEY"):
        load_settings(NotifierSettings)


def test_the_notifier_has_no_signing_path(notifier: Client) -> None:
    """What the notifier's handlers hold checks tokens and has nothing that makes one."""
    from paylane_notifier.config import NOTIFIER_CONFIG

    tokens = notifier.app[NOTIFIER_CONFIG].tokens
    assert tokens.key_ids == {TOKENS.kid}
    assert not any(hasattr(tokens, name) for name in ("session", "stream_ticket", "sign"))
