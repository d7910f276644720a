"""The registry of connected clients of this replica and the fan-out to them.

``publish`` never waits: each client has a bounded queue drained by its own writer task;
a client whose queue is full (its socket stalled, it stopped reading) is aborted and
dropped rather than allowed to hold back the consumer or anyone else. It reconnects and
catches up through the snapshot (:mod:`paylane_notifier.snapshot`).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Protocol

import structlog
from aiohttp import web

from .messages import ClientMessage
from .metrics import CONNECTIONS, DROPPED_CLIENTS, REFUSED

log = structlog.get_logger(__name__)

Transport = Literal["ws", "sse"]
#: Messages a client may be behind before it is dropped.
DEFAULT_QUEUE_SIZE = 256


class PushRecorder(Protocol):
    """Where the hub tells of each push some client took (push_log.PushLog)."""

    def add(
        self, out_trade_no: str, event_type: str, channel: Transport, connections: int
    ) -> None: ...


class TooManyConnections(Exception):
    """A new client would exceed a cap: ``per_user`` tells which."""

    def __init__(self, per_user: bool) -> None:
        super().__init__("too many connections for this user" if per_user else "replica full")
        self.per_user = per_user


class Control(enum.Enum):
    #: Send a fresh snapshot (the broker connection was re-established: events may be lost).
    RESYNC = "resync"
    #: The server is closing this client gracefully, after what is already queued.
    CLOSE = "close"


class Sink:
    """One connected client: a bounded queue of messages its writer drains."""

    def __init__(self, user_id: str, transport: Transport, queue_size: int) -> None:
        self.user_id = user_id
        self.transport = transport
        self._queue: asyncio.Queue[ClientMessage | Control] = asyncio.Queue(queue_size)
        #: Set when the hub gives up on this client; its writer must abort the connection.
        self.aborted = asyncio.Event()
        self.closed = False

    def offer(self, item: ClientMessage | Control) -> bool:
        """Queue without waiting; False when the queue is full."""
        if self.closed:
            return True
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    async def get(self) -> ClientMessage | Control:
        return await self._queue.get()

    def close(self) -> None:
        """Graceful: the writer sends what is queued, then sees :attr:`Control.CLOSE`."""
        if self.closed:
            return
        self.closed = True
        if self._queue.full():
            self._queue.get_nowait()  # the oldest message yields to the close marker
        self._queue.put_nowait(Control.CLOSE)

    def abort(self) -> None:
        self.closed = True
        self.aborted.set()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()


class Hub:
    """user_id (a ``users.id`` string) → connected clients of this replica."""

    def __init__(
        self,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        *,
        max_connections: int | None = None,
        max_per_user: int | None = None,
    ) -> None:
        self._queue_size = queue_size
        self.max_connections = max_connections
        self.max_per_user = max_per_user
        self._clients: dict[str, set[Sink]] = {}
        #: Clients registered, kept as they come and go (a connect checks the cap in O(1)).
        self._total = 0
        #: Set on shutdown: no new clients, existing ones are being closed.
        self.closing = False
        #: Records the pushes (push_log.py); None: not recorded.
        self.pushes: PushRecorder | None = None

    @contextmanager
    def connection(self, user_id: str, transport: Transport) -> Iterator[Sink]:
        """Register a client for the duration of the block; :class:`TooManyConnections`
        when a cap is reached (checked and registered without a pause in between)."""
        if self.max_per_user is not None and self.count(user_id) >= self.max_per_user:
            REFUSED.labels("per_user").inc()
            raise TooManyConnections(per_user=True)
        if self.max_connections is not None and self.count() >= self.max_connections:
            REFUSED.labels("replica").inc()
            raise TooManyConnections(per_user=False)
        sink = Sink(user_id, transport, self._queue_size)
        self._clients.setdefault(user_id, set()).add(sink)
        self._total += 1
        CONNECTIONS.labels(transport).inc()
        try:
            yield sink
        finally:
            self._remove(sink)
            CONNECTIONS.labels(transport).dec()

    def publish(self, user_id: str, message: ClientMessage) -> int:
        """Queue ``message`` for every client of ``user_id``; returns how many took it
        (each channel's count told to :attr:`pushes` when the message names an order)."""
        delivered = by_ws = 0
        for sink in tuple(self._clients.get(user_id, ())):
            if sink.offer(message):
                delivered += 1
                by_ws += sink.transport == "ws"
            else:
                self._drop(sink)
        if self.pushes is not None and delivered and message.out_trade_no:
            if by_ws:
                self.pushes.add(message.out_trade_no, message.type, "ws", by_ws)
            if delivered > by_ws:
                self.pushes.add(message.out_trade_no, message.type, "sse", delivered - by_ws)
        return delivered

    def resync(self) -> None:
        """Ask every client's writer to send a fresh snapshot."""
        for sink in self._all():
            if not sink.offer(Control.RESYNC):
                self._drop(sink)

    def close_all(self) -> None:
        """Shutdown: refuse new clients and close the connected ones gracefully."""
        self.closing = True
        for sink in self._all():
            sink.close()

    def count(self, user_id: str | None = None) -> int:
        if user_id is not None:
            return len(self._clients.get(user_id, ()))
        return self._total

    def _drop(self, sink: Sink) -> None:
        log.warning(
            "client_dropped",
            user_id=sink.user_id,
            transport=sink.transport,
            reason="queue overflow",
            backlog=sink.backlog,
        )
        DROPPED_CLIENTS.inc()
        sink.abort()
        self._remove(sink)

    def _remove(self, sink: Sink) -> None:
        sinks = self._clients.get(sink.user_id)
        if sinks is None or sink not in sinks:
            return
        sinks.discard(sink)
        self._total -= 1
        if not sinks:
            del self._clients[sink.user_id]

    def _all(self) -> list[Sink]:
        return [sink for sinks in self._clients.values() for sink in sinks]


HUB = web.AppKey("hub", Hub)
