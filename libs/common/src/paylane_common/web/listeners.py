"""The services' HTTP listeners: an idle kept-alive connection is closed after
``HTTP_KEEPALIVE_TIMEOUT_S``, and a request whose line and headers have not all arrived
``HTTP_HEADER_TIMEOUT_S`` after its first byte (or after the connection opened) has its
connection closed. Without them a client that opens connections and sends nothing, or
half a request, holds a socket for aiohttp's default of an hour.

aiohttp has the keep-alive timeout (``keepalive_timeout``) and no header-read timeout:
:class:`_HeaderTimeoutHandler` adds one to its request handler. A request being handled
is never cut off by either: a WebSocket or an SSE stream (the notifier's) is one request
as long as it lasts, with heartbeats of its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler


class _HeaderTimeoutHandler(RequestHandler):
    """aiohttp's request handler with a header-read timeout.

    The timer starts when the connection opens and, between requests, at the first byte
    of the next one; it stops once the parser has the request's line and headers. When
    it fires and no new request has come whole, the connection is closed."""

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._requests_when_armed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        # Between requests: not in a handler (a request body, a WebSocket's frames), not
        # upgraded, no request already parsed and waiting for its turn.
        between_requests = not (self._request_in_progress or self._upgraded or self._messages)
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests:
            self._disarm_header_timer()
        elif between_requests and data and self._header_timer is None:
            self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._requests_when_armed = self._request_count
        self._header_timer = self._loop.call_later(self._header_timeout, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._request_count == self._requests_when_armed and not self._request_in_progress:
            self.force_close()


class _HeaderTimeoutServer(web.Server):
    """aiohttp's connection factory, making :class:`_HeaderTimeoutHandler`\\ s."""

    def __init__(self, server: web.Server, header_timeout: float) -> None:
        super().__init__(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return _HeaderTimeoutHandler(
            self, loop=self._loop, header_timeout=self._header_timeout, **self._kwargs
        )


class TimedAppRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose connections have both timeouts."""

    def __init__(
        self,
        app: web.Application,
        *,
        keepalive_timeout_s: float,
        header_timeout_s: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, keepalive_timeout=keepalive_timeout_s, **kwargs)
        self._header_timeout_s = header_timeout_s

    async def _make_server(self) -> web.Server:
        return _HeaderTimeoutServer(await super()._make_server(), self._header_timeout_s)
