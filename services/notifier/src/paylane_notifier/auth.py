"""Client authentication: the ``client_token`` of ``POST /orders`` names the user (DESIGN §7).

Checked before any upgrade or stream starts; a missing, forged or expired token gets a
401 ``{"error": "unauthorized", "message": ...}``. The token itself is never logged.
"""

from __future__ import annotations

import json

import structlog
from aiohttp import web

from paylane_common.auth import bearer_token
from paylane_common.tokens import ClientToken, TokenError, verify_client_token

log = structlog.get_logger(__name__)


def authenticate(request: web.Request, secret: str) -> ClientToken:
    """The token of ``?token=`` (or ``Authorization: Bearer``); 401 otherwise."""
    token = request.query.get("token") or bearer_token(request)
    try:
        client = verify_client_token(secret, token)
    except TokenError as exc:
        log.info("client_unauthorized", reason=str(exc))
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "unauthorized", "message": str(exc)}),
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="paylane"'},
        ) from None
    structlog.contextvars.bind_contextvars(user_id=client.user_id)
    return client
