"""The app backend's side of paylane's webhooks, for the end-to-end tests: a local HTTP
endpoint that answers 204 and keeps every request (headers, body) it received."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class WebhookReceiver:
    url: str
    #: Every request, in arrival order: its headers and its body.
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@asynccontextmanager
async def webhook_receiver(path: str) -> AsyncIterator[WebhookReceiver]:
    """A receiver listening on 127.0.0.1 at ``path`` until the block ends."""
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post(path, hook)
    async with TestServer(app, host="127.0.0.1") as server:
        yield WebhookReceiver(str(server.make_url(path)), received)
