"""Who is calling the order API, and what each kind of caller may do.

* the app's backend: ``X-Internal-Secret: <BACKEND_API_SECRET>``; orders for any user,
  reads, close, refunds;
* an end user: ``Authorization: Bearer <token>`` (a login session of
  ``POST /auth/miniprogram`` or the ``client_token`` of ``POST /orders``); orders for
  themselves, reads and closes of their own orders;
* anyone else: 401. ``INTERNAL_API_SECRET`` (the cloud function's, held by ingress) is
  not a credential here.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from paylane_common.headers import DuplicateHeader, secret_matches, sole_header
from paylane_common.tokens import TokenError, verify_client_token

from .errors import Forbidden, Unauthorized


@dataclass(frozen=True)
class Caller:
    #: The app's backend (``BACKEND_API_SECRET``): may act for any user.
    backend: bool
    #: The end user a token names (a ``users.id`` string; None for the backend).
    user_id: str | None

    def may_see(self, order: dict[str, object]) -> bool:
        return self.backend or self.user_id == order["user_id"]


def secret_ok(request: web.Request, secret: str) -> bool:
    """``X-Internal-Secret`` equals ``secret`` (constant time); an unset secret matches
    nothing, and a header given twice is no credential."""
    try:
        return secret_matches(secret, sole_header(request.headers, "X-Internal-Secret"))
    except DuplicateHeader:
        return False


def identify(request: web.Request, *, backend_secret: str, token_secret: str) -> Caller:
    """The caller; :class:`Unauthorized` (401) when it proved nothing."""
    if "X-Internal-Secret" in request.headers:
        if secret_ok(request, backend_secret):
            return Caller(backend=True, user_id=None)
        raise Unauthorized("invalid X-Internal-Secret")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "sign in: Authorization: Bearer <token> (POST /auth/miniprogram),"
            " or X-Internal-Secret for the app backend"
        )
    try:
        client = verify_client_token(token_secret, token.strip())
    except TokenError as exc:
        raise Unauthorized(str(exc)) from None
    return Caller(backend=False, user_id=client.user_id)


def require_backend(caller: Caller, what: str) -> None:
    if not caller.backend:
        raise Forbidden(f"{what} is for the app backend (X-Internal-Secret) only")
