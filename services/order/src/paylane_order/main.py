"""Order service: applies payment events idempotently (DESIGN §4)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from paylane_common.consumer import Handler, Reject
from paylane_common.events import Envelope, PaymentSucceeded
from paylane_common.service import (
    DB_POOL,
    OUTBOX_RELAY,
    base_app,
    serve,
    use_broker,
    use_consumer,
    use_mysql,
)
from paylane_common.topology import ORDER_PAYMENTS

from .payments import PRODUCER, Merchant, PaymentApplier
from .settings import OrderSettings


def build_handler(app: web.Application, settings: OrderSettings) -> Handler:
    payments = PaymentApplier(
        app[DB_POOL],
        Merchant(mchid=settings.wechatpay_mchid, appid=settings.wechatpay_appid),
        on_commit=app[OUTBOX_RELAY].wake,
    )

    async def handle(envelope: Envelope, data: Any) -> str:
        if isinstance(data, PaymentSucceeded):
            return await payments(envelope, data)
        # Refund events are bound here so none is lost; applying them comes with the
        # refund flow. Until then they wait in the DLQ for `paylane replay dlq`.
        raise Reject(f"{envelope.type} is not applied by this version of the order service")

    return handle


def build_app(settings: OrderSettings) -> web.Application:
    app = base_app("order")
    use_broker(app, settings)
    use_mysql(app, settings)
    use_consumer(
        app, ORDER_PAYMENTS, lambda app: build_handler(app, settings), outbox_producer=PRODUCER
    )
    return app


def main() -> None:
    serve(OrderSettings, build_app)
