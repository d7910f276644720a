"""``paylane serve sandbox``: a local WeChat Pay APIv3 emulator. Wiring only."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from paylane_common.runtime.service import base_app, serve

from . import (
    cloud_hosting_api,
    console,
    control_api,
    demo_proxy,
    miniprogram_api,
    shipping_api,
    wechat_api,
)
from .app_keys import SANDBOX
from .sandbox import Sandbox
from .settings import SandboxSettings


def build_app(
    settings: SandboxSettings, *, clock: Callable[[], float] = time.time
) -> web.Application:
    app = base_app("sandbox")
    app[SANDBOX] = Sandbox(settings, clock=clock)
    wechat_api.add_routes(app)
    cloud_hosting_api.add_routes(app)
    control_api.add_routes(app)
    miniprogram_api.add_routes(app)
    shipping_api.add_routes(app)
    console.add_routes(app)
    demo_proxy.add_routes(app, settings)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await app[SANDBOX].start()
        yield
        await app[SANDBOX].close()

    app.cleanup_ctx.append(lifecycle)
    return app


def main() -> None:
    serve(SandboxSettings, build_app)
