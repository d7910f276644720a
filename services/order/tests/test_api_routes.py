"""The order API's routes as its table serves them, with the error mapping (no
infrastructure: nothing here reaches a handler's resources)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from paylane_order import api
from paylane_order.errors import error_middleware


@pytest.fixture
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[error_middleware])
    api.add_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_the_document_is_served(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert await response.json() == api.ORDER_API.document()


async def test_a_method_the_route_lacks_is_405_naming_those_it_has(
    client: TestClient[web.Request, web.Application],
) -> None:
    """RFC 9110: a 405 carries ``Allow`` (the JSON error mapping kept dropping it)."""
    response = await client.request("DELETE", "/orders/P123")
    assert response.status == 405
    assert set(response.headers["Allow"].split(",")) == {"GET", "PATCH"}
    assert await response.json() == {
        "error": "method_not_allowed",
        "message": "405: Method Not Allowed",
    }
