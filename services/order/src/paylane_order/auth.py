"""Who is calling the order API, and what each kind of caller may do.

* the app's backend: ``X-Internal-Secret: <BACKEND_API_SECRET>``; orders for any user,
  reads, close, refunds;
* an end user: ``Authorization: Bearer <token>`` (a session token of
  ``POST /auth/miniprogram``, ``POST /auth/token`` or the ``client_token`` of
  ``POST /orders``, of the user's current session version: see :mod:`.sessions`); orders
  for themselves, reads and closes of their own orders, stream tickets. A stream ticket
  (the notifier's) is not a session here: 401;
* anyone else: 401. ``INTERNAL_API_SECRET`` (the cloud function's, held by ingress) is
  not a credential here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from paylane_common.contract.tokens import ClientToken, TokenError
from paylane_common.web.auth import (
    INTERNAL_SECRET_HEADER,
    DuplicateHeader,
    bearer_token,
    internal_secret_ok,
)

from .errors import Unauthorized
from .sessions import Sessions


@dataclass(frozen=True)
class Caller:
    #: The app's backend (``BACKEND_API_SECRET``): may act for any user.
    backend: bool
    #: The end user a token names (a ``users.id`` string; None for the backend).
    user_id: str | None
    #: The user's session (None for the backend).
    session: ClientToken | None = None

    def may_see(self, order: Mapping[str, object]) -> bool:
        return self.backend or self.user_id == order["user_id"]


async def identify(request: web.Request, *, backend_secret: str, sessions: Sessions) -> Caller:
    """The caller; :class:`Unauthorized` (401) when it proved nothing."""
    if INTERNAL_SECRET_HEADER in request.headers:
        try:
            backend = internal_secret_ok(request, backend_secret)
        except DuplicateHeader:  # no credential: a 401 like any wrong secret
            backend = False
        if backend:
            return Caller(backend=True, user_id=None)
        raise Unauthorized("invalid X-Internal-Secret")
    token = bearer_token(request)
    if not token:
        raise Unauthorized(
            "sign in: Authorization: Bearer <token> (POST /auth/miniprogram),"
            " or X-Internal-Secret for the app backend"
        )
    try:
        session = await sessions.check(token)
    except TokenError as exc:
        raise Unauthorized(str(exc)) from None
    return Caller(backend=False, user_id=session.user_id, session=session)
