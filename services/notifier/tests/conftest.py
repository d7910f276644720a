"""Notifier test fixtures: replicas of the app on the session's RabbitMQ vhost and MySQL
database (root conftest), stream clients closed after each test, a confirm publisher."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp.test_utils import TestClient, TestServer

from paylane_common.broker.publisher import Publisher
from paylane_notifier.hub import Hub
from paylane_notifier.main import build_app
from paylane_notifier.settings import NotifierSettings
from services.notifier.tests.support import PUBLIC_KEY, Listener, SseListener, WsListener

Client = TestClient[Any, Any]


@pytest.fixture
def settings(amqp_url: str, mysql_url: str) -> NotifierSettings:
    return NotifierSettings(
        amqp_url=amqp_url, mysql_url=mysql_url, client_token_public_key=PUBLIC_KEY
    )


@pytest.fixture
async def start_notifier(
    settings: NotifierSettings,
) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    """``await start_notifier(hub=None, settings=None)``: one more replica (own app,
    connection, queue), with the test's settings unless others are given."""
    async with AsyncExitStack() as stack:

        async def start(hub: Hub | None = None, settings: NotifierSettings = settings) -> Client:
            client: Client = TestClient(TestServer(build_app(settings, hub=hub)))
            await client.start_server()
            stack.push_async_callback(client.close)
            return client

        yield start


@pytest.fixture
async def notifier(start_notifier: Callable[..., Awaitable[Client]]) -> Client:
    return await start_notifier()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[Listener]]]:
    """``await connect(client, "ws" | "sse", token, last_event_id=None, header=True)``.

    Returns once the stream is open, i.e. once the replica has registered the client.
    """
    async with AsyncExitStack() as stack:

        async def open_stream(
            client: Client,
            transport: str,
            token: str,
            *,
            last_event_id: int | None = None,
            header: bool = True,
        ) -> Listener:
            params = {"ticket": token}
            headers = {}
            if last_event_id is not None:
                if header:
                    headers["Last-Event-ID"] = str(last_event_id)
                else:
                    params["last_event_id"] = str(last_event_id)
            if transport == "ws":
                ws = await client.ws_connect("/ws", params=params, headers=headers)
                stack.push_async_callback(ws.close)
                return WsListener(ws)
            response = await client.get("/events", params=params, headers=headers)
            stack.callback(response.close)
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            return SseListener(response)

        yield open_stream


@pytest.fixture
async def publisher(amqp_connection: AbstractRobustConnection) -> AsyncIterator[Publisher]:
    publisher = await Publisher.open(amqp_connection)
    yield publisher
    await publisher.close()
