"""The WeChat Pay sandbox run in process (aiohttp TestServer), with keys made per session,
for tests that need a real counterpart to paylane's WeChat Pay client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from paylane_common.runtime.settings import load_settings
from paylane_common.wechatpay import NotificationVerifier, WechatPayClient
from paylane_sandbox.app_keys import SANDBOX
from paylane_sandbox.main import build_app
from paylane_sandbox.sandbox import Sandbox
from paylane_sandbox.settings import SandboxSettings
from tests.support import hygiene
from tests.support.wechat import FakeWechat


def sandbox_settings(wechat: FakeWechat, **overrides: Any) -> SandboxSettings:
    """The settings of a sandbox playing ``wechat`` in process: what a stack's sandbox gets
    in its environment (``wechat.sandbox_env()``), logging to the console; ``overrides``
    by field name (``sandbox_sign_mode="certificate"``)."""
    hygiene.register(wechat.apiv3_key)
    values: dict[str, Any] = {name.lower(): value for name, value in wechat.sandbox_env().items()}
    return load_settings(SandboxSettings, **{**values, "log_format": "console", **overrides})


@dataclass
class RunningSandbox:
    client: TestClient[web.Request, web.Application]

    @property
    def base_url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    @property
    def state(self) -> Sandbox:
        return self.client.app[SANDBOX]

    async def control(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A control API call (``/sandbox/...``): ``(status, json or None)``."""
        async with self.client.request(method, path, json=body) as response:
            data = await response.json() if response.content_type == "application/json" else None
            return response.status, data

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = await self.control(method, path, body)
        assert status in (200, 201, 204), (method, path, status, data)
        return data

    async def info(self) -> dict[str, Any]:
        data: dict[str, Any] = await self.ok("GET", "/sandbox/info")
        return data

    async def faults(self) -> list[dict[str, Any]]:
        data = await self.ok("GET", "/sandbox/faults")
        faults: list[dict[str, Any]] = data["faults"]
        return faults

    async def add_fault(self, **spec: Any) -> dict[str, Any]:
        data: dict[str, Any] = await self.ok("POST", "/sandbox/faults", spec)
        return data


@asynccontextmanager
async def running_sandbox(settings: SandboxSettings) -> AsyncIterator[RunningSandbox]:
    async with TestClient(TestServer(build_app(settings))) as client:
        yield RunningSandbox(client)


def merchant_client(
    sandbox: RunningSandbox, wechat: FakeWechat, session: aiohttp.ClientSession
) -> WechatPayClient:
    """paylane's WeChat Pay client as ``wechat``'s merchant, calling ``sandbox``."""
    return WechatPayClient(
        base_url=sandbox.base_url,
        mchid=wechat.mchid,
        signer=wechat.merchant_signer(),
        verifier=NotificationVerifier(wechat.verifier_keys()),
        session=session,
    )
