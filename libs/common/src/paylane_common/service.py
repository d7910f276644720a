"""Wiring shared by the services: resources as aiohttp cleanup contexts reached through
typed AppKeys, request-id binding, and the run loop with graceful SIGTERM."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import aiomysql
import structlog
import uvloop
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from . import amqp, db, startup
from .batching import BatchConsumer, BatchHandler
from .consumer import Consumer, Handler, RetryPolicy
from .exceptions import ConfigError
from .health import READINESS_CHECKS, add_health_routes, admin_app
from .logs import configure_logging
from .outages import Dependency
from .outbox import OutboxRelay
from .publisher import Publisher
from .queue_watch import QueueWatch
from .retention import RetentionPruner
from .settings import (
    BaseServiceSettings,
    ConsumerSettings,
    exit_on_config_error,
    load_settings,
)
from .topology import QueueSpec

log = structlog.get_logger(__name__)

SettingsT = TypeVar("SettingsT", bound=BaseServiceSettings)

AMQP_CONNECTION = web.AppKey("amqp_connection", AbstractRobustConnection)
PUBLISHER = web.AppKey("publisher", Publisher)
DB_POOL = web.AppKey("db_pool", aiomysql.Pool)
#: The database as a dependency: its outages, probes and readiness (outages.py).
DATABASE = web.AppKey("database", Dependency)
SERVICE_NAME = web.AppKey("service_name", str)
#: AMQP_DECLARE_TOPOLOGY: whether this process declares the topology or only checks it.
DECLARES_TOPOLOGY = web.AppKey("declares_topology", bool)

#: SIGTERM: stop consuming, finish in-flight work, exit within 10 s (DESIGN §8):
#: HTTP handlers get this long, then consumers get Consumer.stop()'s budget.
SHUTDOWN_TIMEOUT_S = 3.0


@web.middleware
async def bind_request_context(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(
        request_id=request.headers.get("X-Request-Id") or os.urandom(8).hex(),
        path=request.path,
    )
    try:
        return await handler(request)
    finally:
        structlog.contextvars.clear_contextvars()


@dataclass(frozen=True)
class AdminListener:
    """``/healthz``, ``/readyz`` and ``/metrics`` on their own port (``ADMIN_PORT``)."""

    app: web.Application
    port: int


ADMIN_LISTENER = web.AppKey("admin_listener", AdminListener)


def base_app(
    name: str, *, client_max_size: int = 1024**2, admin_port: int | None = None
) -> web.Application:
    """The service's app with its health routes. With ``admin_port``, ``/readyz`` and
    ``/metrics`` are served only by ``app[ADMIN_LISTENER]`` (started by :func:`run`);
    the app itself keeps ``/healthz``."""
    app = web.Application(middlewares=[bind_request_context], client_max_size=client_max_size)
    app[SERVICE_NAME] = name
    add_health_routes(app, internal=admin_port is None)
    if admin_port is not None:
        app[ADMIN_LISTENER] = AdminListener(admin_app(app[READINESS_CHECKS]), admin_port)
    return app


def use_broker(app: web.Application, settings: BaseServiceSettings) -> None:
    """A robust connection and a confirm publisher (which declares the topology unless
    ``AMQP_DECLARE_TOPOLOGY=false``)."""
    app[DECLARES_TOPOLOGY] = settings.amqp_declare_topology
    startup.need(app, startup.rabbitmq(settings.amqp_url))

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        connection = await amqp.connect(settings.amqp_url, app[SERVICE_NAME])
        app[AMQP_CONNECTION] = connection
        app[PUBLISHER] = await Publisher.open(
            connection, settings.publish_timeout_s, declare=settings.amqp_declare_topology
        )

        async def broker_check() -> None:
            if not amqp.broker_ready(connection) or not app[PUBLISHER].ready:
                raise ConnectionError("broker connection or publisher channel is down")

        app[READINESS_CHECKS]["broker"] = broker_check
        yield
        await amqp.close_quietly(app[PUBLISHER], "publisher")
        await amqp.close_quietly(connection, "connection")

    app.cleanup_ctx.append(ctx)


def use_mysql(
    app: web.Application,
    settings: BaseServiceSettings,
    maxsize: int = 10,
    *,
    writable: bool = True,
) -> None:
    """The pool, and the database as a :class:`~paylane_common.outages.Dependency` whose
    outage pauses the consumers (``writable``: a read-only server counts as down)."""
    startup.need(app, startup.mysql(settings.mysql_url))

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with db.create_pool(settings.mysql_url, maxsize=maxsize) as pool:
            app[DB_POOL] = pool
            database = Dependency("mysql", partial(db.ping, pool, writable=writable))
            app[DATABASE] = database
            app[READINESS_CHECKS]["mysql"] = database.check
            yield
            await database.close()

    app.cleanup_ctx.append(ctx)


def serve(settings_cls: type[SettingsT], build_app: Callable[[SettingsT], web.Application]) -> None:
    """A service's ``main()``: settings (one clear line and exit 2 when invalid), logging,
    then the app until SIGTERM."""
    try:
        settings = load_settings(settings_cls)
    except ConfigError as exc:
        exit_on_config_error(exc)
        return
    configure_logging(settings.log_format)
    run(build_app(settings), settings)


def run(app: web.Application, settings: BaseServiceSettings) -> None:
    """Wait for the broker and the database (startup.py), then serve until SIGINT/SIGTERM;
    cleanup contexts then stop consumers and close resources."""

    def announce(_msg: str) -> None:
        log.info(
            "listening",
            service=app[SERVICE_NAME],
            url=f"http://{settings.http_host}:{settings.http_port}",
        )

    listener = app.get(ADMIN_LISTENER)
    if listener is not None:
        # After every resource is open, so /readyz never answers before its checks exist.
        app.cleanup_ctx.append(_serve_admin(listener, settings.http_host))
    app.on_startup.append(_freeze_startup_objects)  # last: after every resource is open
    # libuv's loop: sockets, timers and callbacks at a fraction of asyncio's cost.
    loop = uvloop.new_event_loop()
    listeners = [(settings.http_host, settings.http_port, listener is None)]
    if listener is not None:
        listeners.append((settings.http_host, listener.port, True))
    if not loop.run_until_complete(startup.wait_for(app.get(startup.NEEDED, []), listeners)):
        loop.close()
        return
    web.run_app(
        app,
        loop=loop,
        host=settings.http_host,
        port=settings.http_port,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        print=announce,
        access_log=None,
    )


def _serve_admin(
    listener: AdminListener, host: str
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        runner = web.AppRunner(listener.app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, host, listener.port).start()
        log.info("listening", service=app[SERVICE_NAME], url=f"http://{host}:{listener.port}")
        yield
        await runner.cleanup()

    return ctx


async def _freeze_startup_objects(_app: web.Application) -> None:
    """Move what start-up allocated (modules, settings, pools, clients) out of the garbage
    collector's reach: a full collection then scans only what requests allocate. Measured
    under load on ingress: full-collection pauses of about 50 ms became 1 to 7 ms."""
    gc.collect()
    gc.freeze()


OUTBOX_RELAY = web.AppKey("outbox_relay", OutboxRelay)
CONSUMER = web.AppKey("consumer", Consumer)


def use_consumer(
    app: web.Application,
    spec: QueueSpec,
    make_handler: Callable[[web.Application], Handler | BatchHandler],
    settings: ConsumerSettings,
    *,
    outbox_producer: str | None = None,
) -> None:
    """Consume ``spec`` with the handler built from the app's resources (in batches when
    it is a :class:`BatchHandler`); with ``outbox_producer``, also run that producer's
    outbox relay. Also prunes the inbox and outbox after ``RETENTION_DAYS``
    (retention.py). Add after use_broker and use_mysql: teardown runs in reverse, so
    consumers stop before their resources close."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if outbox_producer is not None:
            relay = OutboxRelay(
                app[DB_POOL], app[PUBLISHER], outbox_producer, database=app[DATABASE]
            )
            app[OUTBOX_RELAY] = relay
            relay.start()
        pruner = None
        if settings.retention_interval_s > 0:
            pruner = RetentionPruner(
                app[DB_POOL],
                retention_days=settings.retention_days,
                interval_s=settings.retention_interval_s,
            )
            pruner.start()
        handler = make_handler(app)
        make: Callable[..., Consumer] = Consumer
        if isinstance(handler, BatchHandler):
            make = partial(BatchConsumer, max_batch=settings.consumer_batch_max)
        consumer = make(
            app[AMQP_CONNECTION],
            app[PUBLISHER],
            spec,
            handler,
            database=app[DATABASE],
            retry=RetryPolicy.from_settings(settings),
            prefetch=settings.consumer_prefetch,
            declare=app[DECLARES_TOPOLOGY],
        )
        app[CONSUMER] = consumer
        app[READINESS_CHECKS]["consumer"] = consumer.check
        await consumer.start()
        watch = QueueWatch(app[AMQP_CONNECTION], (spec.name, spec.dlq))
        watch.start()
        yield
        await watch.stop()
        await consumer.stop()
        if pruner is not None:
            await pruner.stop()
        if outbox_producer is not None:
            await app[OUTBOX_RELAY].stop()

    app.cleanup_ctx.append(ctx)
