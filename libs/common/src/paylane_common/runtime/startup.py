"""Start order does not matter: a service whose broker or database is not there yet waits.

While it waits, the service is alive and not ready: a holding app on its ports answers
``/healthz`` 200, ``/readyz`` 503 naming what it waits for, and everything else 503 (so
WeChat Pay retries a notification later). It logs one line an attempt, naming the host
and never the credentials, and tries again with backoff until every dependency answers;
then the service opens its resources and serves as usual. A :class:`ConfigError` (TLS
to the database refused, mysql_tls.py) is not waited out: it ends the start-up. ``use_broker``
and ``use_mysql`` register what they need (:data:`NEEDED`); ``service.run`` waits for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import structlog
from aiohttp import web
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    wait_exponential_jitter,
)

from paylane_common.broker.amqp import connect, hosts_of
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.outages import describe
from paylane_common.runtime.settings import MySQLParams
from paylane_common.storage import db

log = structlog.get_logger(__name__)

#: Each attempt gives up after this long (a host that swallows packets).
ATTEMPT_TIMEOUT_S = 10.0
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 15.0


@dataclass(frozen=True)
class Needed:
    """A dependency the service cannot start without."""

    name: str
    #: Where it is looked for, without credentials (for logs and ``/readyz``).
    where: str
    #: Raises while it cannot be reached.
    reach: Callable[[], Awaitable[None]]


NEEDED = web.AppKey("needed", list[Needed])


def rabbitmq(url: str) -> Needed:
    async def reach() -> None:  # any node of a cluster will do
        async with connect(url, "startup-probe"):
            pass

    return Needed("rabbitmq", ", ".join(hosts_of(url)), reach)


def mysql(url: str, *, database: bool = True) -> Needed:
    """MySQL at ``url``; with ``database``, its database must exist too (a service
    started before ``paylane migrate`` waits for it)."""
    params = MySQLParams.from_url(url)
    reach = partial(db.probe, url, ATTEMPT_TIMEOUT_S, database=database)

    return Needed("mysql", f"{params.host}:{params.port}", reach)


def need(app: web.Application, needed: Needed) -> None:
    app.setdefault(NEEDED, []).append(needed)


def holding_app(waiting: dict[str, str], *, internal: bool) -> web.Application:
    """What the service's port answers while it waits (``internal``: with ``/readyz``)."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "starting": True})

    async def readyz(_request: web.Request) -> web.Response:
        checks = {name: f"waiting: {state}" for name, state in waiting.items()}
        return web.json_response({"status": "not ready", "checks": checks}, status=503)

    async def unavailable(_request: web.Request) -> web.Response:
        message = "starting: waiting for " + ", ".join(waiting)
        return web.json_response({"error": "unavailable", "message": message}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    if internal:
        app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/{tail:.*}", unavailable)
    return app


async def wait_for(
    needed: list[Needed],
    listeners: list[tuple[str, int, bool]],
    make_runner: Callable[[web.Application], web.AppRunner] | None = None,
) -> bool:
    """Until every dependency answers, with the holding app on ``listeners`` (host,
    port, internal), each run by ``make_runner``. False when cancelled first (SIGTERM or
    SIGINT: ``service.run`` cancels the start-up)."""
    if not needed:
        return True
    waiting = {n.name: f"{n.where} not tried yet" for n in needed}
    runners = []
    for host, port, internal in listeners:
        holding = holding_app(waiting, internal=internal)
        runner = make_runner(holding) if make_runner else web.AppRunner(holding, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
    quiet = _quiet_aiormq()
    try:
        for dependency in needed:
            await _reach(dependency, waiting)
        return True
    except asyncio.CancelledError:
        log.info("stopped_while_waiting", waiting_for=sorted(waiting))
        return False
    finally:
        quiet.restore()
        for runner in runners:
            await runner.cleanup()


@dataclass
class _Level:
    logger: logging.Logger
    level: int

    def restore(self) -> None:
        self.logger.setLevel(self.level)


def _quiet_aiormq() -> _Level:
    """aiormq logs each failed connect as an error of its own: while waiting, the one
    line an attempt is ours."""
    logger = logging.getLogger("aiormq.connection")
    saved = _Level(logger, logger.level)
    logger.setLevel(logging.CRITICAL)
    return saved


async def _reach(dependency: Needed, waiting: dict[str, str]) -> None:
    def logged(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        reason = describe(error) if error is not None else "unknown"
        waiting[dependency.name] = f"{dependency.where}: {reason}"
        log.warning(
            "waiting_for_dependency",
            dependency=dependency.name,
            at=dependency.where,
            attempt=state.attempt_number,
            error=reason,
            retry_in_s=round(state.upcoming_sleep, 1),
        )

    async for attempt in AsyncRetrying(
        wait=wait_exponential_jitter(multiplier=FIRST_DELAY_S, max=MAX_DELAY_S, jitter=1.0),
        before_sleep=logged,
        # Waiting cannot fix a configuration error (a CA that does not verify the
        # database's certificate): it stops the start-up, exit 2 (service.serve).
        retry=retry_if_not_exception_type(ConfigError),
        reraise=True,
    ):
        with attempt:
            async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                await dependency.reach()
    waiting.pop(dependency.name, None)
    log.info("dependency_reached", dependency=dependency.name, at=dependency.where)
