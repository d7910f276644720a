"""Ingress: verifies and acknowledges WeChat Pay notifications (docs/ingress.md). No database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from paylane_common.broker.amqp import close_quietly
from paylane_common.broker.pressure import LoadAnnouncer, signals_connection
from paylane_common.contract.prices import PriceList
from paylane_common.runtime.service import base_app, serve, use_broker
from paylane_common.runtime.settings import secret_value
from paylane_common.wechatpay import NotificationVerifier
from paylane_common.wechatpay.merchant_api import CERT_REFRESHER, wechatpay_api

from .api import INGRESS_API
from .config import INGRESS_CONFIG, LOAD_ANNOUNCER, IngressConfig
from .notify import MAX_BODY
from .rejections import use_rejection_recorder
from .settings import IngressSettings


def build_app(
    settings: IngressSettings, *, clock: Callable[[], float] = time.time
) -> web.Application:
    keys = settings.verifier_keys()
    # Public: the notify, internal and prices routes and /healthz; /readyz and /metrics only on
    # ADMIN_PORT (the cluster's probes and Prometheus, never the internet).
    app = base_app("ingress", client_max_size=MAX_BODY * 2, admin_port=settings.admin_port)
    app[INGRESS_CONFIG] = IngressConfig(
        verifier=NotificationVerifier(keys, max_skew_s=settings.notify_max_skew_s, clock=clock),
        apiv3_key=secret_value(settings.wechatpay_apiv3_key).encode(),
        internal_secret=secret_value(settings.internal_api_secret),
        price_list=PriceList.of(settings.catalog, settings.prices_effective_at),
        trust_platform_headers=settings.cloudhosting_trust_headers,
        cloudhosting_env_id=settings.cloudhosting_env_id or "",
    )
    INGRESS_API.add_routes(app)
    use_broker(app, settings)
    use_rejection_recorder(app, settings.ingress_rejections_per_s)
    _use_load_announcer(app, settings)
    if settings.refreshes_certificates:
        _use_certificate_refresh(app, settings)
    return app


def _use_load_announcer(app: web.Application, settings: IngressSettings) -> None:
    """Announces "busy" while ingress's CPU use is above ``INGRESS_BUSY_CPU`` or
    ``INGRESS_BUSY_IN_FLIGHT`` notifications are being answered: the consumers wait
    meanwhile (paylane_common.broker.pressure)."""
    announcer = LoadAnnouncer(
        settings.ingress_busy_cpu,
        busy_in_flight=settings.ingress_busy_in_flight,
        declare=settings.amqp_declare_topology,
    )
    app[LOAD_ANNOUNCER] = announcer

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        announces = settings.ingress_busy_cpu > 0 or settings.ingress_busy_in_flight > 0
        signals = await signals_connection(settings.amqp_url, "ingress") if announces else None
        await announcer.start(signals)
        yield
        await announcer.stop()
        if signals is not None:
            await close_quietly(signals, "signals connection")

    app.cleanup_ctx.append(ctx)


def _use_certificate_refresh(app: web.Application, settings: IngressSettings) -> None:
    """A notification under an unknown serial asks for the platform certificates to be
    downloaded in the background (added to the keys notifications are verified with)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with wechatpay_api(settings, verifier=app[INGRESS_CONFIG].verifier) as api:
            if api.refresher is not None:
                app[CERT_REFRESHER] = api.refresher
            yield

    app.cleanup_ctx.append(ctx)


def main() -> None:
    serve(IngressSettings, build_app)
