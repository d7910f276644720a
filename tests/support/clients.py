"""Test clients for the notifier: a WebSocket reader and the one SSE reader."""

from __future__ import annotations

import asyncio
import json
from typing import Any

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
