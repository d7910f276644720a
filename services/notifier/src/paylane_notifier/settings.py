"""Notifier settings (DESIGN §2, §7)."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from paylane_common.settings import BaseServiceSettings, TokenSecret


class NotifierSettings(BaseServiceSettings):
    http_port: int = Field(8083, ge=1, le=65535)
    #: HMAC key of the client tokens that ``POST /orders`` hands out.
    client_token_secret: TokenSecret
    #: On connect a client gets the state of its orders updated within this window …
    snapshot_window_s: int = Field(86400, ge=0)
    #: … at most this many, newest first.
    snapshot_limit: int = Field(20, ge=0, le=1000)


SETTINGS = web.AppKey("notifier_settings", NotifierSettings)
