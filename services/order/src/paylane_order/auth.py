"""Who is calling the order API, and what each kind of caller may do.

* the app's backend: ``X-Internal-Secret: <BACKEND_API_SECRET>``; orders for any user,
  reads, close, refunds;
* an end user: ``Authorization: Bearer <token>`` (a session token of
  ``POST /auth/miniprogram``, ``POST /auth/token`` or the ``client_token`` of
  ``POST /orders``, of the user's current session version: see :mod:`.sessions`); orders
  for themselves, reads and closes of their own orders, stream tickets. A stream ticket
  (the notifier's) is not a session here: 401;
* on WeChat Cloud Hosting with ``CLOUDHOSTING_TRUST_HEADERS=true``, an end user the
  platform names: ``X-WX-OPENID`` (with ``X-WX-UNIONID``), which the platform sets on
  every call from the mini-program and strips from others; the user is found by that
  openid, or created as the cloud function creates one, and the caller has a session of
  theirs issued there and then. Without that setting the header is ignored (anyone could
  write it);
* anyone else: 401. ``INTERNAL_API_SECRET`` (the cloud function's, held by ingress) is
  not a credential here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
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


#: The platform's headers naming the mini-program's user (WeChat Cloud Hosting).
OPENID_HEADER = "X-WX-OPENID"
UNIONID_HEADER = "X-WX-UNIONID"
#: What the platform sets on every call it forwards (as ingress requires them too): an
#: ``X-WX-OPENID`` without them did not come through ``callContainer``.
PLATFORM_HEADERS = ("X-WX-SOURCE", "X-WX-ENV")
#: The user of an openid (and unionid), created if new: ``Orders.platform_user``.
PlatformUsers = Callable[[str, str | None], Awaitable[str]]


async def identify(
    request: web.Request,
    *,
    backend_secret: str,
    sessions: Sessions,
    platform_users: PlatformUsers | None = None,
) -> Caller:
    """The caller; :class:`Unauthorized` (401) when it proved nothing. ``platform_users``
    (only with ``CLOUDHOSTING_TRUST_HEADERS``): a request without a secret or token is
    the user ``X-WX-OPENID`` names."""
    if INTERNAL_SECRET_HEADER in request.headers:
        try:
            backend = internal_secret_ok(request, backend_secret)
        except DuplicateHeader:  # no credential: a 401 like any wrong secret
            backend = False
        if backend:
            return Caller(backend=True, user_id=None)
        raise Unauthorized("invalid X-Internal-Secret")
    token = bearer_token(request)
    if not token and platform_users is not None:
        openids = request.headers.getall(OPENID_HEADER, [])
        forwarded = all(request.headers.get(name) for name in PLATFORM_HEADERS)
        if forwarded and len(openids) == 1 and 0 < len(openids[0]) <= 100:
            unionid = request.headers.get(UNIONID_HEADER) or None
            user_id = await platform_users(openids[0], unionid)
            issued = await sessions.issue(user_id)
            return Caller(backend=False, user_id=user_id, session=issued.session)
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
