"""Notifier: pushes payment results to the paying client over WebSocket and SSE
(docs/notifier.md)."""

from __future__ import annotations

from aiohttp import web

from paylane_common.contract.tokens import TokenVerifier
from paylane_common.runtime.service import base_app, serve, use_broker, use_mysql

from .api import NOTIFIER_API
from .config import NOTIFIER_CONFIG, NotifierConfig
from .consumer import consume_events
from .hub import HUB, Hub
from .push_log import use_push_log
from .settings import NotifierSettings


def build_app(settings: NotifierSettings, *, hub: Hub | None = None) -> web.Application:
    app = base_app("notifier", admin_port=settings.admin_port)
    app[NOTIFIER_CONFIG] = NotifierConfig(
        tokens=TokenVerifier.from_pem(settings.client_token_public_key),
        snapshot_window_s=settings.snapshot_window_s,
        snapshot_limit=settings.snapshot_limit,
        snapshot_timeout_s=settings.snapshot_timeout_s,
    )
    app[HUB] = (
        hub
        if hub is not None
        else Hub(
            max_connections=settings.max_connections,
            max_per_user=settings.max_connections_per_user,
        )
    )
    use_broker(app, settings)
    # A read-only server is no outage for it: it reads, and its push records are a trace.
    use_mysql(app, settings, writable=False)
    use_push_log(app, settings.notifier_push_log_buffer)
    app.cleanup_ctx.append(consume_events)
    app.on_shutdown.append(_close_clients)
    NOTIFIER_API.add_routes(app)
    return app


async def _close_clients(app: web.Application) -> None:
    """Runs before aiohttp waits for handlers: long-lived streams end now, not at the
    shutdown timeout, and their clients reconnect to another replica."""
    app[HUB].close_all()


def main() -> None:
    serve(NotifierSettings, build_app)
