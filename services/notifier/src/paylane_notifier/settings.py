"""Notifier settings (DESIGN §2, §7)."""

from __future__ import annotations

from pydantic import Field

from paylane_common.settings import BaseServiceSettings, TokenSecret


class NotifierSettings(BaseServiceSettings):
    http_port: int = Field(8083, ge=1, le=65535)
    admin_port: int = Field(9083, ge=1, le=65535)
    #: HMAC key of the client tokens that ``POST /orders`` hands out.
    client_token_secret: TokenSecret
    #: On connect a client gets the state of its orders updated within this window …
    snapshot_window_s: int = Field(86400, ge=0)
    #: … at most this many, newest first.
    snapshot_limit: int = Field(20, ge=0, le=1000)
    #: The snapshot query gives up after this long (the stream goes on with live events).
    snapshot_timeout_s: float = Field(3.0, gt=0, le=30)
    #: Open streams (WebSocket + SSE) this replica holds at the most …
    max_connections: int = Field(10_000, ge=1)
    #: … and per user (a user's tabs and devices).
    max_connections_per_user: int = Field(5, ge=1)
