"""The webhooks in the order service: the ``order.webhooks`` consumer and the delivery
loop, opened and closed with the app (after its broker and database)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from paylane_common.broker.queue_watch import QueueWatch
from paylane_common.broker.topology import ORDER_WEBHOOKS
from paylane_common.runtime.service import AMQP_CONNECTION, DB_POOL, consumer_of
from paylane_common.runtime.settings import ConsumerSettings
from paylane_common.web.health import READINESS_CHECKS

from ..bindings import KEEP_INTERVAL_S, BindingsKeeper, BindingsUnavailable, OptionalBindings
from .dispatcher import WebhookConfig, WebhookDispatcher, WebhookIngest
from .routes import WEBHOOK_STORE
from .store import WebhookStore

log = structlog.get_logger(__name__)

WEBHOOK_DISPATCHER = web.AppKey("webhook_dispatcher", WebhookDispatcher)


def use_webhooks(
    app: web.Application, config: WebhookConfig, settings: ConsumerSettings, *, shipping: bool
) -> None:
    """Record the ``WEBHOOK_URLS`` as endpoints, keep the order service's optional
    bindings as the endpoints (and ``shipping``) ask (bindings.py), consume
    ``order.webhooks`` into delivery rows and send them (``WEBHOOK_POLL_S`` 0: this
    replica only records)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = app[WEBHOOK_STORE] = WebhookStore(app[DB_POOL])
        bindings = OptionalBindings(app[DB_POOL], app[AMQP_CONNECTION], shipping=shipping)
        await store.sync_config(config.urls)
        try:
            await bindings.reconcile()  # a refusing broker: ConfigError, said at start
        except BindingsUnavailable as exc:
            log.warning("bindings_not_reconciled_at_start", error=str(exc))
        store.on_change = bindings.reconcile
        keeper = BindingsKeeper(bindings, KEEP_INTERVAL_S)
        keeper.start()
        dispatcher = app[WEBHOOK_DISPATCHER] = WebhookDispatcher(store, config)
        ingest = WebhookIngest(store, dispatcher.wake)
        consumer = consumer_of(app, ORDER_WEBHOOKS, ingest, settings)
        app[READINESS_CHECKS]["webhooks"] = consumer.check
        await consumer.start()
        if config.poll_s > 0:
            dispatcher.start()
        watch = QueueWatch(app[AMQP_CONNECTION], (ORDER_WEBHOOKS.name, ORDER_WEBHOOKS.dlq))
        watch.start()
        yield
        await keeper.stop()
        await watch.stop()
        await consumer.stop()
        await dispatcher.stop()

    app.cleanup_ctx.append(ctx)
