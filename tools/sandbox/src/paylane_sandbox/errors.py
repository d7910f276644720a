"""The two kinds of error the sandbox answers with, each turned into HTTP in one place.

``ApiError`` is what WeChat Pay would answer a merchant (``{"code","message","detail"?}``,
signed like every API response); ``ControlError`` is the control API's own
``{"error","message"}``.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as WeChat Pay sends it (Chinese text unescaped)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_bytes(obj), status=status, content_type="application/json")


class SandboxError(Exception):
    """Base class of the sandbox's errors."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ApiError(SandboxError):
    """A WeChat Pay APIv3 error answer."""

    def __init__(
        self, status: int, code: str, message: str, detail: dict[str, Any] | None = None
    ) -> None:
        super().__init__(status, code, message)
        self.detail = detail

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            body["detail"] = self.detail
        return json_response(body, self.status)


class ControlError(SandboxError):
    """An error of the control API (``/sandbox/...``)."""

    def response(self) -> web.Response:
        return json_response({"error": self.code, "message": self.message}, self.status)


def param_error(field: str, issue: str, *, location: str = "body", value: Any = None) -> ApiError:
    """400 PARAM_ERROR naming the field as a JSON pointer, like WeChat Pay's ``detail``."""
    detail: dict[str, Any] = {"location": location, "field": field, "issue": issue}
    if value is not None:
        detail["value"] = value
    return ApiError(400, "PARAM_ERROR", f"参数错误: {field} {issue}", detail)


def sign_error(message: str) -> ApiError:
    return ApiError(401, "SIGN_ERROR", f"签名错误: {message}")
