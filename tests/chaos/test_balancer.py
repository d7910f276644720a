"""The rolling-restart test's balancer itself, against local backends: round-robin over
backends that may change; a backend that fails before answering (refused, or closed
after reading the request) is skipped for the next; one that fails after its answer
began is not (the client sees it cut off); none left, 502; a stream passes as it comes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from tests.support.balancer import Balancer
from tests.support.stack import free_port

pytestmark = pytest.mark.chaos

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Backend:
    """A local HTTP server answering every request with ``handler``; counts requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        return await self.handler(request)

    async def __aenter__(self) -> Backend:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def answering(name: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            text=f"{name} {request.method} {request.path_qs} {await request.text()}"
        )

    return handler


async def closing_unanswered(request: web.Request) -> web.Response:
    """Reads the request, then drops the connection without a word (a replica that
    closed its connection as the request arrived)."""
    await request.read()
    assert request.transport is not None
    request.transport.abort()
    return web.Response()  # never sent


async def cut_off_mid_body(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200)
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"partial")
    assert request.transport is not None
    request.transport.abort()
    return response


@pytest.fixture
async def balancer() -> AsyncIterator[Balancer]:
    balancer = await Balancer("test").start()
    yield balancer
    await balancer.stop()


async def fetch(url: str, method: str = "GET", body: bytes = b"") -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.request(method, url, data=body) as response:
        return response.status, await response.text()


def closed_port() -> str:
    """A local URL nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_round_robin_over_backends_that_change(balancer: Balancer) -> None:
    async with Backend(answering("a")) as a, Backend(answering("b")) as b:
        balancer.add(a.url)
        balancer.add(b.url)
        answers = [await fetch(f"{balancer.url}/x?y=1", "POST", b"hi") for _ in range(4)]
        assert [text for _, text in answers] == ["a POST /x?y=1 hi", "b POST /x?y=1 hi"] * 2
        balancer.remove(a.url)
        assert await fetch(balancer.url) == (200, "b GET / ")


async def test_failures_before_an_answer_go_to_the_next_backend(balancer: Balancer) -> None:
    async with Backend(closing_unanswered) as closing, Backend(answering("ok")) as ok:
        for backend in (closed_port(), closing.url, ok.url):
            balancer.add(backend)
        for _ in range(3):  # whichever the rotation starts with
            assert await fetch(f"{balancer.url}/n", "POST", b"body") == (200, "ok POST /n body")
    assert balancer.stats.next_upstream >= 3
    assert set(balancer.stats.failures) == {"ClientConnectorError", "ServerDisconnectedError"}


async def test_an_answer_cut_off_is_not_sent_elsewhere(balancer: Balancer) -> None:
    async with Backend(cut_off_mid_body) as cut, Backend(answering("other")) as other:
        balancer.add(cut.url)
        balancer.add(other.url)
        with pytest.raises(aiohttp.ClientPayloadError):
            await fetch(balancer.url)
    assert (cut.requests, other.requests, balancer.stats.broken) == (1, 0, 1)


async def test_no_backend_left_is_502(balancer: Balancer) -> None:
    balancer.add(closed_port())
    status, text = await fetch(balancer.url)
    assert status == 502 and "no backend answered" in text


async def test_a_stream_passes_as_it_comes(balancer: Balancer) -> None:
    """The first event reaches the client while the backend still holds the second."""
    release = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await release.wait()
        await response.write(b"data: two\n\n")
        return response

    async with Backend(events) as backend, aiohttp.ClientSession() as http:
        balancer.add(backend.url)
        async with http.get(balancer.url) as response:
            assert await response.content.readline() == b"data: one\n"
            release.set()
            assert (await response.read()).endswith(b"data: two\n\n")
