"""``/healthz`` (process alive), ``/readyz`` (dependencies reachable), ``/metrics``.

Every service serves ``/readyz`` and ``/metrics`` on a second, internal listener only
(:func:`admin_app`, ``ADMIN_PORT``): its public port answers them 404. Readiness names the
broker and the database, metrics name queues and outcomes: nothing for the internet to
read or to hammer.

Readiness is :class:`Readiness`: one run of the checks at a time, its answer kept for
:data:`READINESS_TTL_S`. A database check opens a connection of its own (db.probe), so
without it every probe (a kubelet, a balancer, a curious client) was a new connection to
the shared database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from paylane_common.runtime.outages import NotReady

ReadinessCheck = Callable[[], Awaitable[None]]
READINESS_CHECKS = web.AppKey("readiness_checks", dict[str, ReadinessCheck])

#: How long an answer of the checks is served again before they run anew.
READINESS_TTL_S = 1.0
#: A check that has not answered after this long is down.
CHECK_TIMEOUT_S = 2.0


class Readiness:
    """The checks of ``checks`` (which services fill in as their resources open), run by
    one probe at a time: probes arriving meanwhile wait for its answer, and probes
    within :data:`READINESS_TTL_S` after it get the same answer."""

    def __init__(
        self, checks: dict[str, ReadinessCheck], *, ttl_s: float = READINESS_TTL_S
    ) -> None:
        self.checks = checks
        self._ttl_s = ttl_s
        self._answer: dict[str, str] | None = None
        self._answered_at = 0.0
        self._running: asyncio.Task[dict[str, str]] | None = None
        self._generation = 0

    async def results(self) -> dict[str, str]:
        """``{check: "ok" | "down: why"}``."""
        if self._answer is not None and time.monotonic() - self._answered_at < self._ttl_s:
            return self._answer
        if self._running is None:
            self._running = asyncio.create_task(self._run(self._generation))
        # Shielded: a prober that hangs up does not cancel the others' answer.
        return await asyncio.shield(self._running)

    def invalidate(self) -> None:
        """The next probe runs the checks anew (a check was added: the shutdown's)."""
        self._generation += 1
        self._answer = None
        self._running = None

    async def _run(self, generation: int) -> dict[str, str]:
        results: dict[str, str] = {}

        async def run(name: str, check: ReadinessCheck) -> None:
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_S):
                    await check()
                results[name] = "ok"
            except NotReady as exc:  # says why, in words meant for the operator
                results[name] = f"down: {exc}"
            except Exception as exc:
                results[name] = f"down: {type(exc).__name__}"

        try:
            await asyncio.gather(*(run(n, c) for n, c in list(self.checks.items())))
        finally:
            if generation == self._generation:
                self._running = None
        if generation == self._generation:
            self._answer = results
            self._answered_at = time.monotonic()
        return results


READINESS = web.AppKey("readiness", Readiness)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    results = await request.app[READINESS].results()
    ready = all(v == "ok" for v in results.values())
    return web.json_response(
        {"status": "ready" if ready else "not ready", "checks": results},
        status=200 if ready else 503,
    )


async def metrics_view(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_health_routes(app: web.Application, *, internal: bool = True) -> None:
    """Register ``/healthz`` and, with ``internal``, ``/readyz`` and ``/metrics``; services
    add checks to ``app[READINESS_CHECKS]``."""
    app[READINESS_CHECKS] = {}
    app[READINESS] = Readiness(app[READINESS_CHECKS])
    app.router.add_get("/healthz", healthz)
    if internal:
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics_view)


def admin_app(readiness: Readiness) -> web.Application:
    """The internal listener's app: the three routes, with the service's own readiness."""
    admin = web.Application()
    admin[READINESS_CHECKS] = readiness.checks
    admin[READINESS] = readiness
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics_view)
    return admin
