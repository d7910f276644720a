"""``GET /ws?ticket=T``: the WebSocket transport (docs/notifier.md).

Server → client only: one JSON text frame per message. The server pings every
``HEARTBEAT_S`` (and drops a client that does not answer); what a client sends is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import WSCloseCode, web

from .hub import HUB, Sink, TooManyConnections
from .messages import ClientMessage
from .stream import Outcome, Subscription, accept, cancel_and_wait, stream_to_client

log = structlog.get_logger(__name__)

HEARTBEAT_S = 20.0
#: How long a polite close waits for the client's close frame.
CLOSE_TIMEOUT_S = 2.0
#: Clients have nothing to say; a large frame is not worth buffering.
MAX_CLIENT_MESSAGE = 4096
#: Close codes a client acts on (4000-4999 are the application's own):
#: the session the ticket came from expired — sign in, reconnect with a fresh ticket;
CLOSE_TOKEN_EXPIRED = 4401
#: this user has too many streams open — close another first;
CLOSE_TOO_MANY_FOR_USER = 4429
#: this replica is full — try again later (RFC 6455's 1013), perhaps on another replica.
CLOSE_FULL = 1013


async def websocket_stream(request: web.Request) -> web.StreamResponse:
    subscription = accept(request)
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_S, timeout=CLOSE_TIMEOUT_S, max_msg_size=MAX_CLIENT_MESSAGE
    )
    with contextlib.ExitStack() as registration:
        try:
            # Registered before the handshake completes: a connected client misses no event.
            sink = registration.enter_context(
                request.app[HUB].connection(subscription.user_id, "ws")
            )
        except TooManyConnections as exc:
            # The handshake completes so that a browser can read why (it cannot read a
            # refused upgrade's status).
            await ws.prepare(request)
            code = CLOSE_TOO_MANY_FOR_USER if exc.per_user else CLOSE_FULL
            await ws.close(code=code, message=str(exc).encode())
            log.info("client_refused", transport="ws", reason=str(exc))
            return ws
        await ws.prepare(request)
        log.info("client_connected", transport="ws", since_ms=subscription.since_ms)
        writer = _Writer(request, ws, sink, subscription)
        task = asyncio.create_task(writer.run())
        try:
            async for _message in ws:  # ends when either side closes
                pass
        finally:
            try:
                if writer.closing:
                    await task  # the close handshake, bounded by CLOSE_TIMEOUT_S
                else:
                    await cancel_and_wait(task)
            finally:
                log.info("client_disconnected", transport="ws", close_code=ws.close_code)
    return ws


class _Writer:
    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, sink: Sink, sub: Subscription
    ) -> None:
        self._request = request
        self._ws = ws
        self._sink = sink
        self._subscription = sub
        self.closing = False

    async def _send(self, message: ClientMessage) -> None:
        await self._ws.send_str(message.to_json())

    async def run(self) -> None:
        try:
            outcome = await stream_to_client(self._sink, self._subscription, self._send)
        except (ConnectionError, RuntimeError) as exc:  # the client went away mid-send
            log.debug("client_send_failed", transport="ws", error=repr(exc))
            return
        if outcome is Outcome.DROPPED:
            # Too slow to drain its socket: a polite close would wait on it as well.
            if (transport := self._request.transport) is not None:
                transport.abort()
            return
        self.closing = True
        if outcome is Outcome.EXPIRED:
            await self._ws.close(code=CLOSE_TOKEN_EXPIRED, message=b"token expired")
        else:
            await self._ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
