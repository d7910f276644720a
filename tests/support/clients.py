"""Test clients for the notifier: a WebSocket reader and the one SSE reader."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp


async def next_sse_event(
    content: aiohttp.StreamReader,
) -> tuple[str | None, dict[str, Any]] | None:
    """The next event of a ``text/event-stream``: its ``id:`` (None without one) and its
    ``data:`` lines as JSON; comments (the ``:`` pings) skipped. None once the stream ends."""
    event_id: str | None = None
    data: list[str] = []
    while raw := await content.readline():
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                return event_id, json.loads("\n".join(data))
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "data":
            data.append(value)
    return None


class SSEClient:
    """Reads ``text/event-stream`` into a queue of (id, data-as-JSON) pairs."""

    def __init__(
        self, http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
    ):
        self._http = http
        self._url = url
        self._headers = headers or {}
        self.messages: asyncio.Queue[tuple[str | None, dict[str, Any]]] = asyncio.Queue()
        self.status: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def __aenter__(self) -> SSEClient:
        self._task = asyncio.create_task(self._read())
        await asyncio.wait_for(self._connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _read(self) -> None:
        async with self._http.get(self._url, headers=self._headers) as response:
            self.status = response.status
            self._connected.set()
            if response.status != 200:
                return
            while (event := await next_sse_event(response.content)) is not None:
                self.messages.put_nowait(event)

    async def next(self, timeout: float = 15.0) -> dict[str, Any]:
        _id, message = await asyncio.wait_for(self.messages.get(), timeout)
        return message


async def ws_next(ws: aiohttp.ClientWebSocketResponse, timeout: float = 15.0) -> dict[str, Any]:
    message = await ws.receive(timeout=timeout)
    assert message.type == aiohttp.WSMsgType.TEXT, message
    data: dict[str, Any] = json.loads(message.data)
    return data


async def wait_for_types(
    receive: Any, wanted: set[str], timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Receive until every type in ``wanted`` was seen; return all messages received."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while not wanted <= {m["type"] for m in seen}:
            seen.append(await receive())
    return seen


class FollowingClient:
    """One user's stream kept open across replicas, as an app keeps it: whenever the
    server ends it (a replica shutting down) or a connection fails, it connects again
    after ``retry_s`` to ``base_url()``, saying what it saw last: SSE sends
    ``Last-Event-ID`` (as ``EventSource`` does by itself), WebSocket
    ``?last_event_id=`` (the ``occurred_at`` of its last message, in ms). Every message
    is kept in ``received``; :meth:`wait_for` awaits one that satisfies a predicate."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: Callable[[], str],
        ticket: Callable[[], str],
        transport: Literal["sse", "ws"],
        *,
        retry_s: float = 0.2,
    ) -> None:
        self._http = http
        self._base_url = base_url
        #: A fresh stream ticket, asked for before each (re)connect as a client does.
        self._ticket = ticket
        self.transport = transport
        self._retry_s = retry_s
        self.received: list[dict[str, Any]] = []
        self.last_event_id: str | None = None
        #: Streams opened, and of them those the server ended.
        self.connects = 0
        self.ended_by_server = 0
        #: Attempts refused with a status ({status: n}), or that failed to connect.
        self.refusals: Counter[int] = Counter()
        self.errors = 0
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FollowingClient:
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def wait_connected(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self.connects > 0)

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """The first message received (so far or from now) that satisfies ``predicate``."""

        def found() -> dict[str, Any] | None:
            return next((m for m in self.received if predicate(m)), None)

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        message = found()
        assert message is not None
        return message

    async def _follow(self) -> None:
        while True:
            try:
                if self.transport == "sse":
                    await self._follow_sse()
                else:
                    await self._follow_ws()
            except aiohttp.WSServerHandshakeError as exc:
                self.refusals[exc.status] += 1
            except (aiohttp.ClientError, OSError):
                self.errors += 1
            await asyncio.sleep(self._retry_s)

    async def _follow_sse(self) -> None:
        url = f"{self._base_url()}/events?ticket={self._ticket()}"
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        async with self._http.get(url, headers=headers) as response:
            if response.status != 200:
                self.refusals[response.status] += 1
                return
            await self._opened()
            while (event := await next_sse_event(response.content)) is not None:
                event_id, message = event
                await self._receive(message, event_id)
        self.ended_by_server += 1

    async def _follow_ws(self) -> None:
        url = f"{self._base_url()}/ws?ticket={self._ticket()}"
        if self.last_event_id:
            url += f"&last_event_id={self.last_event_id}"
        async with self._http.ws_connect(url) as ws:
            await self._opened()
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    message = json.loads(frame.data)
                    await self._receive(message, str(_epoch_ms(message["occurred_at"])))
        self.ended_by_server += 1

    async def _opened(self) -> None:
        self.connects += 1
        await self._notify()

    async def _receive(self, message: dict[str, Any], event_id: str | None) -> None:
        if event_id is not None:
            self.last_event_id = event_id
        self.received.append(message)
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _epoch_ms(occurred_at: str) -> int:
    """A message's ``occurred_at`` (ISO 8601, UTC) in integer ms since the epoch: its id."""
    moment = datetime.fromisoformat(occurred_at.replace("Z", "+00:00"))
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
