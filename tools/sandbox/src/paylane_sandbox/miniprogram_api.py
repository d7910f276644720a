"""``GET /sns/jscode2session`` (WeChat's mini-program login) and the control call that hands
out login codes (:mod:`paylane_sandbox.miniprogram` says how they behave)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .app_keys import SANDBOX
from .miniprogram import CODE_TTL_S, NewCode


def _text_json(data: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(data), content_type="text/plain")


async def jscode2session(request: web.Request) -> web.Response:
    sandbox = request.app[SANDBOX]
    query = request.query
    if query.get("grant_type") != "authorization_code":
        return _text_json({"errcode": 40002, "errmsg": "invalid grant_type"})
    appids = sandbox.ledger.allowed_appids
    if not query.get("appid") or (appids and query["appid"] not in appids):
        return _text_json({"errcode": 40013, "errmsg": "invalid appid"})
    expected = sandbox.settings.sandbox_app_secret
    if expected is not None and query.get("secret") != expected.get_secret_value():
        return _text_json({"errcode": 40125, "errmsg": "invalid appsecret"})
    code = query.get("js_code", "")
    if not code:
        return _text_json({"errcode": 41008, "errmsg": "missing code"})
    return _text_json(sandbox.login_codes.redeem(code))


async def issue_code(request: web.Request) -> web.Response:
    body = NewCode.model_validate_json((await request.read()) or b"{}")
    code = request.app[SANDBOX].login_codes.issue(body)
    return web.json_response({"code": code, "expires_in": CODE_TTL_S}, status=201)


async def calls(request: web.Request) -> web.Response:
    """How many codes ``jscode2session`` was asked about since the sandbox started (or
    was reset)."""
    return web.json_response({"jscode2session": request.app[SANDBOX].login_codes.redeemed})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/sns/jscode2session", jscode2session)
    app.router.add_post("/sandbox/miniprogram/codes", issue_code)
    app.router.add_get("/sandbox/miniprogram/calls", calls)
