"""The console and checkout pages, the QR code, and the checkout demo's same-origin proxy
(against a stand-in order API and notifier; the real ones: tests/frontend)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from paylane_sandbox.console import client_js_path, qr_svg
from tests.support.clients import next_sse_event
from tests.support.stack import free_port

# --- pages -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/", "text/html", "paylane sandbox"),
        ("/checkout", "text/html", "checkout demo"),
        ("/static/console.js", "javascript", "/sandbox/orders"),
        ("/static/checkout.js", "javascript", 'from "/paylane-client.js"'),
        ("/paylane-client.js", "text/javascript", "export class PaylaneClient"),
    ],
)
async def test_pages_and_scripts_are_served(sandbox, path, content_type, marker):
    answer = await sandbox.control("GET", path)
    assert answer.status == 200
    assert content_type in answer.headers["Content-Type"]
    assert marker in answer.body.decode()


def test_the_client_library_served_is_the_repositorys():
    path = client_js_path()
    assert path is not None and path.parts[-3:] == ("clients", "js", "paylane-client.js")


async def test_qr_is_an_svg_of_the_text(sandbox):
    code_url = "weixin://wxpay/bizpayurl?pr=abc1234"
    answer = await sandbox.control("GET", "/sandbox/qr?text=" + code_url.replace("?", "%3F"))
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("image/svg+xml")
    assert answer.body.decode() == qr_svg(code_url)
    assert answer.body.startswith(b"<?xml") and b"<svg" in answer.body
    assert qr_svg(code_url) != qr_svg(code_url + "5")


@pytest.mark.parametrize("query", ["", "?text=", "?text=" + "x" * 513])
async def test_qr_needs_a_short_text(sandbox, query):
    answer = await sandbox.control("GET", "/sandbox/qr" + query)
    assert answer.status == 400 and answer.json["error"] == "BAD_REQUEST"


# --- the checkout demo's proxy ------------------------------------------------------------------


class Upstream:
    """The order API and the notifier, played: what they were asked, and scripted answers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.ws_received: asyncio.Queue[str] = asyncio.Queue()

    async def api(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": dict(request.headers),
                "body": await request.text(),
            }
        )
        return web.json_response({"error": "conflict", "message": "as scripted"}, status=409)

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "order.state", "token": request.query["token"]}))
        message = await ws.receive()
        await self.ws_received.put(message.data)
        await ws.close(code=4401, message=b"token expired")
        return ws

    async def events(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("token") != "good":
            return web.json_response({"error": "unauthorized"}, status=401)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        last = request.headers.get("Last-Event-ID", "none")
        await response.write(f'id: 2\ndata: {{"last": "{last}"}}\n\n'.encode())
        await response.write(b": ping\n\nid: 3\ndata: {}\n\n")
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/orders/{tail:.*}", self.api)
        app.router.add_get("/ws", self.ws)
        app.router.add_get("/events", self.events)
        return app


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    played = Upstream()
    server = TestServer(played.app())
    await server.start_server()
    yield played, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def proxied(start_sandbox: Callable[..., Any], upstream: tuple[Upstream, str]) -> Any:
    _, url = upstream
    return await start_sandbox(sandbox_order_api_url=url, sandbox_notifier_url=url)


async def test_api_calls_pass_what_a_paying_client_sends_and_no_backend_secret(proxied, upstream):
    played, _ = upstream
    headers = {
        "Authorization": "Bearer user-token",
        "Idempotency-Key": "k1",
        "X-Internal-Secret": "the backend's",
        "Cookie": "sandbox=1",
    }
    async with proxied.client.post(
        "/checkout/api/orders/P1/close?x=1", data=b'{"a": 1}', headers=headers
    ) as response:
        assert response.status == 409
        assert await response.json() == {"error": "conflict", "message": "as scripted"}
    (seen,) = played.requests
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/orders/P1/close", {"x": "1"})
    assert seen["body"] == '{"a": 1}'
    assert seen["headers"]["Authorization"] == "Bearer user-token"
    assert seen["headers"]["Idempotency-Key"] == "k1"
    assert "X-Internal-Secret" not in seen["headers"] and "Cookie" not in seen["headers"]


async def test_websocket_frames_and_the_close_code_pass_through(proxied, upstream):
    played, _ = upstream
    async with proxied.client.ws_connect("/checkout/notifier/ws?token=t%2F1") as ws:
        first = await ws.receive_json(timeout=5)
        assert first == {"type": "order.state", "token": "t/1"}
        await ws.send_str("hello")
        assert await asyncio.wait_for(played.ws_received.get(), 5) == "hello"
        closing = await ws.receive(timeout=5)
        assert closing.type == aiohttp.WSMsgType.CLOSE
        assert (closing.data, closing.extra) == (4401, "token expired")


async def test_sse_is_streamed_with_last_event_id_and_refusals_kept(proxied):
    async with proxied.client.get(
        "/checkout/notifier/events?token=good", headers={"Last-Event-ID": "1"}
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        assert await next_sse_event(response.content) == ("2", {"last": "1"})
        assert await next_sse_event(response.content) == ("3", {})
    async with proxied.client.get("/checkout/notifier/events?token=bad") as refused:
        assert refused.status == 401


async def test_an_unreachable_upstream_is_a_502(start_sandbox):
    nowhere = f"http://127.0.0.1:{free_port()}"
    sandbox = await start_sandbox(sandbox_order_api_url=nowhere, sandbox_notifier_url=nowhere)
    for path in ("/checkout/api/prices/current", "/checkout/notifier/events?token=t"):
        answer = await sandbox.control("GET", path)
        assert answer.status == 502 and answer.json["error"] == "upstream_unavailable"
