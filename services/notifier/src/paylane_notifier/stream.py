"""One client's stream, whatever the transport: accept the request, then write the
snapshot followed by live messages from its hub queue until the hub closes or drops it."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import structlog
from aiohttp import web

from paylane_common.runtime.outages import Dependency
from paylane_common.runtime.service import DATABASE, DB_POOL

from .auth import authenticate
from .config import NOTIFIER_CONFIG
from .hub import HUB, Control, Sink
from .messages import ClientMessage
from .metrics import EXPIRED, PUSHES
from .snapshot import load_snapshot, parse_last_event_id

log = structlog.get_logger(__name__)

Send = Callable[[ClientMessage], Awaitable[None]]
#: ``since_ms`` → the snapshot messages (see :mod:`paylane_notifier.snapshot`).
LoadSnapshot = Callable[[int | None], Awaitable[list[ClientMessage]]]


class Outcome(enum.Enum):
    #: The server closed the stream (shutdown): close the connection politely.
    CLOSED = "closed"
    #: The client fell too far behind: abort the connection, it will reconnect.
    DROPPED = "dropped"
    #: The session expired: close; the client reconnects with a fresh ticket.
    EXPIRED = "expired"


@dataclass(frozen=True)
class Subscription:
    user_id: str
    since_ms: int | None
    load_snapshot: LoadSnapshot
    #: When the session the ticket came from expires (epoch seconds): the stream ends then.
    expires_at: float = float("inf")
    #: The database the snapshot is read from: a snapshot missed during its outage is
    #: sent once it is back.
    database: Dependency | None = None


def accept(request: web.Request) -> Subscription:
    """Authenticate (401) and read ``Last-Event-ID`` / ``?last_event_id``; 503 on shutdown."""
    ticket = authenticate(request, request.app[NOTIFIER_CONFIG].tokens)
    if request.app[HUB].closing:
        raise web.HTTPServiceUnavailable(
            text='{"error": "unavailable", "message": "shutting down"}',
            content_type="application/json",
        )
    since_ms = parse_last_event_id(
        request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    )
    load = partial(_load, request.app, ticket.user_id)
    return Subscription(
        user_id=ticket.user_id,
        since_ms=since_ms,
        load_snapshot=load,
        # The ticket is for connecting; the stream lasts as long as its session.
        expires_at=ticket.session_expires_at or ticket.expires_at,
        database=request.app[DATABASE],
    )


async def _load(app: web.Application, user_id: str, since_ms: int | None) -> list[ClientMessage]:
    config = app[NOTIFIER_CONFIG]
    async with asyncio.timeout(config.snapshot_timeout_s):
        return await load_snapshot(
            app[DB_POOL],
            user_id,
            window_s=config.snapshot_window_s,
            limit=config.snapshot_limit,
            since_ms=since_ms,
        )


async def stream_to_client(sink: Sink, subscription: Subscription, send: Send) -> Outcome:
    """Write until the hub closes (CLOSED) or drops (DROPPED) the sink, or the session
    expires (EXPIRED).

    Raises what ``send`` raises when the client is gone (ConnectionError and the like).
    """
    writer = asyncio.create_task(_write(sink, subscription, send))
    dropped = asyncio.create_task(sink.aborted.wait())
    expired = asyncio.create_task(_until(subscription.expires_at))
    done: set[asyncio.Task[Any]] = set()
    try:
        done, _ = await asyncio.wait(
            {writer, dropped, expired}, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (writer, dropped, expired):
            task.cancel()
        error, _, _ = await asyncio.gather(writer, dropped, expired, return_exceptions=True)
    if sink.aborted.is_set():
        return Outcome.DROPPED
    if expired in done and writer not in done:
        EXPIRED.inc()
        return Outcome.EXPIRED
    if isinstance(error, BaseException) and not isinstance(error, asyncio.CancelledError):
        raise error
    return Outcome.CLOSED


async def _until(epoch_s: float) -> None:
    if epoch_s == float("inf"):
        await asyncio.Event().wait()
    await asyncio.sleep(max(0.0, epoch_s - time.time()))


async def _write(sink: Sink, subscription: Subscription, send: Send) -> None:
    resyncs: set[asyncio.Task[None]] = set()

    async def snapshot(since_ms: int | None) -> None:
        failure = await _send_snapshot(subscription, send, since_ms)
        database = subscription.database
        if failure is not None and database is not None and not resyncs:
            if await database.confirm_down(failure):
                resyncs.add(asyncio.create_task(_resync_when_up(sink, database)))

    try:
        await snapshot(subscription.since_ms)
        while True:
            item = await sink.get()
            if item is Control.CLOSE:
                return
            if item is Control.RESYNC:
                resyncs.difference_update({t for t in resyncs if t.done()})
                await snapshot(None)
                continue
            assert isinstance(item, ClientMessage)
            await _push(send, item)
    finally:
        await cancel_and_wait(*resyncs)


async def _resync_when_up(sink: Sink, database: Dependency) -> None:
    """The snapshot the client missed while the database was down, once it is back."""
    await database.wait_up()
    sink.offer(Control.RESYNC)


async def _send_snapshot(
    subscription: Subscription, send: Send, since_ms: int | None
) -> Exception | None:
    """The snapshot sent; or why it could not be read (live events still flow)."""
    try:
        messages = await subscription.load_snapshot(since_ms)
    except Exception as exc:
        log.warning("snapshot_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
        return exc
    for message in messages:
        await _push(send, message)
    return None


async def _push(send: Send, message: ClientMessage) -> None:
    await send(message)
    PUSHES.labels(message.type).inc()


async def cancel_and_wait(*tasks: asyncio.Task[Any]) -> None:
    """Cancel ``tasks`` and wait until they have finished.

    Safe in a ``finally`` of a task that is itself being cancelled: the tasks are cancelled
    before anything is awaited, and only a further cancellation interrupts the wait.
    """
    for task in tasks:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            log.debug("task_failed", error=repr(result))
