"""Client tokens: HMAC-signed (JWT HS256), expiring, naming the user (DESIGN §7)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from .exceptions import PaylaneError

ISSUER = "paylane"
DEFAULT_TTL_S = 24 * 3600


class TokenError(PaylaneError):
    """A client token is missing, forged, expired or malformed."""


@dataclass(frozen=True)
class ClientToken:
    user_id: str
    out_trade_no: str | None
    expires_at: int


def issue_client_token(
    secret: str, user_id: str, out_trade_no: str | None = None, ttl_s: int = DEFAULT_TTL_S
) -> str:
    if not secret:
        raise TokenError("CLIENT_TOKEN_SECRET is not set")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iss": ISSUER, "iat": now, "exp": now + ttl_s}
    if out_trade_no:
        claims["otn"] = out_trade_no
    return jwt.encode(claims, secret, algorithm="HS256")


def verify_client_token(secret: str, token: str) -> ClientToken:
    if not secret:
        raise TokenError("CLIENT_TOKEN_SECRET is not set")
    if not token:
        raise TokenError("token missing")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=ISSUER,
            options={"require": ["exp", "sub", "iss"]},
        )
        user_id = claims["sub"]
        if not isinstance(user_id, str) or not user_id:
            raise TypeError("sub")
    except jwt.ExpiredSignatureError:
        raise TokenError("token expired") from None
    except (jwt.InvalidTokenError, ValueError, TypeError):
        raise TokenError("token invalid") from None
    return ClientToken(user_id=user_id, out_trade_no=claims.get("otn"), expires_at=claims["exp"])
