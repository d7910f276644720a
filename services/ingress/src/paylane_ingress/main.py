"""Ingress: verifies and acknowledges WeChat Pay notifications (DESIGN §3). No database."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from paylane_common.merchant_api import CERT_REFRESHER
from paylane_common.prices import PriceList
from paylane_common.service import base_app, serve, use_broker
from paylane_common.settings import secret_value
from paylane_common.wechatpay import (
    CertificateRefresher,
    MerchantSigner,
    NotificationVerifier,
    VerifierKeys,
    WechatPayClient,
    load_private_key,
)

from .config import INGRESS_CONFIG, IngressConfig
from .internal import internal_notify, internal_order_created
from .notify import MAX_BODY, notify_wechatpay
from .prices import current_prices
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
    )
    app.router.add_post("/notify/wechatpay", notify_wechatpay)
    app.router.add_post("/api/payment/internal/notify", internal_notify)
    app.router.add_post("/api/payment/internal/order-created", internal_order_created)
    app.router.add_get("/api/prices/current", current_prices)
    use_broker(app, settings)
    if settings.refreshes_certificates:
        _use_certificate_refresh(app, settings, keys)
    return app


def _use_certificate_refresh(
    app: web.Application, settings: IngressSettings, keys: VerifierKeys
) -> None:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            client = WechatPayClient(
                base_url=settings.wechatpay_api_base,
                mchid=settings.wechatpay_mchid or "",
                signer=MerchantSigner(
                    settings.wechatpay_mchid or "",
                    settings.wechatpay_merchant_serial_no or "",
                    load_private_key(secret_value(settings.wechatpay_merchant_private_key)),
                ),
                verifier=app[INGRESS_CONFIG].verifier,
                session=session,
            )
            refresher = CertificateRefresher(
                client, keys, secret_value(settings.wechatpay_apiv3_key)
            )
            app[CERT_REFRESHER] = refresher
            refresher.start()
            yield
            await refresher.stop()

    app.cleanup_ctx.append(ctx)


def main() -> None:
    serve(IngressSettings, build_app)
