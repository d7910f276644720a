"""Every operation of an API table declares who may call it: a route is never open by
omission (issue #26)."""

from __future__ import annotations

import pytest
from aiohttp import web

from paylane_common.web.openapi import PUBLIC, Api, Operation, Reply


async def _handler(request: web.Request) -> web.Response:
    return web.Response()


def _api(*operations: Operation) -> Api:
    schemes = {"backend": {"type": "apiKey", "in": "header", "name": "X-Internal-Secret"}}
    return Api("test API", "1", "", operations, security_schemes=schemes)


def _op(path: str, **kwargs: object) -> Operation:
    return Operation("GET", path, _handler, "a route", {200: Reply("ok")}, **kwargs)  # type: ignore[arg-type]


def test_an_operation_without_a_declared_security_is_a_startup_error() -> None:
    api = _api(_op("/open", security=PUBLIC), _op("/forgotten"))
    with pytest.raises(ValueError, match="GET /forgotten"):
        api.add_routes(web.Application())


def test_an_unknown_scheme_is_a_startup_error() -> None:
    with pytest.raises(ValueError, match="user"):
        _api(_op("/mine", security=("user",))).add_routes(web.Application())


def test_a_public_operation_is_documented_as_before() -> None:
    api = _api(_op("/open", security=PUBLIC), _op("/closed", security=("backend",)))
    api.add_routes(web.Application())
    paths = api.document()["paths"]
    assert paths["/open"]["get"]["security"] == []
    assert paths["/closed"]["get"]["security"] == [{"backend": []}]
