"""``GET /events?ticket=T``: the Server-Sent Events transport (docs/notifier.md).

Each message is one SSE event: ``id:`` its id (ms since the epoch, see
:mod:`paylane_notifier.snapshot`) and ``data:`` the JSON object, under the default event
name ``message`` (the JSON's ``type`` says what it is), so ``EventSource.onmessage`` sees
everything and a reconnecting ``EventSource`` sends ``Last-Event-ID`` by itself.
A comment line is sent every ``PING_S`` to keep proxies from closing an idle stream and
to notice clients that went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from .hub import HUB, Sink, TooManyConnections
from .messages import ClientMessage
from .stream import Outcome, Subscription, accept, cancel_and_wait, stream_to_client

log = structlog.get_logger(__name__)

PING_S = 15.0
#: A write that does not complete in this long means a dead or stalled client.
SEND_TIMEOUT_S = 30.0


async def sse_stream(request: web.Request) -> web.StreamResponse:
    subscription = accept(request)
    with contextlib.ExitStack() as registration:
        try:
            # Registered before the headers go out: a connected client misses no event.
            sink = registration.enter_context(
                request.app[HUB].connection(subscription.user_id, "sse")
            )
        except TooManyConnections as exc:
            log.info("client_refused", transport="sse", reason=str(exc))
            refusal = web.HTTPTooManyRequests if exc.per_user else web.HTTPServiceUnavailable
            raise refusal(
                text=json.dumps({"error": "too_many_connections", "message": str(exc)}),
                content_type="application/json",
                headers={"Retry-After": "30"},
            ) from None
        try:
            async with sse_response(
                request, ping_interval=PING_S, send_timeout=SEND_TIMEOUT_S
            ) as sse:
                log.info("client_connected", transport="sse", since_ms=subscription.since_ms)
                writer = asyncio.create_task(_write(sse, sink, subscription))
                gone = asyncio.create_task(sse.wait())  # the ping task ends with the client
                try:
                    await asyncio.wait({writer, gone}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    outcome = _outcome(writer)
                    await cancel_and_wait(writer, gone)
                if outcome is Outcome.DROPPED and (transport := request.transport) is not None:
                    # Too slow to drain its socket: closing politely would wait on it too.
                    transport.abort()
        finally:
            log.info("client_disconnected", transport="sse")
    return sse


async def _write(sse: EventSourceResponse, sink: Sink, subscription: Subscription) -> Outcome:
    async def send(message: ClientMessage) -> None:
        await sse.send(message.to_json(), id=message.id)

    try:
        outcome = await stream_to_client(sink, subscription, send)
        if outcome is Outcome.EXPIRED:
            # The last message says why the stream ends: its session expired.
            await sse.send(json.dumps({"type": "stream.closed", "reason": "token_expired"}))
        return outcome
    except (ConnectionError, TimeoutError, RuntimeError) as exc:  # the client went away
        log.debug("client_send_failed", transport="sse", error=repr(exc))
        return Outcome.CLOSED


def _outcome(writer: asyncio.Task[Outcome]) -> Outcome | None:
    if not writer.done() or writer.cancelled() or writer.exception() is not None:
        return None
    return writer.result()
