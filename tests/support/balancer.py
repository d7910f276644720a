"""A round-robin HTTP load balancer in front of a service's replicas, as nginx (or a
Kubernetes Service behind an ingress controller) is in production: WeChat Pay posts to
one notify URL, clients connect to one notifier URL, whichever replicas are behind it.

Its one rule for failures is nginx's ``proxy_next_upstream error``: a request whose
backend fails *before any response* (connection refused, reset or closed before the
status line: a replica that has stopped listening, or closed a kept-alive connection as
the request went out) is tried on the next backend; once a response has begun, whatever
happens is the client's answer (an aborted stream stays aborted). Every backend is
tried at most once a request; when none answers, 502. Nothing is retried on a timeout
(504): the backend may be working on it.

Responses are streamed through as they come (a notifier's Server-Sent Events pass as
they are written), and a backend that ends its stream ends the client's. WebSocket
upgrades are not proxied: such clients :meth:`~Balancer.pick` a replica themselves.
Connections to the backends are kept alive and reused, as nginx's ``keepalive`` does:
that is what makes the race with a replica closing them on SIGTERM real.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tests.support.stack import free_port

#: Headers of one connection, not of the request: never passed on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class NoResponseYet(Exception):
    """The backend failed before it answered anything."""


@dataclass
class BalancerStats:
    requests: int = 0
    #: Requests sent again to the next backend after a failure before any response.
    next_upstream: int = 0
    #: Requests no backend answered (502).
    no_backend: int = 0
    #: Responses cut off by their backend after they had begun.
    broken: int = 0
    #: Why a backend failed before answering, by exception type.
    failures: Counter[str] = field(default_factory=Counter)
    #: Responses by backend.
    answered_by: Counter[str] = field(default_factory=Counter)


class Balancer:
    """``http://127.0.0.1:<port>`` → one of ``backends`` (base URLs), round-robin;
    :meth:`add` / :meth:`remove` change them at any time. start() / stop()."""

    def __init__(self, name: str, backends: list[str] | None = None) -> None:
        self.name = name
        self._backends: list[str] = list(backends or [])
        self._turn = 0
        self.stats = BalancerStats()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._port = 0

    @property
    def url(self) -> str:
        assert self._runner is not None, f"balancer {self.name} not started"
        return f"http://127.0.0.1:{self._port}"

    @property
    def backends(self) -> list[str]:
        return list(self._backends)

    def add(self, backend: str) -> None:
        if backend not in self._backends:
            self._backends.append(backend)

    def remove(self, backend: str) -> None:
        if backend in self._backends:
            self._backends.remove(backend)

    def pick(self) -> str:
        """The next backend in the rotation, for a client that connects to a replica
        itself (a WebSocket: this balancer does not proxy upgrades)."""
        return self._rotation()[0]

    async def start(self) -> Balancer:
        # No overall deadline: a notifier's stream lasts as long as the client stays.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        # Bodies pass as they are, compressed or not (Content-Encoding is passed on).
        self._http = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        app = web.Application(client_max_size=1024**2)
        app.router.add_route("*", "/{tail:.*}", self._proxy)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        self._port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    def _rotation(self) -> list[str]:
        """Every backend once, starting with the next one's turn."""
        backends = list(self._backends)
        if not backends:
            return []
        start = self._turn % len(backends)
        self._turn += 1
        return backends[start:] + backends[:start]

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        body = await request.read()
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        for attempt, backend in enumerate(self._rotation()):
            if attempt:
                self.stats.next_upstream += 1
            try:
                upstream = await self._send(
                    request.method, backend + request.path_qs, headers, body
                )
            except NoResponseYet as exc:
                self.stats.failures[str(exc)] += 1
                continue
            except TimeoutError:
                self.stats.failures["timeout"] += 1
                return web.Response(status=504, text=f"{self.name}: backend timed out")
            self.stats.answered_by[backend] += 1
            return await self._relay(request, upstream)
        self.stats.no_backend += 1
        return web.Response(status=502, text=f"{self.name}: no backend answered")

    async def _send(
        self, method: str, url: str, headers: CIMultiDict[str], body: bytes
    ) -> aiohttp.ClientResponse:
        """The backend's response, its status line and headers read; NoResponseYet if it
        failed before that, TimeoutError if it took too long."""
        assert self._http is not None
        try:
            return await self._http.request(
                method, url, headers=headers, data=body or None, allow_redirects=False
            )
        except TimeoutError:
            raise  # aiohttp's connect timeout is a ClientConnectionError too
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise NoResponseYet(type(exc).__name__) from exc

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """The backend's answer, streamed through; cut off (the client's connection
        aborted) when the backend cuts it off."""
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=CIMultiDict(
                (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
            ),
        )
        with contextlib.closing(upstream), contextlib.suppress(ConnectionResetError):
            # (ConnectionResetError: the client went away; nothing to tell it.)
            await response.prepare(request)
            while True:
                try:
                    chunk = await upstream.content.readany()
                except (aiohttp.ClientError, OSError):
                    self.stats.broken += 1
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if not chunk:
                    break
                await response.write(chunk)
            await response.write_eof()
        return response
