"""A same-origin proxy for the checkout demo (dev only): ``/checkout/api/…`` to the order
API, ``/checkout/notifier/ws`` and ``/checkout/notifier/events`` to the notifier.

The checkout page is served by the sandbox, on another port than the order API and the
notifier. Rather than open CORS on those services, the sandbox relays the page's calls,
so that nothing changes in the services' security. Only what a paying client sends is
passed on (its bearer token, the body, an idempotency key, ``Last-Event-ID``); never a
backend credential. Where they are: ``SANDBOX_ORDER_API_URL``, ``SANDBOX_NOTIFIER_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import structlog
from aiohttp import WSMsgType, web

from .settings import SandboxSettings

log = structlog.get_logger(__name__)

SESSION = web.AppKey("demo_proxy_session", aiohttp.ClientSession)
#: Request headers a browser's call to the order API may carry through.
FORWARDED = ("Authorization", "Content-Type", "Accept", "Idempotency-Key")
API_TIMEOUT = aiohttp.ClientTimeout(total=30)
#: The session's: streams stay open for as long as the client listens.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)


def _unavailable(what: str, exc: Exception) -> web.Response:
    log.warning("demo_proxy_upstream_unavailable", upstream=what, error=repr(exc)[:200])
    return web.json_response(
        {"error": "upstream_unavailable", "message": f"{what} is not reachable"}, status=502
    )


class DemoProxy:
    def __init__(self, order_api: str, notifier: str) -> None:
        self.order_api = order_api
        self.notifier = notifier

    async def api(self, request: web.Request) -> web.Response:
        """``/checkout/api/{path}`` → ``{order_api}/{path}``: the answer as it came."""
        url = f"{self.order_api}/{request.match_info['path']}"
        headers = {k: request.headers[k] for k in FORWARDED if k in request.headers}
        try:
            async with request.app[SESSION].request(
                request.method,
                url,
                params=request.query,
                data=await request.read(),
                headers=headers,
                timeout=API_TIMEOUT,
            ) as upstream:
                body = await upstream.read()
                content_type = upstream.headers.get("Content-Type", "application/json")
                return web.Response(
                    status=upstream.status, body=body, headers={"Content-Type": content_type}
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _unavailable("the order API", exc)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``/checkout/notifier/events`` → the notifier's SSE stream, chunk by chunk."""
        headers = {k: request.headers[k] for k in ("Last-Event-ID",) if k in request.headers}
        try:
            async with request.app[SESSION].get(
                f"{self.notifier}/events",
                params=request.query,
                headers=headers,
            ) as upstream:
                if upstream.status != 200:
                    return web.Response(
                        status=upstream.status,
                        body=await upstream.read(),
                        content_type="application/json",
                    )
                response = web.StreamResponse(
                    headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                return response
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _unavailable("the notifier", exc)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """``/checkout/notifier/ws`` → the notifier's WebSocket; frames and the close code
        (4401 token expired, 4429, 1013) pass through unchanged."""
        try:
            upstream = await request.app[SESSION].ws_connect(
                f"{self.notifier}/ws", params=request.query
            )
        except aiohttp.WSServerHandshakeError as exc:
            return web.json_response(
                {"error": "refused", "message": exc.message}, status=exc.status
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _unavailable("the notifier", exc)
        client = web.WebSocketResponse()
        await client.prepare(request)
        async with upstream:
            to_upstream = asyncio.create_task(_pump(client, upstream))
            try:
                reason = await _relay(upstream, client)
            finally:
                to_upstream.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await to_upstream
            code = upstream.close_code or aiohttp.WSCloseCode.GOING_AWAY
            await client.close(code=code, message=reason.encode())
        return client


async def _pump(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """The browser's frames to the notifier (it ignores them); its close closes upstream."""
    async for message in client:
        if message.type == WSMsgType.TEXT:
            await upstream.send_str(message.data)
    await upstream.close()


async def _relay(upstream: aiohttp.ClientWebSocketResponse, client: web.WebSocketResponse) -> str:
    """The notifier's frames to the browser, until it closes; returns its close reason."""
    while True:
        message = await upstream.receive()
        if message.type == WSMsgType.TEXT:
            await client.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await client.send_bytes(message.data)
        elif message.type == WSMsgType.CLOSE:
            return str(message.extra or "")
        else:  # CLOSED, CLOSING, ERROR
            return ""


def add_routes(app: web.Application, settings: SandboxSettings) -> None:
    proxy = DemoProxy(settings.sandbox_order_api_url, settings.sandbox_notifier_url)

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(timeout=STREAM_TIMEOUT) as http:
            app[SESSION] = http
            yield

    app.cleanup_ctx.append(session)
    r = app.router
    r.add_route("*", "/checkout/api/{path:.+}", proxy.api)
    r.add_get("/checkout/notifier/events", proxy.events)
    r.add_get("/checkout/notifier/ws", proxy.websocket)
