"""WeChat-facing answers: 204 empty on success, ``{"code":"FAIL","message":…}`` otherwise."""

from __future__ import annotations

from aiohttp import web


def fail(status: int, message: str) -> web.Response:
    return web.json_response({"code": "FAIL", "message": message}, status=status)


def acknowledged() -> web.Response:
    return web.Response(status=204)
