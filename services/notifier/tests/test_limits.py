"""Streams end when their token expires; connections are capped per user and per replica,
each refusal with a clear close code (WebSocket) or status (SSE)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from paylane_notifier.settings import NotifierSettings
from paylane_notifier.websocket import CLOSE_FULL, CLOSE_TOKEN_EXPIRED, CLOSE_TOO_MANY_FOR_USER
from services.notifier.tests.support import (
    Listener,
    SseListener,
    WsListener,
    insert_user,
    token_for,
)

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
Start = Callable[..., Awaitable[Client]]
Connect = Callable[..., Awaitable[Listener]]


async def test_a_websocket_closes_with_4401_when_its_token_expires(
    notifier: Client, connect: Connect, db_pool: Any
) -> None:
    user = await insert_user(db_pool)
    listener = await connect(notifier, "ws", token_for(user, ttl_s=2))
    assert isinstance(listener, WsListener)
    assert await listener.closed(timeout=10) == CLOSE_TOKEN_EXPIRED


async def test_an_sse_stream_ends_with_a_close_event_when_its_token_expires(
    notifier: Client, connect: Connect, db_pool: Any
) -> None:
    user = await insert_user(db_pool)
    listener = await connect(notifier, "sse", token_for(user, ttl_s=2))
    assert isinstance(listener, SseListener)
    last = await listener.next(timeout=10)
    assert last.data == {"type": "stream.closed", "reason": "token_expired"}
    assert await listener.closed(timeout=5)


@pytest.fixture
def capped(settings: NotifierSettings) -> NotifierSettings:
    return settings.model_copy(update={"max_connections": 3, "max_connections_per_user": 2})


async def test_connections_per_user_and_per_replica_are_capped(
    capped: NotifierSettings, start_notifier: Start, connect: Connect, db_pool: Any
) -> None:
    notifier = await start_notifier(settings=capped)
    alice, bob, carol = [await insert_user(db_pool) for _ in range(3)]
    await connect(notifier, "ws", token_for(alice))
    await connect(notifier, "sse", token_for(alice))

    # Alice's third: over her cap (the upgrade completes so a browser can read the code).
    ws = await notifier.ws_connect("/ws", params={"token": token_for(alice)})
    assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == CLOSE_TOO_MANY_FOR_USER
    response = await notifier.get("/events", params={"token": token_for(alice)})
    assert response.status == 429
    assert (await response.json())["error"] == "too_many_connections"
    assert response.headers["Retry-After"]

    # Bob takes the replica's last place; Carol finds it full.
    await connect(notifier, "ws", token_for(bob))
    ws = await notifier.ws_connect("/ws", params={"token": token_for(carol)})
    assert (await ws.receive()).type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == CLOSE_FULL
    response = await notifier.get("/events", params={"token": token_for(carol)})
    assert response.status == 503
    assert (await response.json())["error"] == "too_many_connections"
