"""Ingress: verifies and acknowledges WeChat Pay notifications (DESIGN §3). No database."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from paylane_common.service import base_app, serve, use_broker
from paylane_common.settings import secret_value
from paylane_common.wechatpay import NotificationVerifier, VerifierKeys

from .internal import INTERNAL_SECRET, internal_notify
from .notify import MAX_BODY, NOTIFY_CONFIG, NotifyConfig, notify_wechatpay
from .settings import IngressSettings


def build_app(
    settings: IngressSettings, *, clock: Callable[[], float] = time.time
) -> web.Application:
    keys = VerifierKeys.from_sources(
        settings.wechatpay_public_key_id,
        secret_value(settings.wechatpay_public_key) or None,
        settings.wechatpay_platform_certs_dir,
    )
    app = base_app("ingress", client_max_size=MAX_BODY * 2)
    app[NOTIFY_CONFIG] = NotifyConfig(
        verifier=NotificationVerifier(keys, max_skew_s=settings.notify_max_skew_s, clock=clock),
        apiv3_key=secret_value(settings.wechatpay_apiv3_key).encode(),
    )
    app[INTERNAL_SECRET] = secret_value(settings.internal_api_secret)
    app.router.add_post("/notify/wechatpay", notify_wechatpay)
    app.router.add_post("/api/payment/internal/notify", internal_notify)
    use_broker(app, settings)
    return app


def main() -> None:
    serve(IngressSettings, build_app)
