"""``/healthz`` (process alive), ``/readyz`` (dependencies reachable), ``/metrics``.

A service facing the internet (ingress) serves ``/readyz`` and ``/metrics`` on a second,
internal listener only (:func:`admin_app`): its public port answers them 404. Readiness
names the broker and the database, metrics name queues and outcomes: nothing for the
internet to read or to hammer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .outages import NotReady

ReadinessCheck = Callable[[], Awaitable[None]]
READINESS_CHECKS = web.AppKey("readiness_checks", dict[str, ReadinessCheck])


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    checks = request.app[READINESS_CHECKS]
    results: dict[str, str] = {}

    async def run(name: str, check: ReadinessCheck) -> None:
        try:
            async with asyncio.timeout(2.0):
                await check()
            results[name] = "ok"
        except NotReady as exc:  # says why, in words meant for the operator
            results[name] = f"down: {exc}"
        except Exception as exc:
            results[name] = f"down: {type(exc).__name__}"

    await asyncio.gather(*(run(n, c) for n, c in checks.items()))
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
    app.router.add_get("/healthz", healthz)
    if internal:
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics_view)


def admin_app(checks: dict[str, ReadinessCheck]) -> web.Application:
    """The internal listener's app: the three routes, with the service's own checks."""
    admin = web.Application()
    admin[READINESS_CHECKS] = checks
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics_view)
    return admin
