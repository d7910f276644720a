"""What the notifier's handlers read: one frozen object, built once in ``build_app`` from
the settings, the token secret unwrapped there."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class NotifierConfig:
    #: Checks the client tokens that ``POST /orders`` hands out.
    token_secret: str
    #: On connect a client gets the state of its orders updated within this window …
    snapshot_window_s: int
    #: … at most this many, newest first …
    snapshot_limit: int
    #: … unless the query takes longer than this (the stream goes on with live events).
    snapshot_timeout_s: float


NOTIFIER_CONFIG = web.AppKey("notifier_config", NotifierConfig)
