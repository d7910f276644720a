"""Every service's ``/readyz`` and ``/metrics`` are on its admin port (``ADMIN_PORT``),
never on its public one; readiness is run by one probe at a time and its answer kept
about a second, so that a burst of probes costs the shared database one connection,
not one each. Every listener closes a connection that sends no request, half a request,
or nothing more after its last one (``HTTP_HEADER_TIMEOUT_S``,
``HTTP_KEEPALIVE_TIMEOUT_S``); the notifier's streams are not cut by them.

The services run as processes (``paylane serve …``); their database is reached through
a proxy that counts the connections opened to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiomysql
import pytest

from paylane_common.contract.tokens import private_pem
from paylane_entitlement.settings import EntitlementSettings
from paylane_ingress.settings import IngressSettings
from paylane_notifier.settings import NotifierSettings
from paylane_order.settings import OrderSettings
from services.notifier.tests.support import PUBLIC_KEY, TOKEN_KEY, insert_user, token_for
from tests.support.faultproxy import FaultProxy, through
from tests.support.infra import Infra
from tests.support.stack import Service, Stack
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.integration

#: Probes sent at once.
PROBES = 40
#: The timeouts the services under test are given: short, so that nothing waits long.
HEADER_TIMEOUT_S = 1.0
KEEPALIVE_TIMEOUT_S = 3.0
#: Every wait on a socket is bounded by this much beyond the timeout it waits for.
MARGIN_S = 3.0


@pytest.fixture
async def mysql_proxy(infra: Infra) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(infra.mysql_host, infra.mysql_port, name="mysql") as proxy:
        yield proxy


@pytest.fixture
async def stack(
    tmp_path: Path, amqp_url: str, mysql_url: str, mysql_proxy: FaultProxy
) -> AsyncIterator[Stack]:
    stack = Stack(
        {
            "AMQP_URL": amqp_url,
            "MYSQL_URL": through(mysql_proxy)(mysql_url),
            "CLIENT_TOKEN_PUBLIC_KEY": PUBLIC_KEY,
            "HTTP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "HTTP_KEEPALIVE_TIMEOUT_S": str(KEEPALIVE_TIMEOUT_S),
        },
        tmp_path,
    )
    # The order service signs with the key the notifier tests' tickets come from.
    stack.service_env["order"] = {"CLIENT_TOKEN_PRIVATE_KEY": private_pem(TOKEN_KEY)}
    yield stack
    await stack.stop_all()


async def start(stack: Stack, name: str) -> Service:
    if name == "ingress":
        return await stack.start(name, FakeWechat().ingress_env())
    if name == "order":
        wechat = FakeWechat()
        env = {
            **wechat.ingress_env(),
            # Nothing here calls WeChat Pay: a port nobody listens on.
            **wechat.merchant_env("http://127.0.0.1:9", "http://127.0.0.1:9/notify/wechatpay"),
            "RECONCILE_INTERVAL_S": "0",
            "BILLS_RECONCILE_HOUR": "-1",
        }
        return await stack.start(name, env)
    return await stack.start(name)


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        await response.read()
        return response.status


def test_every_service_has_an_admin_port_of_its_own() -> None:
    ports = [
        (cls.model_fields["http_port"].default, cls.model_fields["admin_port"].default)
        for cls in (IngressSettings, OrderSettings, EntitlementSettings, NotifierSettings)
    ]
    assert ports == [(8080, 9080), (8081, 9081), (8082, 9082), (8083, 9083)]


@pytest.mark.parametrize("name", ["order", "entitlement", "notifier"])
async def test_readyz_and_metrics_are_on_the_admin_port_only(stack: Stack, name: str) -> None:
    service = await start(stack, name)
    assert service.admin_port is not None and service.admin_port != service.port
    async with aiohttp.ClientSession() as http:
        assert await status_of(http, f"{service.url}/healthz") == 200
        assert await status_of(http, f"{service.url}/readyz") == 404
        assert await status_of(http, f"{service.url}/metrics") == 404
        assert await status_of(http, f"{service.admin_url}/healthz") == 200
        async with http.get(f"{service.admin_url}/readyz") as response:
            assert response.status == 200
            assert (await response.json())["checks"]["mysql"] == "ok"
        async with http.get(f"{service.admin_url}/metrics") as response:
            assert response.status == 200
            assert "paylane_" in await response.text()


@pytest.mark.parametrize("name", ["order", "notifier"])
async def test_a_burst_of_probes_costs_the_database_one_connection(
    stack: Stack, mysql_proxy: FaultProxy, name: str
) -> None:
    """Once each probe opened a connection to the database of its own: 40 probes at once,
    40 connections. Now one probe runs the checks and the others share its answer."""
    service = await start(stack, name)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=PROBES, force_close=True)
    ) as http:
        # Past the answer the start-up's probe left (READINESS_TTL_S).
        await asyncio.sleep(1.2)
        before = mysql_proxy.stats.accepted
        statuses = await asyncio.gather(
            *(status_of(http, f"{service.admin_url}/readyz") for _ in range(PROBES))
        )
        opened = mysql_proxy.stats.accepted - before
    assert statuses == [200] * PROBES
    # The one probe's connection, and at most one the service's pool opened meanwhile.
    assert opened <= 2, f"{PROBES} probes opened {opened} database connections"


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closes the connection within ``seconds`` (what it sends before
    is read and dropped)."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize("name", ["ingress", "order", "notifier"])
@pytest.mark.parametrize("port", ["public", "admin"])
async def test_a_connection_that_sends_no_request_is_closed(
    stack: Stack, name: str, port: str
) -> None:
    """Before, a socket that sent nothing or half a request was held for an hour."""
    service = await start(stack, name)
    number = service.port if port == "public" else service.admin_port
    silent = await asyncio.open_connection("127.0.0.1", number)
    partial = await asyncio.open_connection("127.0.0.1", number)
    partial[1].write(b"GET /healthz HTTP/1.1\r\nHost: paylane\r\n")  # no blank line: stalls
    try:
        assert await closed_within(silent[0], HEADER_TIMEOUT_S + MARGIN_S)
        assert await closed_within(partial[0], HEADER_TIMEOUT_S + MARGIN_S)
    finally:
        for _, writer in (silent, partial):
            writer.close()


async def test_a_slow_request_header_is_cut_off_at_the_header_timeout(stack: Stack) -> None:
    """A byte now and then (a slowloris) does not keep a request's head open: the timer
    runs from its first byte, well before the keep-alive timeout."""
    service = await start(stack, "notifier")
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        trickle = b"X-Slow: " + b"a" * 40

        async def drip() -> None:
            for byte in trickle:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.1)

        dripping = asyncio.create_task(drip())
        try:
            assert await closed_within(reader, HEADER_TIMEOUT_S + 1.5)
        finally:
            dripping.cancel()
            await asyncio.gather(dripping, return_exceptions=True)
    finally:
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(
    stack: Stack,
) -> None:
    service = await start(stack, "notifier")
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: paylane\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), MARGIN_S)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"connection: close" not in head.lower()
        await asyncio.wait_for(reader.readuntil(b'"ok"}'), MARGIN_S)
        # Kept alive past the header timeout (no request begun, so none is late) …
        assert not await closed_within(reader, HEADER_TIMEOUT_S + 0.5)
        # … and closed at the keep-alive timeout.
        assert await closed_within(reader, KEEPALIVE_TIMEOUT_S + MARGIN_S)
    finally:
        writer.close()


async def test_the_notifier_streams_outlive_both_timeouts(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    """A WebSocket or an SSE stream is one request for as long as it lasts: neither timeout
    cuts it (they have heartbeats of their own)."""
    service = await start(stack, "notifier")
    token = token_for(await insert_user(db_pool))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{service.url}/ws", params={"ticket": token})
        sse = await http.get(f"{service.url}/events", params={"ticket": token})
        try:
            assert sse.status == 200
            loop = asyncio.get_running_loop()
            until = loop.time() + KEEPALIVE_TIMEOUT_S + HEADER_TIMEOUT_S + 0.5
            while (left := until - loop.time()) > 0:
                try:
                    message = await ws.receive(timeout=left)
                except TimeoutError:
                    break
                assert message.type is aiohttp.WSMsgType.TEXT, message
            assert not ws.closed
            while (left := until - loop.time()) > 0:
                try:
                    line = await asyncio.wait_for(sse.content.readline(), left)
                except TimeoutError:
                    break
                assert line, "the SSE stream ended"
            assert not sse.content.at_eof()
        finally:
            await ws.close()
            sse.close()
