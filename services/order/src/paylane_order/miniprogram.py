"""Mini-program login: ``wx.login()``'s code → WeChat's ``jscode2session`` → the openid.

``GET {WECHAT_API_BASE}/sns/jscode2session?appid&secret&js_code&grant_type=authorization_code``
answers ``{openid, session_key, unionid?}`` or ``{errcode, errmsg}`` (40029 invalid code,
40163 code already used, 40226 high-risk user, 45011 too frequent, -1 busy). The
``session_key`` is a secret of the mini-program's: paylane neither keeps nor logs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from .errors import OrderError, TooManyRequests, Unauthorized, UpstreamUnavailable

log = structlog.get_logger(__name__)

TIMEOUT = aiohttp.ClientTimeout(total=5)
#: errcodes that say the code (or the user) cannot be signed in: the client logs in anew.
LOGIN_REFUSED = {40029, 40163, 40226}
RATE_LIMITED = {45011}


class LoginFailed(Unauthorized):
    code = "login_failed"


class LoginUnavailable(OrderError):
    status, code = 503, "login_unavailable"


@dataclass(frozen=True)
class MiniProgramIdentity:
    openid: str
    unionid: str | None


class MiniProgramLogin:
    def __init__(self, api_base: str, appid: str, app_secret: str) -> None:
        self._url = f"{api_base}/sns/jscode2session"
        self._appid = appid
        self._secret = app_secret
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def identify(self, code: str) -> MiniProgramIdentity:
        if not self._secret:
            raise LoginUnavailable("mini-program login is not configured (WECHAT_APP_SECRET)")
        answer = await self._call(code)
        errcode = answer.get("errcode") or 0
        if errcode in LOGIN_REFUSED:
            raise LoginFailed(f"WeChat refused the login code: {errcode} {answer.get('errmsg')}")
        if errcode in RATE_LIMITED:
            raise TooManyRequests(f"WeChat: {errcode} {answer.get('errmsg')}")
        if errcode != 0 or not isinstance(answer.get("openid"), str) or not answer["openid"]:
            log.warning("jscode2session_failed", errcode=errcode, errmsg=answer.get("errmsg"))
            raise UpstreamUnavailable(f"WeChat login failed: {errcode} {answer.get('errmsg')}")
        return MiniProgramIdentity(openid=answer["openid"], unionid=answer.get("unionid"))

    async def _call(self, code: str) -> dict[str, Any]:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=TIMEOUT)
        params = {
            "appid": self._appid,
            "secret": self._secret,
            "js_code": code,
            "grant_type": "authorization_code",
        }
        try:
            async with self._http.get(self._url, params=params) as response:
                # WeChat answers JSON as text/plain.
                text = await response.text()
                if response.status >= 500:
                    raise UpstreamUnavailable(f"WeChat login answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnavailable(f"WeChat login unreachable: {type(exc).__name__}") from None
        try:
            answer = json.loads(text)
        except ValueError:
            raise UpstreamUnavailable("WeChat login answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise UpstreamUnavailable("WeChat login answered something that is not an object")
        return answer
