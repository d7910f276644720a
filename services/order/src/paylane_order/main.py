"""Order service: HTTP API, payment and refund consumer, reconciler (docs/order-api.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiomysql
from aiohttp import web

from paylane_common.broker.topology import ORDER_PAYMENTS
from paylane_common.contract import events
from paylane_common.contract.events import (
    Entitlement,
    Envelope,
    FulfilmentSettled,
    OrderCreated,
    PaymentSucceeded,
    RefundEvent,
)
from paylane_common.delivery.batching import BatchItem
from paylane_common.delivery.consumer import Reject
from paylane_common.delivery.retention import RECORD_TABLES, RECORDS_LOCK_NAME, RetentionPruner
from paylane_common.runtime.service import (
    ADMIN_LISTENER,
    AMQP_CONNECTION,
    DB_POOL,
    OUTBOX_RELAY,
    PUBLISHER,
    base_app,
    serve,
    use_broker,
    use_consumer,
    use_mysql,
)
from paylane_common.wechatpay.merchant_api import (
    MERCHANT_SIGNER,
    WECHATPAY_CLIENT,
    use_wechatpay_client,
)

from . import OUTBOX_PRODUCER, api, catalog_prices, console
from .abnormal import AbnormalRefunds
from .bills import BillReconciler, DailyBills
from .config import ORDER_CONFIG, OrderConfig, StatusQueryConfig
from .errors import error_middleware
from .gate import Gate
from .miniprogram import MiniProgramLogin
from .order_created import OrderCreatedApplier
from .order_list import OrderList
from .orders import Orders
from .payments import PaymentApplier
from .rate_limits import RateLimit
from .reconciler import Reconciler
from .refunds import RefundApplier
from .rejections import use_rejection_records
from .review_grant import ReviewGrant
from .sessions import Sessions
from .settings import OrderSettings
from .shipping import AccessTokens, ShippingQueue, ShippingUploader, WechatApi
from .status_query import StatusQuery
from .webhooks.wiring import use_webhooks

RECONCILER = web.AppKey("reconciler", Reconciler)
SHIPPING_UPLOADER = web.AppKey("shipping_uploader", ShippingUploader)
#: The console's "ask WeChat Pay": at once, whatever the order's age or last query.
CONSOLE_QUERY = web.AppKey("console_query", StatusQuery)
CONSOLE_GRANT = web.AppKey("console_grant", ReviewGrant)


class OrderEvents:
    """The order consumer's handler: payments (one by one, or the plain ones in batches),
    refund events and the orders' effects done, whose shipping is declared to WeChat
    (one by one)."""

    def __init__(
        self,
        payments: PaymentApplier,
        refunds: RefundApplier,
        created: OrderCreatedApplier | None = None,
        shipping: ShippingQueue | None = None,
    ):
        self.pool = payments.pool
        self._payments = payments
        self._refunds = refunds
        self._created = created or OrderCreatedApplier(payments.pool)
        self._shipping = shipping

    async def __call__(self, envelope: Envelope, data: Any) -> str:
        if isinstance(data, PaymentSucceeded):
            return await self._payments(envelope, data)
        if isinstance(data, RefundEvent):
            return await self._refunds(envelope, data)
        if isinstance(data, OrderCreated):
            return await self._created(envelope, data)
        if _effect_done(envelope, data):
            return await self._shipping(envelope, data) if self._shipping else "shipping_off"
        raise Reject(f"{envelope.type} is not for the order service")

    async def apply_batch(
        self, cur: aiomysql.Cursor, items: Sequence[BatchItem]
    ) -> list[str | None]:
        outcomes = await self._payments.apply_batch(cur, items)
        if self._shipping is None or not self._shipping.enabled:
            # Every payment's grant comes here too; with shipping off it needs nothing, so
            # it is settled with the batch (one ack for all) instead of one by one.
            for i, item in enumerate(items):
                if outcomes[i] is None and _effect_done(item.envelope, item.data):
                    outcomes[i] = "shipping_off"
        return outcomes

    def after_commit(self, outcomes: Sequence[str]) -> None:
        self._payments.after_commit(outcomes)


def _effect_done(envelope: Envelope, data: Any) -> bool:
    """An order's effect done (its plan granted, or the backend's fulfilment confirmed):
    what its shipping is declared after."""
    return (
        isinstance(data, FulfilmentSettled) and envelope.type == events.FULFILMENT_SUCCEEDED
    ) or (isinstance(data, Entitlement) and envelope.type == events.ENTITLEMENT_GRANTED)


def build_handler(app: web.Application, config: OrderConfig) -> OrderEvents:
    client = app[WECHATPAY_CLIENT]
    wake = app[OUTBOX_RELAY].wake
    gate = Gate.of(config, client, app[DB_POOL])
    payments = PaymentApplier(app[DB_POOL], gate, on_commit=wake)
    created = OrderCreatedApplier(app[DB_POOL], order_ttl_s=config.merchant.order_ttl_s)
    uploader = app.get(SHIPPING_UPLOADER)
    shipping = ShippingQueue(
        app[DB_POOL],
        config.shipping,
        config.catalog,
        on_commit=uploader.wake if uploader is not None else None,
    )
    refunds = RefundApplier(app[DB_POOL], on_commit=wake, queries=gate.queries)
    return OrderEvents(payments, refunds, created, shipping)


def build_app(settings: OrderSettings) -> web.Application:
    app = base_app("order", admin_port=settings.admin_port)
    app.middlewares.append(error_middleware)
    use_broker(app, settings)
    use_mysql(app, settings)
    use_wechatpay_client(app, settings)
    config = app[ORDER_CONFIG] = OrderConfig.from_settings(settings)

    async def orders_ctx(app: web.Application) -> AsyncIterator[None]:
        app[api.ABNORMAL_REFUNDS] = AbnormalRefunds(app[DB_POOL], app[WECHATPAY_CLIENT])
        app[api.ORDER_LIST] = OrderList(app[DB_POOL])
        app[api.ORDERS] = Orders(
            app[DB_POOL],
            app[WECHATPAY_CLIENT],
            app.get(MERCHANT_SIGNER),  # none in cloudhosting mode: the platform signs
            config.merchant,
            max_pending=config.max_pending_orders,
            duplicate_window_s=config.duplicate_order_window_s,
        )
        await catalog_prices.record(app[DB_POOL], config.catalog)
        gate = Gate.of(config, app[WECHATPAY_CLIENT], app[DB_POOL])
        reconciler = Reconciler(
            app[DB_POOL], app[WECHATPAY_CLIENT], app[PUBLISHER], config.reconciler, gate
        )
        # The relay is opened after this context (use_consumer): woken once it is.
        payments = PaymentApplier(app[DB_POOL], gate, on_commit=lambda: app[OUTBOX_RELAY].wake())
        app[api.STATUS_QUERY] = StatusQuery(app[DB_POOL], gate, payments, config.status_query)
        at_once = StatusQueryConfig(
            after_s=0, interval_s=0, timeout_s=config.status_query.timeout_s
        )
        app[CONSOLE_QUERY] = StatusQuery(app[DB_POOL], gate, payments, at_once, "console")
        app[CONSOLE_GRANT] = ReviewGrant(gate, payments)
        app[RECONCILER] = reconciler
        app[api.SESSIONS] = Sessions(app[DB_POOL], config.tokens, config.token_ttl_s)
        app[api.LOGIN] = MiniProgramLogin(
            config.wechat_api_base, config.merchant.appid, config.wechat_app_secret
        )
        if config.reconciler.interval_s > 0:
            reconciler.start()
        bills = DailyBills(
            BillReconciler(app[DB_POOL], app[WECHATPAY_CLIENT], reconciler),
            config.reconciler.bills_hour,
        )
        # The open interface has no v3 bills: no daily bill reconciliation on Cloud Hosting.
        if config.reconciler.bills_hour >= 0 and not config.cloudhosting:
            bills.start()  # every replica waits for the hour; one runs the day, once
        wechat = WechatApi(
            config.shipping.api_base, config.shipping.appid, config.shipping.app_secret
        )
        records = RetentionPruner(
            app[DB_POOL],
            retention_days=settings.retention_days,
            interval_s=settings.retention_interval_s,
            tables=RECORD_TABLES,
            lock_name=RECORDS_LOCK_NAME,
        )
        if settings.retention_interval_s > 0:
            records.start()
        if config.shipping.enabled:
            uploader = ShippingUploader(
                app[DB_POOL], wechat, AccessTokens(app[DB_POOL], wechat), config.shipping
            )
            app[SHIPPING_UPLOADER] = uploader
            uploader.start()
        yield
        if config.shipping.enabled:
            await app[SHIPPING_UPLOADER].stop()
        await wechat.close()
        await records.stop()
        await bills.stop()
        await reconciler.stop()
        await app[api.LOGIN].close()

    app.cleanup_ctx.append(orders_ctx)
    use_consumer(
        app,
        ORDER_PAYMENTS,
        lambda app: build_handler(app, config),
        settings,
        outbox_producer=OUTBOX_PRODUCER,
    )
    use_webhooks(app, config.webhooks, settings, shipping=config.shipping.enabled)
    use_rejection_records(app, settings)
    app[api.LOGIN_RATE] = RateLimit(config.login_rate_per_min)
    app[api.ORDER_RATE] = RateLimit(config.order_rate_per_min)
    api.add_routes(app)
    console.mount(
        app[ADMIN_LISTENER].app,
        lambda: console.ConsoleBackend(
            app[DB_POOL],
            app[api.ORDERS],
            app[CONSOLE_QUERY],
            app[CONSOLE_GRANT],
            app.get(AMQP_CONNECTION),
        ),
    )
    return app


def main() -> None:
    serve(OrderSettings, build_app)
