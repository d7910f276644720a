"""H5 client IP: ``X-Forwarded-For`` counts only from configured trusted proxies. Over real
HTTP (the direct peer is 127.0.0.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.settings import load_settings
from paylane_order.client_address import TrustedProxySettings, client_ip, resolve_client_ip
from paylane_order.settings import OrderSettings


@pytest.fixture
async def ask() -> AsyncIterator[Callable[..., object]]:
    clients: list[TestClient[web.Request, web.Application]] = []

    async def ask(trusted: str, *forwarded_for: str) -> str | None:
        networks = TrustedProxySettings(trusted_proxies=trusted).trusted_proxies

        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"client_ip": client_ip(request, networks)})

        app = web.Application()
        app.router.add_get("/", echo)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded_for)
        response = await client.get("/", headers=headers)
        assert response.status == 200
        return (await response.json())["client_ip"]

    yield ask
    for client in clients:
        await client.close()


@pytest.mark.parametrize(
    ("trusted", "forwarded_for", "expected"),
    [
        # Default: no trusted proxy, the header is anyone's to forge.
        ("", ["198.51.100.7"], "127.0.0.1"),
        # The peer is not one of our proxies: ignored.
        ("10.0.0.0/8", ["198.51.100.7"], "127.0.0.1"),
        # Our proxy: the hop it appended is the client.
        ("127.0.0.1", ["198.51.100.7"], "198.51.100.7"),
        # A client-forged head is skipped: the right-most untrusted hop is the client.
        ("127.0.0.0/8, 10.0.0.0/8", ["203.0.113.66, 198.51.100.7, 10.1.2.3"], "198.51.100.7"),
        ("127.0.0.0/8,10.0.0.0/8", ["203.0.113.66", "198.51.100.7, 10.1.2.3"], "198.51.100.7"),
        # Every hop is ours: the left-most one.
        ("127.0.0.0/8, 10.0.0.0/8", ["10.9.9.9, 10.1.2.3"], "10.9.9.9"),
        # Garbage stops the walk at the last hop that could be read.
        ("127.0.0.0/8, 10.0.0.0/8", ["198.51.100.7, not-an-ip, 10.1.2.3"], "10.1.2.3"),
        ("127.0.0.1", ["garbage"], "127.0.0.1"),
        ("127.0.0.1", ["2001:db8::7"], "2001:db8::7"),
        ("127.0.0.1", [], "127.0.0.1"),
    ],
)
async def test_forwarded_for_counts_only_from_trusted_proxies(
    ask, trusted, forwarded_for, expected
):
    assert await ask(trusted, *forwarded_for) == expected


def test_an_ipv4_mapped_peer_matches_an_ipv4_network():
    trusted = TrustedProxySettings(trusted_proxies="10.0.0.0/8").trusted_proxies
    assert resolve_client_ip("::ffff:10.0.0.5", ["198.51.100.7"], trusted) == "198.51.100.7"


def test_trusted_proxies_setting(monkeypatch):
    assert issubclass(OrderSettings, TrustedProxySettings)
    monkeypatch.delenv("TRUSTED_PROXIES", raising=False)
    assert load_settings(TrustedProxySettings).trusted_proxies == ()
    monkeypatch.setenv("TRUSTED_PROXIES", " 10.0.0.0/8 , fd00::/8,192.168.1.1")
    assert [str(n) for n in load_settings(TrustedProxySettings).trusted_proxies] == [
        "10.0.0.0/8",
        "fd00::/8",
        "192.168.1.1/32",
    ]
    for bad in ("10.0.0.1/8", "not-a-network"):
        monkeypatch.setenv("TRUSTED_PROXIES", bad)
        with pytest.raises(ConfigError, match="TRUSTED_PROXIES"):
            load_settings(TrustedProxySettings)
