"""``GET /sns/jscode2session``: a code signs in the user the control call named, once."""

from __future__ import annotations

import json
from typing import Any

from paylane_sandbox.miniprogram import CODE_TTL_S, LoginCodes, NewCode


async def _login(sandbox: Any, **query: str) -> tuple[str, dict[str, Any]]:
    params = {"appid": "wxd678efh567hg6787", "secret": "s", "grant_type": "authorization_code"}
    async with sandbox.client.get("/sns/jscode2session", params={**params, **query}) as response:
        assert response.status == 200  # WeChat answers errors with 200 and an errcode
        return response.content_type, json.loads(await response.text())


async def test_a_code_names_its_openid_once(sandbox):
    issued = await sandbox.control(
        "POST", "/sandbox/miniprogram/codes", {"openid": "o-alice", "unionid": "u-alice"}
    )
    assert issued.status == 201 and issued.json["expires_in"] == CODE_TTL_S
    code = issued.json["code"]
    content_type, first = await _login(sandbox, js_code=code)
    assert content_type == "text/plain"  # as WeChat's
    assert (first["openid"], first["unionid"]) == ("o-alice", "u-alice")
    assert first["session_key"] and "errcode" not in first
    _, again = await _login(sandbox, js_code=code)
    assert again == {"errcode": 40163, "errmsg": "code been used"}
    _, unknown = await _login(sandbox, js_code="never-issued")
    assert unknown["errcode"] == 40029
    _, missing = await _login(sandbox, js_code="")
    assert missing["errcode"] == 41008
    # The codes it was asked about, good or not (the missing one is not a code).
    calls = await sandbox.control("GET", "/sandbox/miniprogram/calls")
    assert (calls.status, calls.json) == (200, {"jscode2session": 3})


async def test_a_chosen_code_and_bad_requests(sandbox):
    issued = await sandbox.control(
        "POST", "/sandbox/miniprogram/codes", {"openid": "o-bob", "code": "code-of-bob"}
    )
    assert issued.json["code"] == "code-of-bob"
    _, grant = await _login(sandbox, js_code="code-of-bob", grant_type="client_credential")
    assert grant["errcode"] == 40002
    _, ok = await _login(sandbox, js_code="code-of-bob")
    assert ok["openid"] == "o-bob"
    bad = await sandbox.control("POST", "/sandbox/miniprogram/codes", {"code": "x"})
    assert bad.status == 400 and "openid" in bad.json["message"]


async def test_the_app_secret_and_appid_are_checked_when_configured(start_sandbox):
    sandbox = await start_sandbox(sandbox_app_secret="right", wechatpay_appid="wx-the-app")
    await sandbox.control("POST", "/sandbox/miniprogram/codes", {"openid": "o", "code": "c1"})
    _, wrong_secret = await _login(sandbox, js_code="c1", appid="wx-the-app", secret="wrong")
    assert wrong_secret["errcode"] == 40125
    _, wrong_app = await _login(sandbox, js_code="c1", appid="wx-other", secret="right")
    assert wrong_app["errcode"] == 40013
    _, ok = await _login(sandbox, js_code="c1", appid="wx-the-app", secret="right")
    assert ok["openid"] == "o"


def test_codes_expire_after_five_minutes():
    now = [1_000_000.0]
    codes = LoginCodes(lambda: now[0])
    code = codes.issue(NewCode(openid="o-late"))
    now[0] += CODE_TTL_S + 1
    assert codes.redeem(code)["errcode"] == 40029
