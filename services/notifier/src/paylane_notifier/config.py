"""What the notifier's handlers read: one frozen object, built once in ``build_app`` from
the settings, the token keys loaded there."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from paylane_common.contract.tokens import TokenVerifier


@dataclass(frozen=True)
class NotifierConfig:
    #: Checks the stream tickets the order service hands out (public keys only).
    tokens: TokenVerifier
    #: On connect a client gets the state of its orders updated within this window …
    snapshot_window_s: int
    #: … at most this many, newest first …
    snapshot_limit: int
    #: … unless the query takes longer than this (the stream goes on with live events).
    snapshot_timeout_s: float


NOTIFIER_CONFIG = web.AppKey("notifier_config", NotifierConfig)
