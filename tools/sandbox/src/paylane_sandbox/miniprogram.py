"""WeChat's mini-program login, ``GET /sns/jscode2session``, as WeChat answers it.

A code is what ``wx.login()`` gives the mini-program: the control call
``POST /sandbox/miniprogram/codes {openid, unionid?, code?}`` decides which user a code
signs in (``code`` defaults to a fresh random one). As at WeChat, a code works once and for
five minutes; an unknown one is ``40029 invalid code``, a used one ``40163 code been
used``, a wrong ``secret`` ``40125 invalid appsecret``, an appid the sandbox does not serve
``40013 invalid appid``. Answers are JSON served as ``text/plain``, like WeChat's.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: How long a ``wx.login()`` code is valid at WeChat.
CODE_TTL_S = 300


@dataclass
class LoginCode:
    openid: str
    unionid: str | None
    issued_at: float
    used: bool = False


class NewCode(BaseModel):
    model_config = ConfigDict(extra="forbid")

    openid: str = Field(min_length=1, max_length=128)
    unionid: str | None = Field(default=None, max_length=128)
    code: str | None = Field(default=None, min_length=1, max_length=128)


class LoginCodes:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._codes: dict[str, LoginCode] = {}
        #: Codes jscode2session was asked about, good or not (what a caller's rate limit
        #: spares WeChat shows here).
        self.redeemed = 0

    def issue(self, new: NewCode) -> str:
        code = new.code or secrets.token_urlsafe(24)
        self._codes[code] = LoginCode(new.openid, new.unionid, self._clock())
        return code

    def redeem(self, code: str) -> dict[str, Any]:
        """What jscode2session answers for ``code`` (and the code is spent)."""
        self.redeemed += 1
        entry = self._codes.get(code)
        if entry is None or self._clock() - entry.issued_at > CODE_TTL_S:
            return {"errcode": 40029, "errmsg": "invalid code"}
        if entry.used:
            return {"errcode": 40163, "errmsg": "code been used"}
        entry.used = True
        answer: dict[str, Any] = {
            "openid": entry.openid,
            "session_key": secrets.token_urlsafe(16),
        }
        if entry.unionid:
            answer["unionid"] = entry.unionid
        return answer

    def reset(self) -> None:
        self._codes.clear()
        self.redeemed = 0
