"""Wiring shared by the services: resources as aiohttp cleanup contexts reached through
typed AppKeys, request-id binding, and the run loop with graceful SIGTERM."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import aiomysql
import structlog
import uvloop
from aio_pika.abc import AbstractRobustConnection
from aiohttp import hdrs, web

from paylane_common.broker import amqp
from paylane_common.broker.identities import Publishers
from paylane_common.broker.pressure import IngressYield, signals_connection
from paylane_common.broker.publisher import Publisher
from paylane_common.broker.queue_watch import QueueWatch
from paylane_common.broker.topology import QueueSpec
from paylane_common.delivery.batching import BatchConsumer, BatchHandler
from paylane_common.delivery.consumer import Consumer, Handler, RetryPolicy
from paylane_common.delivery.outbox import OutboxRelay
from paylane_common.delivery.retention import RetentionPruner
from paylane_common.runtime import existing_env, startup
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.logs import SERVICE, configure_logging
from paylane_common.runtime.outages import Dependency, NotReady
from paylane_common.runtime.settings import (
    BaseServiceSettings,
    ConsumerSettings,
    environment_of,
    exit_on_config_error,
    load_settings,
)
from paylane_common.storage import db
from paylane_common.web.health import READINESS, READINESS_CHECKS, add_health_routes, admin_app
from paylane_common.web.listeners import TimedAppRunner
from paylane_common.wechatpay.merchant_api import MerchantApiConfig, WechatPayApi, wechatpay_api

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
#: The broker URL (a second connection: the signals', pressure.py).
AMQP_URL = web.AppKey("amqp_url", str)
#: Who publishes each event type (identities.py): what the consumers accept.
PUBLISHERS = web.AppKey("publishers", Publishers)

#: SIGTERM: stop consuming, finish in-flight work, exit within 10 s (docs/commands.md): the
#: drain (open connections still served, see _Shutdown) takes DRAIN_S, then HTTP
#: handlers in flight get SHUTDOWN_TIMEOUT_S, then consumers get Consumer.stop()'s budget.
DRAIN_S = 0.5
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
    """The service's app with its health routes. With ``admin_port`` (every service but
    the sandbox, a dev tool), ``/readyz`` and ``/metrics`` are served only by
    ``app[ADMIN_LISTENER]`` (started by :func:`run`); the app itself keeps ``/healthz``."""
    app = web.Application(middlewares=[bind_request_context], client_max_size=client_max_size)
    app[SERVICE_NAME] = name
    add_health_routes(app, internal=admin_port is None)
    if admin_port is not None:
        app[ADMIN_LISTENER] = AdminListener(admin_app(app[READINESS]), admin_port)
    return app


def use_broker(app: web.Application, settings: BaseServiceSettings) -> None:
    """A robust connection and a confirm publisher (which declares the topology unless
    ``AMQP_DECLARE_TOPOLOGY=false``)."""
    app[DECLARES_TOPOLOGY] = settings.amqp_declare_topology
    app[AMQP_URL] = settings.amqp_url
    app[PUBLISHERS] = settings.publishers
    startup.need(app, startup.rabbitmq(settings.amqp_url))

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with amqp.connect(settings.amqp_url, app[SERVICE_NAME]) as connection:
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

    app.cleanup_ctx.append(ctx)


def use_mysql(
    app: web.Application,
    settings: BaseServiceSettings,
    maxsize: int = 10,
    *,
    writable: bool = True,
) -> None:
    """The pool, and the database as a :class:`~paylane_common.runtime.outages.Dependency` whose
    outage pauses the consumers (``writable``: a read-only server counts as down)."""
    startup.need(app, startup.mysql(settings.mysql_url))

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with db.create_pool(settings.mysql_url, maxsize=maxsize) as pool:
            app[DB_POOL] = pool
            database = Dependency("mysql", partial(db.probe, settings.mysql_url, writable=writable))
            app[DATABASE] = database
            app[READINESS_CHECKS]["mysql"] = database.check
            yield
            await database.close()

    app.cleanup_ctx.append(ctx)


class CommandResources:
    """A command's database pool, broker connection and WeChat Pay API client (``paylane
    replay``, ``refund``, ``reconcile``…): each opened on first use, with the same context
    managers as the services', and closed with ``stack`` (:func:`command_resources`)."""

    def __init__(self, settings: BaseServiceSettings, name: str, stack: AsyncExitStack) -> None:
        self._settings = settings
        self._name = name
        self._stack = stack
        self._pool: aiomysql.Pool | None = None
        self._broker: AbstractRobustConnection | None = None
        self._wechatpay: WechatPayApi | None = None

    async def pool(self, maxsize: int = 2) -> aiomysql.Pool:
        """``MYSQL_URL``'s pool (``maxsize`` counts at the first call only)."""
        if self._pool is None:
            self._pool = await self._stack.enter_async_context(
                db.create_pool(self._settings.mysql_url, maxsize=maxsize)
            )
        return self._pool

    async def broker(self) -> AbstractRobustConnection:
        """A connection to ``AMQP_URL``, named ``paylane-<name>``."""
        if self._broker is None:
            self._broker = await self._stack.enter_async_context(
                amqp.connect(self._settings.amqp_url, self._name)
            )
        return self._broker

    async def wechatpay(self, merchant: MerchantApiConfig) -> WechatPayApi:
        """The WeChat Pay API client, from ``merchant`` (the command's settings)."""
        if self._wechatpay is None:
            self._wechatpay = await self._stack.enter_async_context(wechatpay_api(merchant))
        return self._wechatpay


@asynccontextmanager
async def command_resources(
    settings: BaseServiceSettings, name: str
) -> AsyncIterator[CommandResources]:
    """What a command opens, all closed when it ends (in the reverse order)."""
    async with AsyncExitStack() as stack:
        yield CommandResources(settings, name, stack)


def serve(settings_cls: type[SettingsT], build_app: Callable[[SettingsT], web.Application]) -> None:
    """A service's ``main()``: settings (one clear line and exit 2 when invalid), logging,
    then the app until SIGTERM."""
    serve_together([Hosted(None, settings_cls, build_app)])


@dataclass(frozen=True)
class Hosted:
    """One service of a process: its name where it shares the process with others
    (``paylane serve consumers``; None alone), its settings and how its app is built."""

    name: str | None
    settings_cls: type[BaseServiceSettings]
    build_app: Callable[[Any], web.Application]


def serve_together(services: Sequence[Hosted]) -> None:
    """:func:`serve` for one service or several in one process and one event loop, each
    with its own settings (a co-hosted one reads ``<NAME>__X`` as its ``X``:
    :func:`~paylane_common.runtime.settings.environment_of`), app, listeners and
    resources. The first SIGTERM stops them all; so does one's failure at start."""
    loaded: list[BaseServiceSettings] = []
    try:
        for hosted in services:
            with environment_of(hosted.name) if hosted.name else nullcontext():
                loaded.append(load_settings(hosted.settings_cls))
    except ConfigError as exc:
        exit_on_config_error(exc)
        return
    configure_logging(loaded[0].log_format)
    existing_env.warn_once()
    try:
        run_together(
            [
                (hosted.build_app(settings), settings, hosted.name)
                for hosted, settings in zip(services, loaded, strict=True)
            ]
        )
    except ConfigError as exc:  # found at start: a CA that does not verify the database
        exit_on_config_error(exc)


def run(app: web.Application, settings: BaseServiceSettings) -> None:
    """Wait for the broker and the database (startup.py), then serve until SIGINT/SIGTERM;
    then drain and shut down (:func:`_serve`)."""
    run_together([(app, settings, None)])


def run_together(
    services: Sequence[tuple[web.Application, BaseServiceSettings, str | None]],
) -> None:
    """:func:`run` for every app of the process, on one uvloop event loop; each app's
    tasks log its name (``logs.SERVICE``) when it is given."""
    prepared = [_prepare(app, settings, name) for app, settings, name in services]
    # libuv's loop: sockets, timers and callbacks at a fraction of asyncio's cost.
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve_all(prepared))
    finally:
        _cancel_remaining_tasks(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@dataclass(frozen=True)
class _Prepared:
    app: web.Application
    settings: BaseServiceSettings
    shutdown: _Shutdown
    #: (host, port, serves /readyz): what startup.py answers on while it waits.
    listeners: list[tuple[str, int, bool]]
    name: str | None


def _prepare(app: web.Application, settings: BaseServiceSettings, name: str | None) -> _Prepared:
    listener = app.get(ADMIN_LISTENER)
    if listener is not None:
        # After every resource is open, so /readyz never answers before its checks exist.
        app.cleanup_ctx.append(_serve_admin(listener, settings))
    app.on_startup.append(_freeze_startup_objects)  # last: after every resource is open
    shutdown = _Shutdown(app)
    app.on_response_prepare.append(shutdown.close_connection)
    listeners = [(settings.http_host, settings.http_port, listener is None)]
    if listener is not None:
        listeners.append((settings.http_host, listener.port, True))
    return _Prepared(app, settings, shutdown, listeners, name)


async def _serve_all(prepared: list[_Prepared]) -> None:
    """Every app's :func:`_serve` at once, each in a context naming its service; when one
    fails, the others are stopped as by SIGTERM, then the failure is raised."""
    shutdowns = [each.shutdown for each in prepared]
    _listen_for_signals(shutdowns)
    tasks = []
    for each in prepared:
        context = contextvars.copy_context()
        context.run(SERVICE.set, each.name)
        serving = _serve(each.app, each.settings, each.shutdown, each.listeners)
        tasks.append(asyncio.create_task(serving, context=context))
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for shutdown in shutdowns:
            shutdown.begin(None)
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _serve(
    app: web.Application,
    settings: BaseServiceSettings,
    shutdown: _Shutdown,
    listeners: list[tuple[str, int, bool]],
) -> None:
    """Once the dependencies answer (startup.py), the app on its port until the first
    SIGTERM or SIGINT, then the drain (:meth:`_Shutdown.drain`), then aiohttp's
    shutdown: idle connections closed, ``on_shutdown`` (the notifier's clients),
    handlers in flight given :data:`SHUTDOWN_TIMEOUT_S`, cleanup contexts in reverse
    (consumers stop, resources close)."""
    if not await shutdown.wait_for_dependencies(
        app.get(startup.NEEDED, []), listeners, partial(http_runner, settings=settings)
    ):
        return
    runner = http_runner(app, settings, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    # The admin listener opens during setup, before the public one: until that is open too,
    # /readyz says so, or a balancer (or a test) sends traffic to a port that refuses it.
    app[READINESS_CHECKS][NOT_LISTENING] = _not_listening_yet
    try:
        # Not interrupted by a signal: the broker's client does not survive a cancelled
        # connect (it goes on reconnecting). The dependencies have just answered, so it
        # is short; the shutdown follows at once.
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        del app[READINESS_CHECKS][NOT_LISTENING]
        app[READINESS].invalidate()
        log.info(
            "listening",
            service=app[SERVICE_NAME],
            url=f"http://{settings.http_host}:{settings.http_port}",
        )
        await shutdown.requested()
        await shutdown.drain(site)
    finally:
        await runner.cleanup()
    log.info("stopped", service=app[SERVICE_NAME], took_s=shutdown.took_s())


def _listen_for_signals(shutdowns: list[_Shutdown]) -> None:
    """From now on, for the life of the process, the first SIGTERM or SIGINT stops every
    service (:meth:`_Shutdown.begin`); any further one is ignored."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        for other in _STOP_SIGNALS:
            loop.remove_signal_handler(other)
            signal.signal(other, signal.SIG_IGN)  # until the process exits
        for shutdown in shutdowns:
            shutdown.begin(sig)

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)


class _Shutdown:
    """SIGTERM's sequence (docs/commands.md: exit within 10 s).

    The first SIGTERM or SIGINT starts it (:func:`_listen_for_signals`; while the
    service still waits for its dependencies, it stops waiting); any further one is
    ignored, so that a second signal (``make run``'s Ctrl-C reaches both honcho and the
    services, and honcho then signals them again; an impatient ``kill``) cannot cut it
    short: SIGKILL can.

    Its first step is the drain: ``/readyz`` says "shutting down", the listener closes
    (a balancer's next connection is refused, which it may always pass to another
    replica) and for :data:`DRAIN_S` the connections already open are still served,
    every response closing its connection. A request a balancer sent on a kept-alive
    connection as the signal landed is then answered, not dropped unanswered: a
    balancer may not pass a POST that reached a replica to another one (nginx does not
    by default), so a dropped WeChat notification would be answered 502.
    """

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._stop = asyncio.Event()
        self._waiting: asyncio.Task[bool] | None = None
        self._draining = False
        self._began = 0.0

    def begin(self, sig: signal.Signals | None) -> None:
        """The signal (``sig``), or a co-hosted service's failure (None): stop."""
        if self._stop.is_set():
            return
        self._began = time.monotonic()
        log.info(
            "shutting_down",
            service=self._app[SERVICE_NAME],
            signal=sig.name if sig is not None else None,
        )
        self._stop.set()
        if self._waiting is not None:
            self._waiting.cancel()

    async def wait_for_dependencies(
        self,
        needed: list[startup.Needed],
        listeners: list[tuple[str, int, bool]],
        make_runner: Callable[[web.Application], web.AppRunner],
    ) -> bool:
        """:func:`startup.wait_for`, which may wait for ever: False if the signal came first."""
        self._waiting = asyncio.create_task(startup.wait_for(needed, listeners, make_runner))
        try:
            return await self._waiting
        finally:
            self._waiting = None

    async def requested(self) -> None:
        """Until the signal."""
        await self._stop.wait()

    async def drain(self, site: web.TCPSite) -> None:
        self._draining = True
        self._app[READINESS_CHECKS]["shutdown"] = _shutting_down
        self._app[READINESS].invalidate()  # said at once, not after the cached answer
        await site.stop()
        await asyncio.sleep(DRAIN_S)

    async def close_connection(self, _request: web.Request, response: web.StreamResponse) -> None:
        """``on_response_prepare``: while draining, no connection is kept alive."""
        if self._draining:
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"

    def took_s(self) -> float:
        return round(time.monotonic() - self._began, 2)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def _shutting_down() -> None:
    raise NotReady("shutting down")


#: The readiness check that holds /readyz at 503 until the public listener is open.
NOT_LISTENING = "listening"


async def _not_listening_yet() -> None:
    raise NotReady("the public listener is not open yet")


def _cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """What is still running once the app is down (as ``web.run_app`` does)."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def http_runner(
    app: web.Application, settings: BaseServiceSettings, shutdown_timeout: float = 1.0
) -> web.AppRunner:
    """A runner for one of the service's listeners, with its keep-alive and header-read
    timeouts (listeners.py)."""
    return TimedAppRunner(
        app,
        keepalive_timeout_s=settings.http_keepalive_timeout_s,
        header_timeout_s=settings.http_header_timeout_s,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
    )


def _serve_admin(
    listener: AdminListener, settings: BaseServiceSettings
) -> Callable[[web.Application], AsyncIterator[None]]:
    host = settings.http_host

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        runner = http_runner(listener.app, settings)
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
        signals = (
            await signals_connection(app[AMQP_URL], app[SERVICE_NAME])
            if settings.consumer_yield_max_s > 0
            else None
        )
        yielding = IngressYield(
            signals,
            app[SERVICE_NAME],
            settings.consumer_yield_max_s,
            declare=app[DECLARES_TOPOLOGY],
        )
        await yielding.start()
        consumer = consumer_of(app, spec, handler, settings, yield_to=yielding)
        app[CONSUMER] = consumer
        app[READINESS_CHECKS]["consumer"] = consumer.check
        await consumer.start()
        watch = QueueWatch(app[AMQP_CONNECTION], (spec.name, spec.dlq))
        watch.start()
        yield
        await watch.stop()
        await consumer.stop()  # releases a batch waiting for its turn: it is not started
        await yielding.stop()
        if signals is not None:
            await amqp.close_quietly(signals, "signals connection")
        if pruner is not None:
            await pruner.stop()
        if outbox_producer is not None:
            await app[OUTBOX_RELAY].stop()

    app.cleanup_ctx.append(ctx)


def consumer_of(
    app: web.Application,
    spec: QueueSpec,
    handler: Handler | BatchHandler,
    settings: ConsumerSettings,
    *,
    yield_to: IngressYield | None = None,
) -> Consumer:
    """A consumer of ``spec`` (in batches when ``handler`` is a :class:`BatchHandler`) on
    the app's broker connection and publisher, with the service's retry policy: the main
    queue's (use_consumer) and the order service's others (its webhooks, its rejection
    records). The caller starts and stops it."""
    make: Callable[..., Consumer] = Consumer
    if isinstance(handler, BatchHandler):
        make = partial(BatchConsumer, max_batch=settings.consumer_batch_max)
    return make(
        app[AMQP_CONNECTION],
        app[PUBLISHER],
        spec,
        handler,
        database=app[DATABASE],
        retry=RetryPolicy.from_settings(settings),
        prefetch=settings.consumer_prefetch,
        declare=app[DECLARES_TOPOLOGY],
        yield_to=yield_to,
        publishers=app[PUBLISHERS],
    )
