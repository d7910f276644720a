"""Who may see an order: its owner (client token) or the internal secret."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiohttp import web

from paylane_common.tokens import TokenError, verify_client_token


@dataclass(frozen=True)
class Caller:
    internal: bool
    user_id: int | None


def internal_secret_ok(request: web.Request, secret: str) -> bool:
    given = request.headers.get("X-Internal-Secret")
    return (
        bool(secret) and given is not None and hmac.compare_digest(secret.encode(), given.encode())
    )


def identify(request: web.Request, *, internal_secret: str, token_secret: str) -> Caller | None:
    """The caller, or None when it proved nothing (which callers turn into 404)."""
    if internal_secret_ok(request, internal_secret):
        return Caller(internal=True, user_id=None)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        return Caller(internal=False, user_id=verify_client_token(token_secret, token).user_id)
    except TokenError:
        return None
