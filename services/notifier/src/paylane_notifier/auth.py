"""Client authentication: a stream ticket of the order service names the user (docs/notifier.md).

``?ticket=`` (or ``?token=``, the contract's older name, or ``Authorization: Bearer``)
must hold a stream ticket (``aud`` paylane-stream) of ``POST /stream-tickets`` or of
``POST /orders``'s ``stream_ticket``: short-lived, asked for before each (re)connect. A
session token (``aud`` paylane-api) is refused, so that the long-lived credential never
travels in a URL. Checked before any upgrade or stream starts; a missing, forged, expired
or wrong-audience ticket gets a 401 ``{"error": "unauthorized", "message": ...}``. The
ticket itself is never logged.

The notifier holds public keys only (:class:`~paylane_common.contract.tokens.TokenVerifier`): it
cannot mint a ticket. It does not read the user's session version: a ticket lives a
minute and the order service mints it only from a session of the current version.
"""

from __future__ import annotations

import json

import structlog
from aiohttp import web

from paylane_common.contract.tokens import STREAM_AUDIENCE, ClientToken, TokenError, TokenVerifier
from paylane_common.web.auth import bearer_token

log = structlog.get_logger(__name__)


def authenticate(request: web.Request, tokens: TokenVerifier) -> ClientToken:
    """The stream ticket of ``?ticket=`` (``?token=``, ``Authorization: Bearer``); 401
    otherwise."""
    ticket = request.query.get("ticket") or request.query.get("token") or bearer_token(request)
    try:
        client = tokens.verify(ticket, STREAM_AUDIENCE)
    except TokenError as exc:
        log.info("client_unauthorized", reason=str(exc))
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "unauthorized", "message": str(exc)}),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="paylane"'},
        ) from None
    structlog.contextvars.bind_contextvars(user_id=client.user_id)
    return client
